"""Image quality metrics: PSNR and SSIM for tensors and uint8 images, matching scikit-image.

Two kinds of input, the same functions:

- Tensors ``(B,C,H,W)`` or ``(C,H,W)``, C in {1, 3}, any float range; ``data_range`` is required
  (2.0 for the generator's [-1,1] tensors, 1.0 for [0,1], 255.0 for [0,255]). Computed in torch on
  the tensors' device (no numpy round trip), in float32 (float64 if given float64), with autocast
  off. Returns **per-image** values: a tensor ``(B,)`` for a batch, a 0-d tensor for one image;
  take ``.mean()`` for a batch average.
- numpy arrays ``(H,W,3)``, ``(H,W,1)`` or ``(H,W)`` (e.g. RGB or BGR uint8 frames); ``data_range``
  defaults to 255 for uint8 and is required for float arrays. PSNR is computed in float64, SSIM in
  float32 on values divided by data_range (within ~2e-6 of float64, ~10x faster on CPU); returns a
  Python float.

``psnr`` equals ``skimage.metrics.peak_signal_noise_ratio(sharp, restored, data_range=R)``;
identical images give ``inf``. ``ssim`` with default arguments equals
``skimage.metrics.structural_similarity(sharp, restored, channel_axis=-1, data_range=R)``
(7x7 uniform window, sample covariance, mean over channels); ``gaussian_weights=True`` is the
11-tap sigma-1.5 Gaussian window, and ``use_sample_covariance=False`` with it is Wang et al. 2004.
The SSIM map is averaged over the valid region only (a (win-1)/2 border is dropped, as skimage does).

SSIM's luminance term is not shift-invariant: SSIM of [-1,1] tensors with data_range=2 differs from
SSIM of the same images in [0,1] (or uint8). To report the number skimage gives on the uint8 images,
pass ``(x + 1) / 2`` with ``data_range=1.0``. PSNR is the same either way.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["psnr", "ssim", "ssim_components"]

_CHANNELS = (1, 3)


def _as_nchw(x: Tensor | np.ndarray, name: str) -> tuple[Tensor, bool]:
    """-> (tensor (B,C,H,W), batched?) after checking the layout. numpy HWC -> float64 NCHW."""
    if isinstance(x, np.ndarray):
        if x.ndim == 2:
            x = x[:, :, None]
        if x.ndim != 3 or x.shape[2] not in _CHANNELS:
            raise ValueError(
                f"{name}: expected a numpy image (H,W,3), (H,W,1) or (H,W), got shape {x.shape}. "
                "For a (3,H,W) array use arr.transpose(1, 2, 0); for a tensor pass a torch.Tensor."
            )
        t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float64).permute(2, 0, 1)[None]
        return t, False
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.ndim == 3 and x.shape[0] in _CHANNELS:
        return x[None], False
    if x.ndim == 4 and x.shape[1] in _CHANNELS:
        return x, True
    raise ValueError(
        f"{name}: expected a tensor (B,C,H,W) or (C,H,W) with C in {list(_CHANNELS)}, got shape "
        f"{tuple(x.shape)}. For an (H,W,C) tensor use x.permute(2, 0, 1)."
    )


def _prepare(restored, sharp, data_range: float | None) -> tuple[Tensor, Tensor, float, bool, bool]:
    """Check inputs; -> (restored, sharp as float NCHW, data_range, batched?, numpy input?)."""
    is_np = isinstance(restored, np.ndarray)
    if is_np != isinstance(sharp, np.ndarray):
        raise TypeError(
            f"restored and sharp must both be tensors or both numpy arrays, got "
            f"{type(restored).__name__} and {type(sharp).__name__}"
        )
    if tuple(restored.shape) != tuple(sharp.shape):
        raise ValueError(
            f"restored and sharp must have the same shape, got {tuple(restored.shape)} and {tuple(sharp.shape)}"
        )
    if data_range is None:
        if is_np and restored.dtype == np.uint8 and sharp.dtype == np.uint8:
            data_range = 255.0
        else:
            kind = "float numpy arrays" if is_np else "tensors"
            raise ValueError(
                f"data_range is required for {kind}: pass data_range=2.0 for [-1,1], 1.0 for [0,1], "
                "255.0 for [0,255] values (it defaults to 255 only for uint8 numpy images)"
            )
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    x, batched = _as_nchw(restored, "restored")
    y, _ = _as_nchw(sharp, "sharp")
    dtype = torch.float64 if x.dtype == torch.float64 or y.dtype == torch.float64 else torch.float32
    return x.to(dtype), y.to(dtype), float(data_range), batched, is_np


def _finish(values: Tensor, batched: bool, is_np: bool):
    if is_np:
        return float(values[0])
    return values if batched else values[0]


def psnr(restored: Tensor | np.ndarray, sharp: Tensor | np.ndarray, data_range: float | None = None):
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``; ``inf`` when identical.

    restored, sharp: tensors (B,C,H,W)/(C,H,W) or numpy (H,W,C)/(H,W), same shape and range.
    data_range: max - min of the value range (2.0 for [-1,1]); optional only for uint8 numpy (255).
    Returns per-image PSNR: tensor (B,) | 0-d tensor | Python float for numpy input.
    """
    x, y, rng, batched, is_np = _prepare(restored, sharp, data_range)
    with torch.autocast(x.device.type, enabled=False):
        mse = (x - y).pow(2).mean(dim=(1, 2, 3))
        values = 10.0 * torch.log10(rng**2 / mse)  # mse == 0 -> +inf
    return _finish(values, batched, is_np)


def _window(gaussian_weights: bool, win_size: int | None, sigma: float, dtype, device) -> tuple[Tensor, int]:
    """1-D window (sums to 1) and its length, as skimage builds it."""
    if gaussian_weights:
        r = int(3.5 * sigma + 0.5)  # scipy.ndimage.gaussian_filter radius with skimage's truncate=3.5
        if win_size is not None and win_size != 2 * r + 1:
            raise ValueError(
                f"win_size={win_size} does not fit the Gaussian window of sigma={sigma} "
                f"({2 * r + 1} taps); leave win_size=None or change sigma"
            )
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        w = torch.exp(-0.5 * (t / sigma) ** 2)
        return (w / w.sum()).to(dtype=dtype, device=device), 2 * r + 1
    win_size = 7 if win_size is None else win_size
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd number, got {win_size}")
    return torch.full((win_size,), 1.0 / win_size, dtype=dtype, device=device), win_size


def ssim_components(
    x: Tensor,
    y: Tensor,
    data_range: float,
    gaussian_weights: bool = False,
    win_size: int | None = None,
    sigma: float = 1.5,
    use_sample_covariance: bool = True,
    k1: float = 0.01,
    k2: float = 0.03,
) -> tuple[Tensor, Tensor]:
    """Mean SSIM and mean contrast-structure term per image and channel (for SSIM and MS-SSIM).

    x, y: float tensors (B,C,H,W) of the same shape, dtype and device (already checked); H and W
    must be >= the window. Runs in the inputs' dtype; the caller turns autocast off.
    Returns (ssim, cs), each (B,C): the valid-region means of the SSIM map and of its
    ``(2 cov + C2) / (var_x + var_y + C2)`` factor.
    """
    c = x.shape[1]
    w, win = _window(gaussian_weights, win_size, sigma, x.dtype, x.device)
    if min(x.shape[-2:]) < win:
        raise ValueError(
            f"SSIM window ({win} px) exceeds the image size {tuple(x.shape[-2:])}: use larger images "
            "or a smaller win_size (odd)"
        )
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B,5C,H,W)
    kh = w.view(1, 1, win, 1).expand(5 * c, 1, win, 1)
    kw = w.view(1, 1, 1, win).expand(5 * c, 1, 1, win)
    # separable 'valid' filtering == skimage's filter then crop of the (win-1)/2 border
    filt = F.conv2d(F.conv2d(stack, kh, groups=5 * c), kw, groups=5 * c)
    ux, uy, uxx, uyy, uxy = filt.split(c, dim=1)
    cov_norm = win * win / (win * win - 1) if use_sample_covariance else 1.0
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    cs_map = (2 * vxy + c2) / (vx + vy + c2)
    ssim_map = (2 * ux * uy + c1) / (ux * ux + uy * uy + c1) * cs_map
    return ssim_map.mean(dim=(2, 3)), cs_map.mean(dim=(2, 3))


def ssim(
    restored: Tensor | np.ndarray,
    sharp: Tensor | np.ndarray,
    data_range: float | None = None,
    gaussian_weights: bool = False,
    win_size: int | None = None,
    sigma: float = 1.5,
    use_sample_covariance: bool = True,
):
    """Structural similarity, mean over the valid region and over channels (skimage's channel_axis).

    restored, sharp: tensors (B,C,H,W)/(C,H,W) or numpy (H,W,C)/(H,W), same shape and range.
    data_range: max - min of the value range (2.0 for [-1,1]); optional only for uint8 numpy (255).
    Defaults match ``skimage.metrics.structural_similarity(..., channel_axis=-1, data_range=R)``:
    7x7 uniform window, sample covariance. ``gaussian_weights=True``: 11-tap Gaussian, sigma 1.5.
    Returns per-image SSIM: tensor (B,) | 0-d tensor | Python float for numpy input.
    """
    if isinstance(restored, np.ndarray) and not gaussian_weights and win_size in (None, 7) and use_sample_covariance:
        _prepare(restored, sharp, data_range)  # the same shape/layout checks
        rng = float(data_range) if data_range is not None else 255.0
        return _ssim_numpy_box(restored, sharp, rng)
    x, y, rng, batched, is_np = _prepare(restored, sharp, data_range)
    if is_np:  # float32 depthwise conv is ~10x faster than float64 on CPU; error ~1e-6 on [0,1]
        x, y, rng = (x / rng).float(), (y / rng).float(), 1.0
    with torch.autocast(x.device.type, enabled=False):
        s, _ = ssim_components(x, y, rng, gaussian_weights, win_size, sigma, use_sample_covariance)
        values = s.mean(dim=1)
    return _finish(values, batched, is_np)


def _ssim_numpy_box(image: np.ndarray, sharp: np.ndarray, data_range: float, win: int = 7) -> float:
    """skimage's default SSIM (7x7 uniform window, sample covariance, border dropped, mean over channels)
    with OpenCV box filters: several times faster than skimage on full frames. Values are centred on
    data_range/2 so float32 variances do not cancel (error ~1e-6)."""
    import cv2

    centre = data_range / 2
    xc = image.astype(np.float32) - centre
    yc = sharp.astype(np.float32) - centre
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    n = win * win
    cov_norm = n / (n - 1)

    def box(a):
        return cv2.blur(a, (win, win), borderType=cv2.BORDER_REFLECT)

    mx, my = box(xc), box(yc)
    vx = cov_norm * (box(xc * xc) - mx * mx)
    vy = cov_norm * (box(yc * yc) - my * my)
    vxy = cov_norm * (box(xc * yc) - mx * my)
    ux, uy = mx + centre, my + centre
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean(dtype=np.float64))
