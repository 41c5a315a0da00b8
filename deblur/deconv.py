"""Batched, differentiable non-blind deconvolution (regularised Wiener filter) and a noise estimate, in torch.

Layout and range: images are tensors ``(B,C,H,W)``, float in [0,1], any channel count and order (RGB,
BGR or grey). Kernels are ``(k,k)`` (shared by the batch) or ``(B,k,k)`` float tensors, ``k`` odd,
non-negative and summing to 1. They are *convolution* kernels anchored on their centre pixel
``(k//2, k//2)``: ``blur(p) = sum_d K[c + d] * sharp(p - d)``, as ``deblur.data.blur_synth.apply_kernel`` blurs
and ``deblur.baselines.wiener`` deconvolves (this is its batched torch version, plus edge tapering).

Everything runs on the inputs' device, in float32 (float64 if given float64) with autocast off;
results come back in the input dtype. ``wiener_deconvolve`` is differentiable w.r.t. the image, the
kernel and a tensor ``balance``, so a network that predicts the kernel trains end to end through it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["WienerPlan", "deconvolve_uint8", "estimate_noise", "wiener_deconvolve"]

_MAD_TO_SIGMA = 1.0 / 0.6745  # median |N(0, s^2)| = 0.6745 s


def _fast_len(n: int) -> int:
    """Smallest ``2^a 3^b 5^c >= n`` with a >= 2, b <= 4, c <= 2: a size torch's CPU FFTs handle fast. A real FFT of
    an odd length runs about 3x slower per sample, one with a single factor 2 or many factors 3 or 5 up to 2x
    (1458 = 2 * 3^6 against 1536). On frames of 640x360 to 1920x1080 padded by 41-121 px, forward + inverse at
    these sizes took 0-20 % less than at the smallest even 5-smooth ones and 40-50 % less than at the smallest
    5-smooth ones (which allowed 729 and 2025 for the width) (``python bench/hotpath.py``)."""
    m = max(n, 4)
    while True:
        r, a, b, c = m, 0, 0, 0
        while r % 2 == 0:
            r, a = r // 2, a + 1
        while r % 3 == 0:
            r, b = r // 3, b + 1
        while r % 5 == 0:
            r, c = r // 5, c + 1
        if r == 1 and a >= 2 and b <= 4 and c <= 2:
            return m
        m += 1


def _reflect_index(n: int, before: int, after: int, device: torch.device) -> Tensor:
    """Indices that pad a length-``n`` axis by ``before``/``after`` with ``cv2.BORDER_REFLECT`` (edge pixel
    repeated: ``cba|abcd|dcb``), folding as often as needed, so pads wider than the image work too."""
    i = torch.arange(-before, n + after, device=device).remainder(2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def _reflect_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Pad the last two axes with ``cv2.BORDER_REFLECT``: the image copied once and its mirrored border strips,
    rather than two whole-image gathers (10x the time at 1280x720); pads wider than the image fold as often as
    needed (the gathers, ``_reflect_index``)."""
    h, w = x.shape[-2:]
    if max(top, bottom) > h or max(left, right) > w:
        x = x.index_select(-2, _reflect_index(h, top, bottom, x.device))
        return x.index_select(-1, _reflect_index(w, left, right, x.device))
    out = x.new_empty((*x.shape[:-2], h + top + bottom, w + left + right))
    out[..., top : top + h, left : left + w] = x
    rows = out[..., top : top + h, :]
    if left:
        rows[..., :left] = x[..., :left].flip(-1)
    if right:
        rows[..., left + w :] = x[..., w - right :].flip(-1)
    if top:
        out[..., :top, :] = out[..., top : 2 * top, :].flip(-2)
    if bottom:
        out[..., top + h :, :] = out[..., top + h - bottom : top + h, :].flip(-2)
    return out


@functools.lru_cache(maxsize=8)  # a video's frames share one grid (thread-safe; at most 8 grids kept)
def _laplacian_power(hp: int, wp: int, dtype: torch.dtype, device: str) -> Tensor:
    """|OTF|^2 of the 3x3 Laplacian on an (hp, wp) grid, (hp, wp//2+1). Built outside inference mode whatever the
    caller's, so that a later call with a differentiable ``balance`` can save it for the backward pass."""
    with torch.inference_mode(False), torch.no_grad():
        fy = torch.fft.fftfreq(hp, device=device, dtype=dtype)[:, None]
        fx = torch.fft.rfftfreq(wp, device=device, dtype=dtype)[None, :]
        return (4.0 - 2.0 * torch.cos(2 * math.pi * fy) - 2.0 * torch.cos(2 * math.pi * fx)) ** 2


def _blur_radius(kernel: Tensor) -> Tensor:
    """RMS distance (px) of the kernel's mass from its centroid, (B|1,k,k) -> (B|1,); at least 0.5."""
    mass = kernel.detach().abs()
    mass = mass / mass.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    coord = torch.arange(kernel.shape[-1], device=kernel.device, dtype=kernel.dtype)
    var = 0.0
    for profile in (mass.sum(dim=-1), mass.sum(dim=-2)):  # rows, columns
        mean = (profile * coord).sum(dim=-1, keepdim=True)
        var = var + (profile * (coord - mean) ** 2).sum(dim=-1)
    return var.sqrt().clamp_min(0.5)


def _taper_weight(n: int, size: int, before: int, width: Tensor) -> Tensor:
    """(B|1, n) blend weight along a padded axis: 0 outside the image (``size`` px from ``before`` on),
    rising as a raised cosine to 1 at ``width`` ((B|1,) px) inside it."""
    centre = torch.arange(n, device=width.device, dtype=width.dtype) + (0.5 - before)
    inside = torch.minimum(centre, size - centre)
    return 0.5 - 0.5 * torch.cos(math.pi * (inside / width[:, None]).clamp(0.0, 1.0))


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.no_grad()
def estimate_noise(x: Tensor) -> Tensor:
    """Per-image std of additive white noise, in the units of ``x`` ((B,C,H,W) float in [0,1]) -> (B,) float32
    (float64 for float64 input).

    Donoho's robust estimator: ``median(|HH|) / 0.6745`` over the finest diagonal Haar band (orthonormal,
    so white noise of std s gives coefficients of std s), pooled over all channels. Channels are not
    averaged first: that would divide independent per-channel noise by sqrt(C). Edges and texture put
    few large values into HH, which the median ignores; a clean smooth image gives ~0 (uint8 rounding
    alone reads ~0.001). Not differentiable (runs under no_grad).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"estimate_noise: x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[-2] < 2 or x.shape[-1] < 2 or not x.is_floating_point():
        raise ValueError(
            f"estimate_noise: x must be a float tensor (B,C,H,W) with H, W >= 2, got {x.dtype} "
            f"{tuple(x.shape)}. Add a batch axis with x[None]."
        )
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w].to(_compute_dtype(x))
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) * 0.5  # diagonal detail
    return hh.abs().flatten(1).median(dim=1).values * _MAD_TO_SIGMA


def _check(blur: Tensor, kernel: Tensor, balance: float | Tensor, noise_gain: float, pad: int | None) -> None:
    """ValueError/TypeError naming the argument, what it got and what it needs."""
    for name, t in (("blur", blur), ("kernel", kernel)):
        if not isinstance(t, Tensor):
            raise TypeError(f"wiener_deconvolve: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"wiener_deconvolve: {name} must be a float tensor, got {t.dtype}")
    if blur.ndim != 4:
        raise ValueError(
            f"wiener_deconvolve: blur must be (B,C,H,W), got shape {tuple(blur.shape)}. Add a batch axis with x[None]."
        )
    b, _, h, w = blur.shape
    if kernel.ndim not in (2, 3) or kernel.shape[-1] != kernel.shape[-2] or kernel.shape[-1] % 2 == 0:
        raise ValueError(
            f"wiener_deconvolve: kernel must be square with an odd side, (k,k) or (B,k,k), got shape "
            f"{tuple(kernel.shape)}. Zero-pad an even kernel by one row and column to keep its centre."
        )
    if kernel.ndim == 3 and kernel.shape[0] not in (1, b):
        raise ValueError(
            f"wiener_deconvolve: kernel batch {kernel.shape[0]} does not match blur batch {b} "
            f"(blur {tuple(blur.shape)}, kernel {tuple(kernel.shape)}); pass (k,k), (1,k,k) or ({b},k,k)."
        )
    k = kernel.shape[-1]
    if k > h or k > w:
        raise ValueError(
            f"wiener_deconvolve: kernel side {k} is larger than the image {h}x{w} (blur {tuple(blur.shape)}); "
            "crop the kernel or deconvolve a larger image."
        )
    if kernel.device != blur.device:
        raise ValueError(f"wiener_deconvolve: kernel is on {kernel.device} but blur is on {blur.device}; move one.")
    if isinstance(balance, Tensor):
        if balance.numel() not in (1, b) or balance.ndim > 1:
            raise ValueError(
                f"wiener_deconvolve: balance must be a float, a 0-d tensor or a ({b},) tensor, got shape "
                f"{tuple(balance.shape)}"
            )
    elif not (isinstance(balance, (int, float)) and math.isfinite(balance) and balance > 0):
        raise ValueError(f"wiener_deconvolve: balance must be a finite number > 0, got {balance!r}")
    if not (math.isfinite(noise_gain) and noise_gain >= 0):
        raise ValueError(f"wiener_deconvolve: noise_gain must be a finite number >= 0, got {noise_gain!r}")
    if pad is not None and (not isinstance(pad, int) or pad < 0):
        raise ValueError(f"wiener_deconvolve: pad must be None (= kernel side) or an int >= 0, got {pad!r}")


def wiener_deconvolve(
    blur: Tensor,
    kernel: Tensor,
    balance: float | Tensor = 2e-3,
    noise_gain: float = 0.0,
    pad: int | None = None,
    taper: bool = True,
    residual: bool = False,
    center: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Deconvolve ``blur`` ((B,C,H,W) float [0,1]) by ``kernel`` ((k,k) or (B,k,k), k odd, see the module
    docstring) -> (B,C,H,W) in blur's dtype, **not clamped** (callers clamp).

    Regularised inverse filter ``X = conj(K) Y / (|K|^2 + lam |L|^2)``, L the 3x3 Laplacian, with
    ``lam = balance + noise_gain * estimate_noise(blur)^2`` per image; ``balance`` is a number > 0 or a
    (B,) tensor (differentiable). The image is reflect-padded (``cv2.BORDER_REFLECT``) by ``pad`` px
    (None = k; less lets the borders ring) and on to a fast FFT size, then cropped back.

    ``taper`` (edge tapering, like MATLAB's ``edgetaper``): the padding is replaced by the circular blur
    of the padded image, blended into the image over a band as wide as the blur's RMS radius (the
    kernel's spread about its centroid), so the FFT's periodic image is consistent with the blur model
    at the borders and the wrap-around seam. Without it, kernels with
    spectral zeros (thin linear or camera-shake paths) ring across the whole image and can end up
    below the blurred input's PSNR. ``taper=False`` is the filter of ``deblur.baselines.wiener``.
    ``residual``: also return ``y - k * x`` (see ``WienerPlan.__call__``). ``center``: deconvolve by the kernel moved
    so that its centre of mass lies exactly on its centre pixel (a band-limited, sub-pixel shift of its transfer
    function): the output keeps the blurred image's position, where a kernel off centre by a fraction of a pixel
    moves it by that fraction (see ``WienerPlan.__call__``).
    """
    _check(blur, kernel, balance, noise_gain, pad)
    return WienerPlan(blur, kernel.shape[-1], pad)(kernel, balance, noise_gain, taper, residual, center)


class WienerPlan:
    """``wiener_deconvolve`` of one batch of images by many kernels in turn (an iterative kernel estimate): the
    padded image, its spectrum and the Laplacian's are computed once. ``plan(kernel, balance)`` returns exactly
    ``wiener_deconvolve(blur, kernel, balance, pad=pad)``; every kernel has the side ``k`` given here.
    """

    def __init__(self, blur: Tensor, k: int, pad: int | None = None):
        h, w = blur.shape[-2:]
        self.blur, self.k, self.h, self.w = blur, k, h, w
        self.p = p = k if pad is None else pad
        self.hp, self.wp = hp, wp = _fast_len(h + 2 * p), _fast_len(w + 2 * p)
        self.dtype, device = _compute_dtype(blur), blur.device
        with torch.autocast(device.type, enabled=False):
            self.y = _reflect_pad(blur.to(self.dtype), p, hp - h - p, p, wp - w - p)
            self.y_f = torch.fft.rfft2(self.y)
            self.lap2 = _laplacian_power(hp, wp, self.dtype, str(device))  # |OTF(L)|^2

    def __call__(self, kernel: Tensor, balance: float | Tensor = 2e-3, noise_gain: float = 0.0,
                 taper: bool = True, residual: bool = False, center: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The deconvolution x; with ``residual``, also ``y - k * x`` (the edge-tapered blurred image less the
        deconvolution blurred again, same shape, not clamped): ``Y lam |L|^2 / (|K|^2 + lam |L|^2)``, the
        blurred image's content where the kernel passes little, as a map of where the deconvolution had to
        guess (the refiner's kernel-aware input). ``center``: the kernel's transfer function is shifted by minus its
        centre of mass's offset from the centre pixel (``exp(2 pi i f . c)``), so x keeps the blurred image's
        position to a fraction of a pixel. A blurred image's features sit at the mean of their positions during the
        exposure; a kernel centred to whole pixels (``deblur.kernel_refine.center_kernels``) leaves up to half a
        pixel, which costs PSNR against the sharp image: held-out PSNR over blurred +3.06 against +2.46 dB with
        the deblurrer (``python -m deblur.evaluate --options center=false``;
        docs/results/2026-12-07_subpixel_centre.md)."""
        k, p, h, w, hp, wp, dtype = self.k, self.p, self.h, self.w, self.hp, self.wp, self.dtype
        device = self.y.device
        with torch.autocast(device.type, enabled=False):
            kern = kernel.to(dtype).reshape(-1, k, k)
            k_f = self._otf(kern, center)  # (B|1, hp, wp//2+1)
            y_f = self.y_f
            if taper:
                reblur = torch.fft.irfft2(y_f * k_f[:, None], s=(hp, wp))
                radius = _blur_radius(kern)
                alpha = _taper_weight(hp, h, p, radius)[:, :, None] * _taper_weight(wp, w, p, radius)[:, None, :]
                y_f = torch.fft.rfft2(torch.lerp(reblur, self.y, alpha[:, None]))  # reblur + alpha (y - reblur)
            lam = torch.as_tensor(balance, dtype=dtype, device=device).reshape(-1)  # (1,) or (B,)
            if noise_gain > 0:
                lam = lam + noise_gain * estimate_noise(self.blur).to(dtype) ** 2
            # filter conj(K) / (|K|^2 + lam |L|^2), from real and imaginary parts: a complex tensor divided by a
            # real one first converts it to complex, and |K|^2 as a reduction over the real view was slow too
            # (together 2.2x the time at 1280x720, python bench/hotpath.py)
            power = torch.addcmul(k_f.real.square(), k_f.imag, k_f.imag)
            inv = torch.addcmul(power, lam[:, None, None], self.lap2).reciprocal_()  # (B|1, hp, wf)
            filt = torch.complex(k_f.real * inv, k_f.imag * inv.neg())
            x_f = y_f * filt[:, None]
            out = torch.fft.irfft2(x_f, s=(hp, wp))[..., p : p + h, p : p + w].to(self.blur.dtype)
            if not residual:
                return out
            res = torch.fft.irfft2(y_f - x_f * k_f[:, None], s=(hp, wp))[..., p : p + h, p : p + w]
        return out, res.to(self.blur.dtype)

    def _centre_phases(self, kern: Tensor) -> tuple[Tensor, Tensor]:
        """(B,k,k) kernels -> the transfer of a shift by minus each kernel's centre of mass (cy, cx), px from its
        centre pixel (0 for a kernel summing to 0; clamped to the kernel's radius), as its two separable factors:
        ``exp(2 pi i fy cy)`` (B, hp, 1) and ``exp(2 pi i fx cx)`` (B, 1, wp//2+1)."""
        idx = torch.arange(self.k, device=kern.device, dtype=kern.dtype) - self.k // 2
        mass = kern.sum((-1, -2))
        empty = mass.abs() <= 1e-12
        mass = torch.where(empty, torch.ones_like(mass), mass)
        r = float(self.k // 2)  # (a kernel with negative taps summing to almost 0 would put it far outside)
        cy = torch.where(empty, torch.zeros_like(mass), (kern.sum(-1) @ idx) / mass).clamp(-r, r)
        cx = torch.where(empty, torch.zeros_like(mass), (kern.sum(-2) @ idx) / mass).clamp(-r, r)
        fy = torch.fft.fftfreq(self.hp, device=kern.device, dtype=kern.dtype)
        fx = torch.fft.rfftfreq(self.wp, device=kern.device, dtype=kern.dtype)
        ay, ax = 2 * math.pi * fy[None, :] * cy[:, None], 2 * math.pi * fx[None, :] * cx[:, None]
        return torch.polar(torch.ones_like(ay), ay)[:, :, None], torch.polar(torch.ones_like(ax), ax)[:, None, :]

    def _otf(self, kern: Tensor, center: bool = False) -> Tensor:
        """(B,k,k) kernels -> their transfer functions on the padded grid, (B, hp, wp//2+1) complex: the kernel
        zero-padded to (hp, wp) with its centre moved to (0, 0), transformed. Only its k rows are non-zero, so the
        width transform runs on those rows and the height transform on the whole grid (half a full FFT's work).
        ``center``: shifted by minus the kernel's centre of mass (``__call__``), the width factor applied to the k
        rows, the height factor to the result."""
        k, hp, wp = self.k, self.hp, self.wp
        r = k // 2
        rows = torch.fft.rfft(F.pad(kern, (0, wp - k)).roll(-r, dims=-1), dim=-1)  # (B, k, wp//2+1)
        if center:
            phase_y, phase_x = self._centre_phases(kern)
            rows = rows * phase_x
        # rows r.. go to the grid's top (rows 0..r), rows ..r-1 wrap to its bottom
        grid = rows.new_zeros((len(kern), hp, rows.shape[-1]))
        grid[:, : k - r] = rows[:, r:]
        grid[:, hp - r :] = rows[:, :r]
        out = torch.fft.fft(grid, dim=-2)
        return out * phase_y if center else out


def deconvolve_uint8(image: np.ndarray, kernel: np.ndarray, balance: float = 2.0e-3) -> np.ndarray:
    """Wiener-deconvolve an (H,W,3) uint8 image (any channel order) blurred by a (k,k) kernel -> same shape and
    dtype (``wiener_deconvolve`` with its defaults, on the CPU)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div_(255.0)
    with torch.inference_mode():
        y = wiener_deconvolve(x, torch.from_numpy(np.asarray(kernel, np.float32)), balance=balance)
        return y[0].clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).numpy()
