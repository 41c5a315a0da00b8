"""The conditions an image is detected in: blur synthesis, the restoration methods and image metrics.

* ``sharp``: the reference; ``blurred``: the sharp image blurred with a seeded kernel (or real blur);
* ``deblurred``: our generator (deblur.predict.Deblurrer), at full resolution unless ``max_side``;
* ``unsharp``: unsharp masking, ``x + amount * (x - gaussian(x, sigma))``;
* ``wiener``: Wiener deconvolution with the TRUE kernel (an oracle no camera has), per channel in the
  frequency domain with a Laplacian regulariser (skimage.restoration.wiener's form), reflect-padded.

Every method gets the very same blurred uint8 image.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable

import cv2
import numpy as np
import scipy.fft

from deblur.blur_synth import apply_kernel, imagenet_c_kernel, shake_kernel, trajectory_kernel
from evaluation.config import EvalBlurConfig

logger = logging.getLogger(__name__)

# trajectory kernels: canvas side per severity (the same ladder as deblur.blur_synth.shake_kernel)
TRAJECTORY_SIZES = {1: 7, 2: 11, 3: 15, 4: 21, 5: 29}


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from a stable hash of the parts (unlike hash(), the same in every process)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def blur_kernel(cfg: EvalBlurConfig, image_name: str, severity: int) -> np.ndarray:
    """(k,k) float32 kernel summing to 1, fixed by (cfg.seed, kind, image name, severity)."""
    seed = stable_seed(cfg.seed, cfg.kind, image_name, severity)
    if cfg.kind == "imagenet_c":
        return imagenet_c_kernel(severity, rng=np.random.default_rng(seed), centered=cfg.centered)
    if cfg.kind == "shake":
        return shake_kernel(severity, seed)
    if cfg.kind == "trajectory":
        return trajectory_kernel(size=TRAJECTORY_SIZES[severity], rng=np.random.default_rng(seed), centered=True)
    raise ValueError(f"Unknown blur kind {cfg.kind!r}. Available: ['imagenet_c', 'shake', 'trajectory']")


def blur_image(sharp_bgr: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 BGR -> blurred (H,W,3) uint8 BGR (true convolution, reflect border)."""
    return apply_kernel(sharp_bgr, kernel)


def unsharp(image_bgr: np.ndarray, amount: float, sigma: float) -> np.ndarray:
    """Unsharp masking of an (H,W,3) uint8 image: x + amount * (x - GaussianBlur(x, sigma)), clipped."""
    x = image_bgr.astype(np.float32)
    soft = cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return np.clip(x + amount * (x - soft) + 0.5, 0, 255).astype(np.uint8)


_LAPLACIAN = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32)


def _otf(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Optical transfer function: the kernel zero-padded to ``shape`` with its centre moved to (0,0)."""
    k = kernel.shape[0]
    pad = np.zeros(shape, np.float32)
    pad[:k, :k] = kernel
    pad = np.roll(pad, (-(k // 2), -(k // 2)), axis=(0, 1))
    return scipy.fft.rfft2(pad)


def wiener(blurred_bgr: np.ndarray, kernel: np.ndarray, balance: float) -> np.ndarray:
    """Wiener deconvolution of an (H,W,3) uint8 image blurred by ``kernel`` (true convolution, centred on
    the kernel's middle pixel): X = conj(K) Y / (|K|^2 + balance |L|^2), L the Laplacian. The image is
    reflect-padded by at least the kernel size (to a fast FFT size) so the circular FFT does not ring at
    the borders. float32 FFTs (scipy.fft)."""
    h, w = blurred_bgr.shape[:2]
    p = kernel.shape[0]
    shape = (scipy.fft.next_fast_len(h + 2 * p, real=True), scipy.fft.next_fast_len(w + 2 * p, real=True))
    top, left = p, p
    y = cv2.copyMakeBorder(blurred_bgr, top, shape[0] - h - top, left, shape[1] - w - left, cv2.BORDER_REFLECT)
    y = y.astype(np.float32) * np.float32(1.0 / 255.0)
    k_f = _otf(kernel.astype(np.float32), shape)
    l_f = _otf(_LAPLACIAN, shape)
    filt = (np.conj(k_f) / (np.abs(k_f) ** 2 + np.float32(balance) * np.abs(l_f) ** 2)).astype(np.complex64)
    out = scipy.fft.irfft2(scipy.fft.rfft2(y, axes=(0, 1)) * filt[..., None], s=shape, axes=(0, 1))
    out = out[top : top + h, left : left + w]
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


class DeblurMethod:
    """Our generator as a condition: (H,W,3) BGR uint8 -> deblurred, at full resolution unless max_side."""

    def __init__(self, deblurrer: Callable[[list[np.ndarray]], list[np.ndarray]], max_side: int = 0) -> None:
        self.deblurrer = deblurrer
        self.max_side = max_side

    def __call__(self, blurred_bgr: np.ndarray) -> np.ndarray:
        h, w = blurred_bgr.shape[:2]
        if self.max_side and max(h, w) > self.max_side:
            s = self.max_side / max(h, w)
            small = cv2.resize(blurred_bgr, (max(32, round(w * s)), max(32, round(h * s))), interpolation=cv2.INTER_AREA)
            return cv2.resize(self.deblurrer([small])[0], (w, h), interpolation=cv2.INTER_LINEAR)
        return self.deblurrer([blurred_bgr])[0]


# ---- image quality against sharp ------------------------------------------------------------------
def psnr(image: np.ndarray, sharp: np.ndarray) -> float:
    """PSNR in dB of uint8 images (inf when identical), as skimage.metrics.peak_signal_noise_ratio."""
    mse = np.mean((image.astype(np.float64) - sharp.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def ssim(image: np.ndarray, sharp: np.ndarray, win: int = 7) -> float:
    """SSIM of (H,W,3) uint8 images, equal to skimage.metrics.structural_similarity(sharp, image,
    channel_axis=-1, data_range=255) (7x7 uniform window, sample covariance, border dropped), computed with
    cv2 box filters (several times faster than skimage and than deblur.metrics.ssim's numpy path here)."""
    if image.shape != sharp.shape:
        raise ValueError(f"ssim: shapes differ: {image.shape} vs {sharp.shape}")
    # float32 box filters; variances from 128-centred values keep float32 cancellation harmless (~1e-6)
    xc = image.astype(np.float32) - 128.0
    yc = sharp.astype(np.float32) - 128.0
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    n = win * win
    cov_norm = n / (n - 1)

    def box(a):
        return cv2.blur(a, (win, win), borderType=cv2.BORDER_REFLECT)

    mx, my = box(xc), box(yc)
    vx = cov_norm * (box(xc * xc) - mx * mx)
    vy = cov_norm * (box(yc * yc) - my * my)
    vxy = cov_norm * (box(xc * yc) - mx * my)
    ux, uy = mx + 128.0, my + 128.0
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean(dtype=np.float64))
