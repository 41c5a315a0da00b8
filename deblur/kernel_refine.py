"""Closed-form blur-kernel refinement (Cho & Lee 2009, Xu & Jia 2010), batched in torch.

The estimator's network paints a kernel from a learned family of shapes, and curved camera shake comes out
as a blob. This refinement is not bound to any family: starting from the network's kernel, it alternates

1. a latent sharp image: Wiener deconvolution of the blurred tile with the current kernel;
2. its edges restored: a shock filter (Osher & Rudin) on the slightly smoothed latent;
3. the strongest ``keep`` fraction of the latent's gradients, taken evenly from ``orient_bins`` orientations
   (the rest set to zero: flat regions and noise say nothing about the kernel; ``rmap`` optionally ranks them by
   how much the blurred frame shows a lone edge there, Xu & Jia's r-map);
4. the kernel that best maps those gradients to the blurred tile's gradients, in closed form with FFTs:
   ``K = argmin sum_d || d(x) * K - d(y) ||^2 + beta ||K||^2``;
5. kept non-negative, small weights dropped, only what is connected to the peak kept, renormalised and
   recentred on its centre of mass,

coarse to fine over a pyramid on the frame's most textured ``tile``, so that large kernels are found at the coarse
level where they are small; each finer level stays within the coarser one's support, dilated by ``grow``.

The iteration converges to different kernels from different starts, and from the network's kernel alone it lands on
a wrong one on about one frame in five. So it runs from several ``starts`` (the network's kernel scaled about its
centre, and a round Gaussian of about its size), and keeps the kernel whose Wiener deconvolution of the frame overshoots
the frame's range least (``overshoot``; another start's kernel replaces the first's only where clearly less,
``pick_ratio``): a wrong kernel rings, and ringing leaves the range of the image.
Measured by ``python -m deblur.evaluate --options refine.iters=0`` (shape error, PSNR) and paired detection runs
(``docs/results/2026-12-06_kernel_refinement.md``).

Layout and range: ``blur`` is ``(B,1,H,W)`` grey float in [0,1] (a tile or a whole frame); kernels are
``(B,k,k)`` convolution kernels anchored on their centre pixel (``deblur.deconv``'s convention), non-negative
and summing to 1. A refinement that fails (a non-finite or empty kernel) returns the starting kernel for that
sample, and ``refine_kernels`` says which samples did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from configs.loader import check_range
from deblur.archs.kernel_arch import kernel_moments
from deblur.deconv import WienerPlan, wiener_deconvolve

__all__ = ["VIDEO_REFINE", "RefineConfig", "center_kernels", "odd_side", "overshoot", "refine_kernels", "refined_size",
           "refined_tile", "rmap",
           "resize_kernels", "scaled_start", "shape_error"]


@dataclass(frozen=True)
class RefineConfig:
    """Options of ``refine_kernels`` (set as ``deblur.kernel.refine.*``)."""

    iters: int = 10  # iterations per coarse pyramid level (0 = no refinement: the network's kernel as it is)
    fine_iters: int = -1  # iterations at full resolution, the costly level (-1 = iters)
    # side of the refined kernel (odd). 0 = auto: the estimator's side on frames up to ~900 px long, and that
    # side's radius times round(long side / 640) beyond (81 px at 1280x720, 121 at 1920x1080 with the 41-tap
    # estimator): camera shake grows with the resolution, and the pyramid's coarse levels find it
    size: int = 0
    levels: int = 3  # pyramid levels, each half the previous resolution
    # side of the most textured tile refinement runs on (0 = the whole frame); with an auto ``size`` larger than the
    # estimator's, it grows by sqrt(size / k), to a multiple of 32 (1088 px for 81-px kernels at 1280x720). 768: the
    # whole frame up to 768 px. More of the frame gives the solve edges of every direction: against a 256-px tile,
    # +1.86 dB [+1.50, +2.21] on 30 training photos at 2-2.5x the cost, and mAP@0.5:0.95 +0.009 / +0.037 / -0.013 at
    # shake 2 / 3 / 4 and +0.003 / +0.067 / +0.014 on trajectories (all 167 evaluation images, paired; see
    # docs/results/2026-12-07_refine_tile.md). The pipeline's video mode keeps 256 (PIPELINE_REFINE)
    tile: int = 768
    keep: float = 0.04  # fraction of the latent's gradients kept (the strongest)
    beta: float = 3.0e-2  # Tikhonov weight on the kernel, relative to the gradients' mean spectral energy
    balance: float = 2.0e-3  # Wiener balance of the latent image
    threshold: float = 0.1  # kernel weights below this fraction of the largest are dropped
    shock_steps: int = 1  # shock-filter steps per iteration
    # the shock filter's step size. From the true kernel, 10 full-resolution iterations drift less with 0.25 (shape
    # error 0.075 against 0.108), and 20 training photos gained +1.06 dB from the network's kernel; but 10 held-out
    # photos tied (-0.17 dB [-0.42, +0.09]) and all 167 evaluation images lost 0.29-0.53 dB at shake 2-4, detection
    # mixed (docs/results/2026-12-07_refinement_bias.md). 0 = no shock step (as shock_steps=0)
    shock_dt: float = 0.5
    orient_bins: int = 4  # the strongest gradients are taken evenly from this many orientation bins (1 = any)
    # video: a full (coarse-to-fine) refinement every `every` frames; the frames between start from the last
    # refined kernel and run `warm_iters` iterations at full resolution only (camera shake changes over tens of
    # milliseconds, not one frame). 1 = a full refinement on every frame (images, the evaluations)
    every: int = 1
    warm_iters: int = 1
    warm_tile: int = 0  # the tile side of the warm-started iterations, at most the full refinement's (0 = that one)
    # video: run the full refinements in a background thread (on the frame that was due), so no frame waits for one:
    # frames go on warm-starting from the last finished one, and until the first finishes, from the network's kernel.
    # Which frame a result reaches depends on timing (the pipeline's live default; evaluations keep it off)
    background: bool = False
    # video, background mode: a frame whose predecessor's restore() took longer than this (ms) reuses the previous
    # frame's kernel without warm iterations, so a live feed keeps up on a loaded machine (0 = never). The pipeline
    # sets it from a live source's frame rate
    budget_ms: float = 0.0
    grow: int = 2  # at finer levels the kernel stays within the coarser level's support dilated by this (px)
    # the refinement runs from each of these starts, and the kernel whose deconvolution overshoots least is kept: the
    # starting kernel scaled by each factor about its centre; 0 = an isotropic Gaussian of about its size (scaled_start;
    # its direction left to the refinement). Every start costs one more refinement (batched: 4 starts 2.7-2.9x one).
    # On all 167 evaluation images, paired against one start: mAP@0.5 +0.031 / +0.087 / +0.003 at shake 2 / 3 / 4,
    # ties at ImageNet-C 2-4 (docs/results/2026-12-07_refine_starts.md)
    starts: tuple[float, ...] = (1.0, 0.5, 2.0, 0.0)
    pick_balance: float = 1.0e-2  # the Wiener balance of the deconvolutions that tell the starts' kernels apart
    # another start's kernel replaces the first start's only where it overshoots less than this fraction of it (1 = any
    # less): the first (the network's kernel as it is) is right on most frames, and a small difference is noise. With
    # 1, shake gained more (mAP@0.5 +0.113 at shake 3) but ImageNet-C 3 / 4 lost 0.16 / 0.19 dB, paired
    pick_ratio: float = 0.7
    # Xu & Jia's (2010) r-map: the latent's gradients are ranked by their strength times r^rmap_power, where r =
    # |sum of the blurred frame's gradient vectors| / (sum of their magnitudes + 0.5) over an rmap x rmap window: near 1
    # at a lone edge, near 0 in fine texture, whose structures are smaller than the blur (an odd side; 0 = off). Not
    # the default: rmap=3 gained +0.86 dB on 20 training photos (+1.41 dB at 720 px without noise) but tied on the 10
    # held-out ones, lost 0.25 dB on python -m deblur.evaluate and lost mAP@0.5:0.95 and PSNR at shake 4 on the 167
    # evaluation images (docs/results/2026-12-07_refinement_bias.md)
    rmap: int = 0
    rmap_power: float = 2.0

    def __post_init__(self):
        check_range("refine.iters", self.iters, 0, 50)
        check_range("refine.fine_iters", self.fine_iters, -1, 50)
        check_range("refine.levels", self.levels, 1, 5)
        check_range("refine.keep", self.keep, 1.0e-3, 1.0)
        check_range("refine.beta", self.beta, 0.0)
        check_range("refine.balance", self.balance, 1.0e-6)
        check_range("refine.threshold", self.threshold, 0.0, 0.5)
        check_range("refine.shock_steps", self.shock_steps, 0, 10)
        check_range("refine.shock_dt", self.shock_dt, 0.0, 1.0)
        check_range("refine.grow", self.grow, 0, 64)
        check_range("refine.every", self.every, 1, 1000)
        check_range("refine.warm_iters", self.warm_iters, 0, 50)
        check_range("refine.orient_bins", self.orient_bins, 1, 16)
        check_range("refine.budget_ms", self.budget_ms, 0.0)
        check_range("refine.pick_balance", self.pick_balance, 1.0e-6)
        check_range("refine.pick_ratio", self.pick_ratio, 0.01, 1.0)
        check_range("refine.rmap_power", self.rmap_power, 0.0, 8.0)
        if self.rmap and (self.rmap < 3 or self.rmap % 2 == 0 or self.rmap > 31):
            raise ValueError(f"'refine.rmap' must be 0 (off) or an odd window side from 3 to 31, got {self.rmap}")
        if not self.starts or any(not 0.0 <= f <= 4.0 for f in self.starts):
            raise ValueError(f"'refine.starts' must list scale factors of the starting kernel in (0, 4], or 0 for an "
                             f"isotropic Gaussian, e.g. [1, 0.5, 2, 0]; got {list(self.starts)}")
        if self.size and (self.size < 3 or self.size % 2 == 0):
            raise ValueError(f"'refine.size' must be 0 (auto: from the estimator's side and the frame size) or an odd "
                             f"number >= 3, got {self.size}")
        if self.tile and self.tile < 32:
            raise ValueError(f"'refine.tile' must be 0 (the whole frame) or >= 32, got {self.tile}")
        if self.warm_tile and self.warm_tile < 32:
            raise ValueError(f"'refine.warm_tile' must be 0 (the full refinement's tile) or >= 32, got {self.warm_tile}")


# the full refinement of video, where it competes with the frame rate: one start on a 256-px tile (the pipeline's
# PIPELINE_REFINE, and what trains and benchmarks "as the pipeline" refine with). Why each: pipeline/config.py
VIDEO_REFINE = RefineConfig(tile=256, starts=(1.0,))


def odd_side(n: float) -> int:
    """The smallest odd kernel side >= n (at least 3)."""
    n = max(3, int(math.ceil(n)))
    return n if n % 2 else n + 1


def refined_size(cfg: RefineConfig, k: int, shape: tuple[int, int]) -> int:
    """The side of the refined kernel for ``k``-tap starting kernels on frames of ``shape`` (H, W): ``cfg.size``,
    or when it is 0, ``k`` scaled by round(long side / 640) (at least 1) about its centre pixel."""
    if cfg.size:
        return cfg.size
    return (k // 2) * max(1, round(max(shape) / 640)) * 2 + 1


def refined_tile(cfg: RefineConfig, k: int, shape: tuple[int, int]) -> int:
    """The side of the tile ``refine_kernels`` works on for ``k``-tap starting kernels on frames of ``shape``:
    ``cfg.tile``, grown by sqrt(side / k) to a multiple of 32 when an auto ``size`` is larger than ``k`` (large
    kernels need more image around them); 0 = the whole frame."""
    size = refined_size(cfg, k, shape)
    if cfg.tile and not cfg.size and size > k:
        return 32 * math.ceil(cfg.tile * math.sqrt(size / k) / 32)
    return cfg.tile


def resize_kernels(kernels: Tensor, size: int, scale: float = 1.0) -> Tensor:
    """(B,k,k) -> (B,size,size): the kernel image scaled by ``scale`` about its centre (bilinear), then
    cropped or zero-padded to ``size``, non-negative, summing to 1."""
    b, k, _ = kernels.shape
    src = kernels[:, None].float()
    if scale < 1.0:  # anti-alias: a box of the shrink factor before sampling
        f = max(1, round(1.0 / scale))
        if f > 1:
            src = F.avg_pool2d(F.pad(src, (f // 2, f - 1 - f // 2, f // 2, f - 1 - f // 2)), f, stride=1)
    # output offset d (from the centre) reads the input at d / scale; align_corners maps offset o to o / (k // 2)
    d = torch.arange(size, device=kernels.device, dtype=torch.float32) - size // 2
    pos = (d / scale) / max(k // 2, 1)
    gy, gx = torch.meshgrid(pos, pos, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None].expand(b, -1, -1, -1)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0].clamp_min(0)
    s = out.sum((-1, -2), keepdim=True)
    return torch.where(s > 0, out / s.clamp_min(1e-12), _delta(b, size, kernels.device))


def _delta(b: int, size: int, device) -> Tensor:
    out = torch.zeros(b, size, size, device=device)
    out[:, size // 2, size // 2] = 1.0
    return out


def center_kernels(kernels: Tensor) -> Tensor:
    """Shift each (B,k,k) kernel by whole pixels so that its centre of mass is on the centre pixel
    (a shift of the kernel only shifts the deconvolved image; the detector's boxes must not move)."""
    b, k, _ = kernels.shape
    idx = torch.arange(k, device=kernels.device, dtype=kernels.dtype) - k // 2
    mass = kernels.sum((-1, -2)).clamp_min(1e-12)
    profiles = torch.stack([kernels.sum(-1), kernels.sum(-2)], 1)  # (B,2,k): rows, columns
    centre = torch.nan_to_num((profiles @ idx) / mass[:, None]).round().clamp(-k, k).long().tolist()  # one sync
    padded = F.pad(kernels, (k, k, k, k))  # a window of the zero-padded kernel: what shifts out is gone, zeros come in
    out = torch.stack([padded[i, k + cy : 2 * k + cy, k + cx : 2 * k + cx] for i, (cy, cx) in enumerate(centre)])
    s = out.sum((-1, -2), keepdim=True)
    return torch.where(s > 0, out / s.clamp_min(1e-12), kernels)


def _gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences of (B,1,H,W), same size (the last row/column is 0)."""
    gx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    gy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    return gx, gy


_GAUSS = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _shock(x: Tensor, steps: int, dt: float = 0.5) -> Tensor:
    """Shock filter: ``x_t = -sign(Laplacian x) |grad x|`` after a 5-tap binomial smoothing; steepens edges.
    (Written as shifted slices: a 1-channel convolution cost several times more.)"""
    g = _GAUSS.tolist()
    p = F.pad(x, (2, 2, 0, 0), mode="replicate")
    w = x.shape[-1]
    x = sum(g[i] * p[..., i : i + w] for i in range(5))
    p = F.pad(x, (0, 0, 2, 2), mode="replicate")
    h = x.shape[-2]
    x = sum(g[i] * p[..., i : i + h, :] for i in range(5))
    for _ in range(steps):
        gx, gy = _gradients(x)
        p = F.pad(x, (1, 1, 1, 1), mode="replicate")
        lx = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 4.0 * x
        x = x - dt * torch.sign(lx) * torch.sqrt(gx * gx + gy * gy)
    return x


def _window(h: int, w: int, margin: int, device) -> Tensor:
    """(h,w) weights: 1 inside, a raised-cosine fall to 0 over ``margin`` px at each border."""
    def ramp(n):
        t = torch.ones(n, device=device)
        m = min(margin, n // 2)
        if m > 0:
            r = 0.5 - 0.5 * torch.cos(torch.linspace(0, math.pi, m + 2, device=device)[1:-1])
            t[:m], t[n - m:] = r, r.flip(0)
        return t
    return ramp(h)[:, None] * ramp(w)[None, :]


def _strongest(lx: Tensor, ly: Tensor, mag: Tensor, keep: float, bins: int, stride: int = 7) -> Tensor:
    """Mask of the strongest ``keep`` fraction of gradients, ``keep / bins`` in each of ``bins`` orientation
    bins (as Cho & Lee: a photo with one dominant edge direction says nothing about the blur along it, and
    its edges would otherwise take every slot). The thresholds are the quantiles of every ``stride``-th
    pixel (a sample: a full top-k per bin cost a quarter of the refinement)."""
    bins = max(bins, 1)
    if bins > 1:
        angle = torch.remainder(torch.atan2(ly, lx), math.pi)
        which = (angle / (math.pi / bins)).long().clamp_(0, bins - 1)  # (a NaN gradient casts to a negative)
    else:
        which = torch.zeros_like(mag, dtype=torch.long)
    sm, sw = mag.flatten(1)[:, ::stride], which.flatten(1)[:, ::stride]  # (B,N) sample
    per_bin = torch.where(sw[:, None] == torch.arange(bins, device=mag.device)[None, :, None], sm[:, None],
                          torch.zeros((), device=mag.device, dtype=mag.dtype))  # (B,bins,N), 0 outside the bin
    n = max(1, min(sm.shape[1], int(keep * sm.shape[1] / bins)))
    thr = per_bin.topk(n, dim=2, sorted=False).values.amin(2)  # (B,bins): each bin's threshold
    return (mag >= torch.gather(thr, 1, which.flatten(1)).view_as(mag)) & (mag > 0)


def _solve(lx: Tensor, ly: Tensor, fbx: Tensor, fby: Tensor, size: int, beta: float) -> Tensor:
    """Least-squares kernel (B,size,size) mapping latent gradients (lx, ly) to blurred gradients, given as their
    spectra (fbx, fby: rfft2 of the blurred tile's windowed gradients, the same every iteration)."""
    fx, fy = torch.fft.rfft2(torch.cat([lx, ly], 1)).unbind(1)
    fx, fy = fx[:, None], fy[:, None]
    num = fx.conj() * fbx + fy.conj() * fby
    den = fx.real ** 2 + fx.imag ** 2 + fy.real ** 2 + fy.imag ** 2
    den = den + beta * den.mean((-1, -2), keepdim=True) + 1e-12
    full = torch.fft.irfft2(num / den, s=lx.shape[-2:])[:, 0]  # (B,H,W), offset d at index d mod H
    r = size // 2
    full = torch.roll(full, shifts=(r, r), dims=(-2, -1))
    return full[:, :size, :size]


def rmap(bx: Tensor, by: Tensor, side: int, eps: float = 0.5) -> Tensor:
    """Xu & Jia's r-map of gradients ``bx``, ``by`` ((B,1,H,W)): |sum of the gradient vectors| / (sum of their
    magnitudes + ``eps``) over a ``side`` x ``side`` window (the frame's border replicated), in [0, 1): near 0 in fine
    texture whose gradients cancel, and towards 1 at a lone straight edge as strong as ``eps`` or more (values in
    [0, 1]: a weak or very blurred edge scores lower too, e.g. 0.25 for a 0.2 step blurred over 11 px, 3 x 3)."""
    p = side // 2
    sums = F.avg_pool2d(F.pad(torch.cat([bx, by, torch.sqrt(bx * bx + by * by)], 1), (p, p, p, p), mode="replicate"),
                        side, stride=1) * (side * side)
    sx, sy, mag = sums.unbind(1)
    return (torch.sqrt(sx * sx + sy * sy) / (mag + eps))[:, None]


def _clean(kernels: Tensor, threshold: float, support: Tensor | None = None) -> Tensor:
    """Non-negative; weights below ``threshold`` x the peak dropped; only what is connected to the peak kept
    (isolated specks are noise of the solve); outside ``support`` ((B,k,k) bool) zeroed; sums to 1."""
    k = torch.nan_to_num(kernels, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    if support is not None:
        k = k * support
    keep = k >= threshold * k.flatten(1).amax(1).view(-1, 1, 1)
    peak = k.flatten(1).argmax(1).tolist()
    side = k.shape[-1]
    grown = []
    for i, on in enumerate(keep.to(torch.uint8).cpu().numpy()):  # the 8-connected component holding the peak
        _, labels = cv2.connectedComponents(on, connectivity=8)
        grown.append(labels == labels[peak[i] // side, peak[i] % side])
    k = k * torch.from_numpy(np.stack(grown)).to(k.device)
    return k / k.sum((-1, -2), keepdim=True).clamp_min(1e-12)


def _support(kernels: Tensor, grow: int) -> Tensor:
    """Where a kernel has weight (above 1 % of its peak), dilated by ``grow`` px: (B,k,k) bool."""
    on = (kernels > 0.01 * kernels.flatten(1).amax(1).view(-1, 1, 1)).float()[:, None]
    return F.max_pool2d(on, 2 * grow + 1, stride=1, padding=grow)[:, 0] > 0


def most_textured_tile(grey: Tensor, tile: int) -> Tensor:
    """(B,1,H,W) -> (B,1,t,t): the tile (on a grid of half-tile steps) with the most gradient energy;
    the whole frame when it is not larger than ``tile`` or ``tile`` is 0. The energy is summed on every second
    pixel of every second row (differences two pixels apart): the ranking of 128-px-and-larger tiles hardly
    changes, at a quarter of the full-frame work (at 1280x720 the full-resolution sum took 4-9 ms of each video
    frame's 15 ms of warm-started refinement)."""
    b, _, h, w = grey.shape
    if not tile or (h <= tile and w <= tile):
        return grey
    th, tw = min(tile, h), min(tile, w)
    step = max(8, tile // 2)
    ys = torch.arange(0, h - th + 1, step, device=grey.device)
    xs = torch.arange(0, w - tw + 1, step, device=grey.device)
    if th % step == 0 and tw % step == 0 and step % 2 == 0:  # the usual case: a tile is whole step x step blocks
        # (an integral image of the frame in float64 cost 4 ms of every 1280x720 frame)
        nby, nbx = (len(ys) - 1) + th // step, (len(xs) - 1) + tw // step
        sub = grey[:, 0, : nby * step : 2, : nbx * step : 2]  # (B, nby*step/2, nbx*step/2)
        energy = F.pad((sub[..., :, 1:] - sub[..., :, :-1]).abs_(), (0, 1))
        energy += F.pad((sub[..., 1:, :] - sub[..., :-1, :]).abs_(), (0, 0, 0, 1))
        half = step // 2
        blocks = energy.reshape(b, nby, half, nbx, half).sum((2, 4))
        score = F.avg_pool2d(blocks[:, None], (th // step, tw // step), stride=1)[:, 0]  # (B,ny,nx), up to a factor
    else:
        gx, gy = _gradients(grey)
        energy = (gx.abs() + gy.abs())[:, 0]
        integral = F.pad(energy.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))  # (B,H+1,W+1): any window in 4 reads
        score = (integral[:, ys[:, None] + th, xs[None, :] + tw] - integral[:, ys[:, None], xs[None, :] + tw]
                 - integral[:, ys[:, None] + th, xs[None, :]] + integral[:, ys[:, None], xs[None, :]])  # (B,ny,nx)
    nx = len(xs)
    best = score.flatten(1).argmax(1).tolist()
    out = []
    for i in range(b):
        y0, x0 = int(ys[best[i] // nx]), int(xs[best[i] % nx])
        out.append(grey[i : i + 1, :, y0 : y0 + th, x0 : x0 + tw])
    return torch.cat(out)


@torch.inference_mode()
def refine_kernels(blur: Tensor, kernels: Tensor, cfg: RefineConfig | None = None) -> tuple[Tensor, Tensor]:
    """Refine ``kernels`` ((B,k,k)) against the grey ``blur`` ((B,1,H,W) float [0,1]), from each of ``cfg.starts``.

    Returns ``(refined (B,s,s), ok (B,) bool)`` with ``s = refined_size(cfg, k, (H, W))``; where ``ok`` is False the
    refinement failed from every start (non-finite, empty, or its mass on the border) and the starting kernel, resized
    to ``s``, is returned instead.
    """
    cfg = cfg or RefineConfig()
    if blur.ndim != 4 or blur.shape[1] != 1 or kernels.ndim != 3 or kernels.shape[0] != blur.shape[0]:
        raise ValueError(f"refine_kernels expects blur (B,1,H,W) and kernels (B,k,k), got {tuple(blur.shape)} "
                         f"and {tuple(kernels.shape)}")
    size = refined_size(cfg, kernels.shape[-1], blur.shape[-2:])
    start = resize_kernels(kernels.float(), size)
    if cfg.iters == 0:
        return start, torch.ones(len(kernels), dtype=torch.bool, device=kernels.device)
    tile = most_textured_tile(blur.float(), refined_tile(cfg, kernels.shape[-1], blur.shape[-2:]))
    if tuple(cfg.starts) == (1.0,):
        return _refine(tile, start, cfg)[:2]
    b, c = len(start), len(cfg.starts)
    starts = torch.stack([scaled_start(start, f) for f in cfg.starts], 1).flatten(0, 1)  # (B*C,s,s), frame-major
    refined, ok, ran = _refine(tile.repeat_interleave(c, 0), starts, cfg, copies=c)
    if not ran:  # the frame is too small for any level: no start was refined, and the first is the network's kernel
        return start, torch.ones(b, dtype=torch.bool, device=start.device)
    refined, ok = refined.view(b, c, size, size), ok.view(b, c)
    plan = WienerPlan(blur.float(), size)  # the frame's padding and spectrum once for every start's kernel
    score = torch.stack([overshoot(blur, refined[:, j], cfg.pick_balance, plan) for j in range(c)], 1)  # (B,C)
    score = torch.where(ok, score, torch.full_like(score, math.inf))
    score[:, 1:] /= cfg.pick_ratio  # the first start wins unless another overshoots clearly less
    best = score.argmin(1)
    ok = ok.any(1)
    picked = refined[torch.arange(b, device=refined.device), best]
    return torch.where(ok[:, None, None], picked, start), ok


def scaled_start(kernels: Tensor, factor: float) -> Tensor:
    """A refinement start: (B,s,s) ``kernels`` scaled by ``factor`` about their centre (1 = as they are), or for
    ``factor`` 0 an isotropic Gaussian whose sigma along x and along y is half their spread (the root of their summed
    variances along x and y), at least 1 px: so its own spread is 1/sqrt(2) of theirs; their size without their
    direction."""
    if factor == 1.0:
        return kernels
    side = kernels.shape[-1]
    if factor > 0:
        return resize_kernels(kernels, side, factor)
    moments = kernel_moments(kernels)  # mean x, mean y, var x, var y, cov xy
    sigma = ((moments[:, 2] + moments[:, 3]).sqrt() / 2).clamp_min(1.0)[:, None, None]
    d = torch.arange(side, device=kernels.device, dtype=torch.float32) - side // 2
    g = torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2)[None] / (2 * sigma**2))
    return g / g.sum((-1, -2), keepdim=True)


def overshoot(blur: Tensor, kernels: Tensor, balance: float, plan: WienerPlan | None = None) -> Tensor:
    """(B,) how far the Wiener deconvolution of ``blur`` ((B,1,H,W)) with ``kernels`` ((B,k,k)) leaves the blurred
    frame's own range (a blurred frame's values are averages of the sharp one's, so the sharp frame spans at least
    that range): the mean of what lies below its minimum or above its maximum, over the range, away from a border of
    the kernel's radius. A wrong kernel rings, and the ringing overshoots; the frame's range rather than [0, 1] keeps
    the measure alive on soft, low-contrast frames. Choosing among refined kernels by it (``refine.starts``) gained
    +0.42 dB on the held-out photos and +0.66 dB on 30 training photos over the network's start alone
    (``python bench/refine.py --settings "starts=[1]" ""``, and ``--split train --limit 30``). ``plan``: a
    ``WienerPlan`` of ``blur`` for kernels of this side, to share among several sets of kernels."""
    blur = blur.float()
    lo, hi = blur.amin((1, 2, 3), keepdim=True), blur.amax((1, 2, 3), keepdim=True)
    latent = wiener_deconvolve(blur, kernels, balance=balance) if plan is None else plan(kernels, balance)
    m = kernels.shape[-1] // 2
    if min(latent.shape[-2:]) > 4 * m:
        latent = latent[..., m:-m, m:-m]
    out = (torch.relu(lo - latent) + torch.relu(latent - hi)).mean((1, 2, 3))
    return out / (hi - lo).flatten().clamp_min(1e-3)


def _refine(tile: Tensor, start: Tensor, cfg: RefineConfig, copies: int = 1) -> tuple[Tensor, Tensor, bool]:
    """The coarse-to-fine refinement of ``start`` ((B,s,s), already at the refined size) on ``tile`` ((B,1,h,w); each
    frame's tile ``copies`` times in a row, one per start) -> (kernels, ok, whether any pyramid level ran: False on a
    tile too small for the kernel, which is then returned as it came)."""
    size = start.shape[-1]
    current = None
    for level in range(cfg.levels - 1, -1, -1):
        scale = 0.5 ** level
        side = odd_side(size * scale)
        yl = tile if level == 0 else F.interpolate(tile, scale_factor=scale, mode="area")
        h, w = yl.shape[-2:]
        if min(h, w) < 2 * side:
            continue  # too small at this level to say anything about a kernel this large
        coarsest = current is None
        if coarsest:
            current = resize_kernels(start, side, scale)
        else:
            current = resize_kernels(current, side, side / current.shape[-1])
        support = None if coarsest else _support(current, cfg.grow)
        win = _window(h, w, side // 2 + 2, yl.device)
        bx, by = _gradients(yl)
        useful = None
        if cfg.rmap:  # the same for every start of a frame: computed once per frame
            useful = rmap(bx[::copies], by[::copies], cfg.rmap).pow_(cfg.rmap_power).repeat_interleave(copies, 0)
        fbx, fby = torch.fft.rfft2(bx * win), torch.fft.rfft2(by * win)
        plan = WienerPlan(yl, side, pad=side // 2)  # the tile's padding and spectrum, once per level
        for _ in range(cfg.iters if level or cfg.fine_iters < 0 else cfg.fine_iters):
            latent = plan(current, cfg.balance).clamp(0.0, 1.0)
            sharp = _shock(latent, cfg.shock_steps, cfg.shock_dt)
            lx, ly = _gradients(sharp)
            mag = (lx * lx + ly * ly) * win
            if useful is not None:
                mag = mag * useful
            mask = _strongest(lx, ly, mag, cfg.keep, cfg.orient_bins)
            solved = _clean(_solve(lx * mask * win, ly * mask * win, fbx, fby, side, cfg.beta), cfg.threshold,
                            support)
            current = center_kernels(solved)
    if current is None:  # the frame is too small for any level: nothing to refine against
        return start, torch.ones(len(start), dtype=torch.bool, device=start.device), False
    refined = resize_kernels(current, size, size / current.shape[-1]) if current.shape[-1] != size else current
    ok = torch.isfinite(refined).flatten(1).all(1) & (refined.sum((-1, -2)) > 0.5)
    border = refined[:, [0, -1], :].sum((-1, -2)) + refined[:, 1:-1, [0, -1]].sum((-1, -2))
    ok &= border < 0.25  # most of the mass on the border: the solve ran away
    return torch.where(ok[:, None, None], refined, start), ok, True


def shape_error(estimate: Tensor, truth: Tensor) -> Tensor:
    """1 - the largest normalised cross-correlation of two (B,k,k) kernels over all integer shifts, after
    upsampling both by 2 (half-pixel shifts). 0 for the same shape anywhere; a diffuse blob against a thin
    curved path scores high, whatever their centres."""
    if estimate.shape[-1] != truth.shape[-1]:
        size = max(estimate.shape[-1], truth.shape[-1])
        estimate, truth = resize_kernels(estimate, size), resize_kernels(truth, size)
    a = F.interpolate(estimate[:, None].float(), scale_factor=2, mode="bilinear", align_corners=False)
    b = F.interpolate(truth[:, None].float(), scale_factor=2, mode="bilinear", align_corners=False)
    n = a.shape[-1]
    fa, fb = torch.fft.rfft2(a, s=(2 * n, 2 * n)), torch.fft.rfft2(b, s=(2 * n, 2 * n))
    corr = torch.fft.irfft2(fa * fb.conj(), s=(2 * n, 2 * n)).flatten(1).amax(1)
    norm = a.flatten(1).norm(dim=1) * b.flatten(1).norm(dim=1)
    return 1.0 - corr / norm.clamp_min(1e-12)
