"""The camera's motion between video frames, and the blur it predicts.

A camera that pans or drifts slowly relative to the frame rate moves about as far during one exposure as the
inter-frame motion times ``exposure`` (the exposure time over the frame interval): the blur of frame t is close
to a straight line along the translation from frame t-1 to frame t.

- ``global_motion(prev_grey, grey)``: the translation between two frames by phase correlation on downscaled
  copies, with a confidence;
- ``motion_kernel(dx, dy, exposure, size)``: the centred linear kernel that motion predicts.

Measured by ``bench/video_prior.py`` (simulated drifting camera on vtest, plus still-camera and unrelated-shake
clips): the motion from frame t-1 to t is the velocity half a frame before t's exposure, so extrapolate it
(``d_t + 0.5 (d_t - d_{t-1})``); the exposure is unknown in a product and is calibrated from refined kernels; the
prior line beats the refined kernel on short blur (< ~16 px) only where a cross-check trusts it, and is harmful
alone on shake that does not follow the motion.

Units and layout: images are grey ``(H,W)`` numpy arrays (uint8 [0,255] or float [0,1]) or torch tensors
``(H,W)``, ``(1,H,W)`` or ``(1,1,H,W)`` (float [0,1]); motions are full-resolution pixels, ``(dx, dy)`` with x to
the right and y *down* (image rows), the way the content moved from ``prev_grey`` to ``grey``:
``grey(p) ~ prev_grey(p - (dx, dy))``. Kernels follow ``deblur.data.blur_synth``: ``(k,k)`` float32, ``k``
odd, non-negative, summing to 1, convolution kernels anchored on their centre pixel.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np
import torch

from deblur.data.blur_synth import fit_kernel, linear_kernel

__all__ = ["global_motion", "motion_kernel"]


def _as_grey(image) -> np.ndarray:
    """(H,W) numpy or (H,W)/(1,H,W)/(1,1,H,W) torch -> (H,W) float32 in [0,1]."""
    if isinstance(image, torch.Tensor):
        t = image.detach()
        while t.ndim > 2 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 2:
            raise ValueError(f"global_motion expects one grey image, (H,W), (1,H,W) or (1,1,H,W), got {tuple(image.shape)}")
        return t.float().cpu().numpy()
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"global_motion expects one grey (H,W) image, got shape {a.shape}")
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32, copy=False)


@lru_cache(maxsize=8)
def _plan(h: int, w: int, sigma: float) -> tuple[np.ndarray, np.ndarray, float, int, int]:
    """Per size: the Hanning window (h,w), the Gaussian frequency weight on the padded DFT grid (H,W),
    the correlation peak of a perfect match under that weight, and the padded size."""
    win = cv2.createHanningWindow((w, h), cv2.CV_32F)
    ph, pw = cv2.getOptimalDFTSize(h), cv2.getOptimalDFTSize(w)
    fy = np.fft.fftfreq(ph)[:, None]
    fx = np.fft.fftfreq(pw)[None, :]
    weight = np.exp(-(fx**2 + fy**2) / (2.0 * sigma**2)).astype(np.float32)
    perfect = float(weight.mean())  # inverse DFT of the weight at 0: every phase aligned
    return win, weight, perfect, ph, pw


def _spectrum(a: np.ndarray, win: np.ndarray, ph: int, pw: int) -> np.ndarray:
    a = (a - a.mean()) * win
    a = cv2.copyMakeBorder(a, 0, ph - a.shape[0], 0, pw - a.shape[1], cv2.BORDER_CONSTANT, value=0)
    return cv2.dft(a, flags=cv2.DFT_COMPLEX_OUTPUT)


def _peak_offset(minus: float, centre: float, plus: float) -> float:
    """Sub-pixel offset of a peak from three samples: a parabola through their logs (a Gaussian fit: the
    frequency weight makes the peak Gaussian), a plain parabola where a sample is not positive."""
    if minus > 0 and centre > 0 and plus > 0:
        minus, centre, plus = math.log(minus), math.log(centre), math.log(plus)
    den = minus - 2.0 * centre + plus
    return 0.0 if den >= 0 else max(-0.5, min(0.5, 0.5 * (minus - plus) / den))


def global_motion(prev_grey, grey, scale: float = 0.25, sigma: float = 0.2) -> tuple[float, float, float]:
    """The translation ``(dx, dy)`` (full-resolution px, y down) that moved ``prev_grey``'s content to ``grey``,
    and a confidence in [0, 1].

    Phase correlation of the two frames shrunk by ``scale`` (area averaging), mean-removed, Hanning-windowed and
    zero-padded to a fast DFT size; the normalised cross-power spectrum is weighted by a Gaussian of ``sigma``
    cycles per (downscaled) pixel, so the correlation peak is a smooth Gaussian whose sub-pixel position a
    three-point log-parabola finds (OpenCV's ``phaseCorrelate`` centroid is biased by up to a pixel at half-pixel
    shifts and odd sizes). ``confidence`` is the peak over the peak a perfect translation would give: 0.6-0.85
    for a pure shift of a real frame (the window and what enters at the borders cost the rest), 0.25-0.75 between
    consecutive frames of a camera blurring as it moves (the blur changes between them), 0.4-0.6 between
    frames of a still camera with people walking, 0.04-0.07 for unrelated frames: below ~0.2, the motion means
    nothing. Frames must have the same size; shifts are found up to half the downscaled frame (less in practice:
    the window weights the centre). Sub-pixel error ~0.1 px (0.2 px at most) on real frames; about 0.7 ms for a
    640x360 pair on one core (scale 0.25).
    """
    a, b = _as_grey(prev_grey), _as_grey(grey)
    full_h, full_w = a.shape
    if a.shape != b.shape:
        raise ValueError(f"global_motion: the frames differ in size, {a.shape} and {b.shape}")
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"global_motion: scale must be in (0, 1], got {scale}")
    if scale < 1.0:
        size = (max(8, round(a.shape[1] * scale)), max(8, round(a.shape[0] * scale)))
        a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
        b = cv2.resize(b, size, interpolation=cv2.INTER_AREA)
    sx, sy = a.shape[1] / full_w, a.shape[0] / full_h  # the scale actually applied on each axis
    h, w = a.shape
    win, weight, perfect, ph, pw = _plan(h, w, float(sigma))
    cross = cv2.mulSpectrums(_spectrum(b, win, ph, pw), _spectrum(a, win, ph, pw), 0, conjB=True)
    mag = cv2.magnitude(cross[..., 0], cross[..., 1]) + 1e-12
    cross = cross * (weight / mag)[..., None]
    corr = cv2.idft(cross, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
    peak = float(corr[iy, ix])
    ox = _peak_offset(float(corr[iy, ix - 1]), peak, float(corr[iy, (ix + 1) % pw]))
    oy = _peak_offset(float(corr[iy - 1, ix]), peak, float(corr[(iy + 1) % ph, ix]))
    dx, dy = ix + ox, iy + oy
    dx = dx - pw if dx > pw / 2 else dx
    dy = dy - ph if dy > ph / 2 else dy
    confidence = min(1.0, max(0.0, peak / perfect)) if np.isfinite(peak) else 0.0
    return float(dx / sx), float(dy / sy), float(confidence)


def motion_kernel(dx: float, dy: float, exposure: float, size: int) -> np.ndarray:
    """The blur a camera moving by ``(dx, dy)`` px per frame interval (``global_motion``'s units) draws during an
    exposure of ``exposure`` frame intervals (exposure time x frame rate, in (0, 1]): a centred straight segment
    of length ``hypot(dx, dy) * exposure`` px along the motion (its ``kernel_extent``), anti-aliased, on a
    ``(size, size)`` float32 canvas (odd ``size``; longer segments are cropped to the canvas), summing to 1.
    No motion gives the delta kernel. The direction's sign does not matter (a centred segment is symmetric)."""
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"motion_kernel: size must be an odd int >= 1, got {size}")
    if not (math.isfinite(dx) and math.isfinite(dy)) or not 0.0 <= exposure <= 1.0:
        raise ValueError(f"motion_kernel: the motion must be finite and exposure in [0, 1], got ({dx}, {dy}), {exposure}")
    span = math.hypot(dx, dy) * exposure
    angle = math.degrees(math.atan2(-dy, dx))  # linear_kernel's angle: counter-clockwise on screen, y down
    return fit_kernel(linear_kernel(1.0 + span, angle), size)
