"""The frames the deblurrers take: their check (one home for the message users see), the padding of frames
smaller than a model needs (one home for how they are padded, counted and logged), and the antialiased shrink of a
uint8 frame on the CPU."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["SmallFrames", "check_bgr_frames", "pad_to", "shrink_bgr"]


def check_bgr_frames(frames_bgr: Sequence[np.ndarray]) -> None:
    """ValueError naming the first frame that is not an (H,W,3) BGR uint8 np.ndarray, and the fix."""
    for i, f in enumerate(frames_bgr):
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            what = f"{type(f).__name__} {getattr(f, 'shape', '')} {getattr(f, 'dtype', '')}".strip()
            raise ValueError(f"frame {i}: expected an (H,W,3) BGR uint8 np.ndarray, got {what}; "
                             "convert grey/BGRA frames with cv2.cvtColor first")


def shrink_bgr(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H,W,C) uint8 -> (h,w,C) uint8 of ``size`` (h, w), resampled as ``F.interpolate(..., mode="bilinear",
    antialias=True, align_corners=False)`` resamples a float frame, but on the uint8 pixels as they lie (torch's
    vectorised uint8 path): 1280x720 -> 416x234 in 1 ms on one thread, where converting the frame to float and
    shrinking it took ~6 ms. The copy is rounded to uint8: deconvolving its luma lost 0.1 dB against the float copy at
    1280x720 (``python bench/temporal.py``), which is why the kernel deblurrer deconvolves the full frame's float luma,
    shrunk, and takes this copy only when it deconvolves the luma. Area averaging in its place (``cv2.INTER_AREA``)
    lost 0.18 dB, ``cv2.pyrDown`` 0.65 dB (it moves pixel centres by half an input pixel)."""
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]  # a channels_last view, no copy
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0).numpy()


def pad_to(x: Tensor, h: int, w: int) -> tuple[Tensor, int, int]:
    """(B,C,H,W) -> (padded to at least h x w, top, left): x sits at [top:top+H, left:left+W] of the result.

    Centred mirror padding (reflect), repeated while the frame is smaller than the padding it needs (a mirror
    adds at most side - 1 px at a time); a 1 px side, which has nothing to mirror, is replicated."""
    top = left = 0
    while True:
        ih, iw = x.shape[-2:]
        need_h, need_w = max(0, h - ih), max(0, w - iw)
        if not (need_h or need_w):
            return x, top, left
        ph, pw, mode = min(need_h, ih - 1), min(need_w, iw - 1), "reflect"
        if not (ph or pw):
            ph, pw, mode = need_h, need_w, "replicate"
        t, lft = ph // 2, pw // 2
        x = F.pad(x, (lft, pw - lft, t, ph - t), mode=mode)
        top, left = top + t, left + lft


class SmallFrames:
    """Frames smaller than a model needs (``side`` x ``side``, for the reason ``need``) are valid input: ``pad``
    mirror-pads them (``pad_to``) and gives the crop back to their size. They are counted (``count``) and the
    first is logged once."""

    def __init__(self, side: int, need: str) -> None:
        self.side, self.need = side, need
        self.count = 0
        self._told = False

    def pad(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """(B,C,H,W) -> (x padded to at least side x side, crop: padded-size result -> (B,C',H,W))."""
        h, w = x.shape[-2:]
        if h >= self.side and w >= self.side:
            return x, lambda y: y
        padded, top, left = pad_to(x, self.side, self.side)
        self.count += x.shape[0]
        if not self._told:
            self._told = True
            logger.info("Frames of %dx%d are smaller than %s (%dx%d): deblurred mirror-padded to %dx%d and cropped "
                        "back (logged once; counted as small_frames)", w, h, self.need, self.side, self.side,
                        padded.shape[-1], padded.shape[-2])
        return padded, lambda y: y[..., top : top + h, left : left + w]
