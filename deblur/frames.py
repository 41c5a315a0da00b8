"""Checks of the frames the deblurrers take (one home for the message users see)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["check_bgr_frames"]


def check_bgr_frames(frames_bgr: Sequence[np.ndarray]) -> None:
    """ValueError naming the first frame that is not an (H,W,3) BGR uint8 np.ndarray, and the fix."""
    for i, f in enumerate(frames_bgr):
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            what = f"{type(f).__name__} {getattr(f, 'shape', '')} {getattr(f, 'dtype', '')}".strip()
            raise ValueError(f"frame {i}: expected an (H,W,3) BGR uint8 np.ndarray, got {what}; "
                             "convert grey/BGRA frames with cv2.cvtColor first")
