"""Non-learned restoration baselines: unsharp masking and Wiener deconvolution with the true kernel.

Both take (H,W,3) uint8 images in either channel order and return the same shape and dtype.
"""

from __future__ import annotations

import cv2
import numpy as np
import scipy.fft


def unsharp(image: np.ndarray, amount: float = 1.5, sigma: float = 2.0) -> np.ndarray:
    """Unsharp masking of an (H,W,3) uint8 image: x + amount * (x - GaussianBlur(x, sigma)), clipped."""
    x = image.astype(np.float32)
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


def wiener(blurred: np.ndarray, kernel: np.ndarray, balance: float = 0.002) -> np.ndarray:
    """Wiener deconvolution of an (H,W,3) uint8 image blurred by ``kernel`` (true convolution, centred on
    the kernel's middle pixel): X = conj(K) Y / (|K|^2 + balance |L|^2), L the Laplacian. The image is
    reflect-padded by at least the kernel size (to a fast FFT size) so the circular FFT does not ring at
    the borders. float32 FFTs (scipy.fft)."""
    h, w = blurred.shape[:2]
    p = kernel.shape[0]
    shape = (scipy.fft.next_fast_len(h + 2 * p, real=True), scipy.fft.next_fast_len(w + 2 * p, real=True))
    top, left = p, p
    y = cv2.copyMakeBorder(blurred, top, shape[0] - h - top, left, shape[1] - w - left, cv2.BORDER_REFLECT)
    y = y.astype(np.float32) * np.float32(1.0 / 255.0)
    k_f = _otf(kernel.astype(np.float32), shape)
    l_f = _otf(_LAPLACIAN, shape)
    filt = (np.conj(k_f) / (np.abs(k_f) ** 2 + np.float32(balance) * np.abs(l_f) ** 2)).astype(np.complex64)
    out = scipy.fft.irfft2(scipy.fft.rfft2(y, axes=(0, 1)) * filt[..., None], s=shape, axes=(0, 1))
    out = out[top : top + h, left : left + w]
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
