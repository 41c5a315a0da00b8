"""Draw detections with OpenCV's built-in Hershey font (no font file, no download)."""

from __future__ import annotations

import cv2
import numpy as np

from detect.base import Detection

# Ultralytics' 20-colour palette (hex RGB), stored as BGR for OpenCV.
_PALETTE_HEX = (
    "FF3838 FF9D97 FF701F FFB21D CFD231 48F90A 92CC17 3DDB86 1A9334 00D4BB "
    "2C99A8 00C2FF 344593 6473FF 0018EC 8438FF 520085 CB38FF FF95C8 FF37C7"
).split()
PALETTE_BGR = [(int(h[4:6], 16), int(h[2:4], 16), int(h[0:2], 16)) for h in _PALETTE_HEX]


def class_color(cls: int) -> tuple[int, int, int]:
    """BGR colour of a class index."""
    return PALETTE_BGR[cls % len(PALETTE_BGR)]


def draw_detections(frame_bgr: np.ndarray, dets: list[Detection], copy: bool = True) -> np.ndarray:
    """Boxes and "name 0.87" labels on frame_bgr: (H,W,3) uint8 BGR. copy=False draws in place.

    Returns the annotated (H,W,3) uint8 BGR frame.
    """
    if not isinstance(frame_bgr, np.ndarray) or frame_bgr.dtype != np.uint8 or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        got = f"shape {frame_bgr.shape}, dtype {frame_bgr.dtype}" if isinstance(frame_bgr, np.ndarray) else type(frame_bgr).__name__
        raise ValueError(f"draw_detections needs an (H,W,3) uint8 BGR frame, got {got}.")
    img = frame_bgr.copy() if copy else frame_bgr
    h, w = img.shape[:2]
    thickness = max(1, round((h + w) / 2 * 0.003))
    font_scale = max(0.4, thickness / 3)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for d in dets:
        x1, y1, x2, y2 = (int(round(v)) for v in d.xyxy)
        color = class_color(d.cls)
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        label = f"{d.name} {d.conf:.2f}"
        (tw, th), base = cv2.getTextSize(label, font, font_scale, max(1, thickness - 1))
        above = y1 - th - base - 2 >= 0
        ty1 = y1 - th - base - 2 if above else y1
        ty2 = y1 if above else y1 + th + base + 2
        cv2.rectangle(img, (x1, ty1), (x1 + tw + 2, ty2), color, -1, cv2.LINE_AA)
        text_color = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)
        cv2.putText(img, label, (x1 + 1, ty2 - base - 1), font, font_scale, text_color, max(1, thickness - 1), cv2.LINE_AA)
    return img
