"""Kernel-aware deblurring: estimate each frame's blur kernel, then deconvolve it in closed form.

``KernelDeblurrer.restore(x)`` takes ``(B,3,H,W)`` RGB float in [0,1] on its device and returns the
restored frames, same layout (smaller with ``work_side``: see step 4), clamped to [0,1]:

1. the ``crops`` most textured ``crop x crop`` tiles of each frame's grey image (full resolution, so
   the blur is not shrunk away; frames smaller than a tile are mirror-padded, ``deblur.frames.pad_to``).
   A dark frame (mean luma below ``dark_luma``: night, low light) is read differently, as the estimator never
   saw one: tiles holding a clipped highlight (a lamp, a headlight: the clipped disc reads as a sharp edge
   whatever the blur) rank last and are left out of the combination when any other tile is chosen, and each
   tile's contrast is stretched towards the training crops' (at most ``dark_gain`` times: a dim tile reads as
   long blur whatever its blur);
2. the estimator's kernel for each tile, combined into one kernel per frame (``combine``);
3. blur gating: a kernel shorter than ``gate_px`` (long axis, px) means a sharp frame, which passes
   through untouched; so does a frame whose kernel is not finite (counted in ``nonfinite``);
4. Wiener deconvolution of the full-resolution colour frame (deblur.deconv; with ``work_side``, of a copy that
   size, with the kernel refined at full resolution (``work_refine``) and scaled to it, and the balance scaled by scale^4, or scale^2
   for the network's kernel alone),
   regularised by ``balance + noise_gain * sigma^2`` (``network_balance`` for a kernel that was not refined) with sigma the
   frame's estimated noise. A frame smaller than the kernel
   (a 36x64 copy with ``--deblur-size 64``, a 24x32 thumbnail) is deconvolved mirror-padded to the kernel's side
   and cropped back; such frames are counted (``counters()["small_frames"]``) and logged once;
5. optionally a refiner (``refiner``: a generator exported with ``in_channels=6``) that takes the blurred
   and the deconvolved frame and removes ringing and the estimate's errors; with ``in_channels=7`` it also takes
   the deconvolution's luma residual ``y - k * x``, as ``2 * (y - k * x)``.

``temporal`` > 0 smooths kernels over consecutive calls (a video's camera motion is continuous):
``k_t = (1 - temporal) * k_new + temporal * k_{t-1}``, reset when the frame size changes and by ``reset()``
(``warmup()`` and the pipeline's warm-up call it, so a warm-up frame never becomes a real frame's k_{t-1}).

``KernelDeblurrer(...)(frames_bgr)`` is the uint8 interface of ``deblur.predict.Deblurrer``:
list of (H,W,3) BGR uint8 in, the same out. ``last_kernels`` holds the kernels of the last batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Literal, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from configs.loader import check_range
from deblur.archs.fpn_mobilenet_arch import STRIDE
from deblur.archs.kernel_arch import kernel_extent, kernel_moments
from deblur.deconv import estimate_noise, wiener_deconvolve
from deblur.kernel_refine import RefineConfig, odd_side, refine_kernels, refined_size, refined_tile, resize_kernels
from deblur.frames import SmallFrames, check_bgr_frames, pad_to, shrink_bgr
from deblur.models import DEFAULT_ESTIMATOR, load_estimator, load_generator, load_refiner
from runtime import compile_module, keep_large_allocations, resolve_device, resolve_runtime

logger = logging.getLogger(__name__)

__all__ = ["KernelDeblurConfig", "KernelDeblurrer", "luma_bgr", "shrink", "work_size"]

_GREY = (0.299, 0.587, 0.114)  # RGB -> luma (BT.601), as cv2.COLOR_RGB2GRAY
_CLIPPED = 0.98  # a pixel whose brightest channel reaches this is a clipped highlight (dark frames' tile choice)


def luma(x: Tensor) -> Tensor:
    """(B,3,H,W) RGB float [0,1] -> (B,1,H,W) grey (Rec. 601 weights), float32: what the estimator and the
    refinement look at, and the channel the default deconvolution works on."""
    x = x.float()
    # three scaled adds rather than a weighted sum over the channel axis: 4x faster on a channels_last frame (the
    # pipeline's layout), 2x on a contiguous one (python bench/hotpath.py)
    return (x[:, 0:1] * _GREY[0]).add_(x[:, 1:2], alpha=_GREY[1]).add_(x[:, 2:3], alpha=_GREY[2])


def luma_bgr(frames_bgr: Sequence[np.ndarray]) -> Tensor:
    """(H,W,3) uint8 BGR frames of one size -> (B,1,H,W) float32 luma in [0,1] (``luma``'s weights), computed from the
    uint8 frames one at a time (0.5 ms for 1280x720 on one thread), without an RGB tensor of them."""
    m = np.array([[_GREY[2], _GREY[1], _GREY[0]]], np.float32) / 255.0  # BGR order
    return torch.from_numpy(np.stack([cv2.transform(f.astype(np.float32), m) for f in frames_bgr]))[:, None]


def work_size(hw: tuple[int, int], work_side: int) -> tuple[int, int]:
    """(H, W) scaled so that the long side is ``work_side`` (0, or a frame no larger: unchanged)."""
    h, w = hw
    if not work_side or max(h, w) <= work_side:
        return h, w
    g = work_side / max(h, w)
    return max(2, round(h * g)), max(2, round(w * g))


def shrink(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(B,C,H,W) -> (B,C,*size): bilinear without antialiasing, as the detector's letterbox (and cv2.INTER_LINEAR)
    resizes, so that a frame passed through at the work size reaches the detector as it would have anyway (but for
    a caller's own copy, ``restore(copy, grey=...)``: its frames pass through as that copy)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _energy(tiles: Tensor) -> Tensor:
    """(B,n,1,S,S) -> (B,n) mean absolute horizontal plus vertical difference: how textured each tile is."""
    return tiles.diff(dim=-1).abs().mean((-1, -2, -3)) + tiles.diff(dim=-2).abs().mean((-1, -2, -3))


@dataclass(frozen=True)
class KernelDeblurConfig:
    """Inference options of the kernel-aware deblurrer (every default lives here)."""

    crops: int = 8  # tiles per frame the estimator looks at
    crop: int = 128  # tile side, px (the estimator's training crop)
    # how the tiles' kernels become one: geometric (their product: the tiles must agree) gave more mAP@0.5:0.95
    # than the mean at severities 2-4 on 40 detection images (model card)
    combine: Literal["mean", "geometric"] = "geometric"
    gate_px: float = 3.0  # kernels shorter than this (long axis, px) count as no blur: the frame passes through
    # dark frames (mean luma below dark_luma; 0 = off) get their own tile choice and per-tile contrast stretch
    # (module docstring, step 1). On bench/gate.py's synthetic low-light frames (167) the gate called 32 / 36 % of
    # the blurred ones (shake 2 / 4) sharp and 73 % of the sharp ones blurred without it, 4 / 0 % and 0 % with it
    # (docs/results/2026-12-06_kernel_refinement.md). 0.15: every evaluation photo is brighter (the darkest,
    # zidane.jpg, 0.24); the low-light frames are 0.04-0.10
    dark_luma: float = 0.15
    dark_contrast: float = 0.2  # the standard deviation a dark frame's tile is stretched to (training crops: ~0.2)
    dark_gain: float = 4.0  # ... by at most this gain (more makes the noise of a near-black tile "detail")
    # Wiener regulariser (Laplacian prior) with a refined kernel. 5e-3 rather than 1e-2: on all 167 detection images,
    # paired, it recovered more at ImageNet-C and shake severities 2-4 (mAP@0.5:0.95 +0.004 to +0.060, PSNR +0.03 to
    # +0.40 dB; docs/results/2026-12-07_detection_scale.md)
    balance: float = 5.0e-3
    # ... with the network's kernel alone (refinement off, skipped on a dark frame, or failed). 1e-2 rather than 2e-3:
    # with these less exact kernels it recovered more detection over ImageNet-C and shake together (40 images each;
    # model card)
    network_balance: float = 1.0e-2
    noise_gain: float = 0.0  # + noise_gain * sigma^2, sigma = the frame's estimated noise in [0,1] units
    temporal: float = 0.0  # kernel smoothing over consecutive calls, 0 = off
    # rgb: deconvolve each colour channel; luma: deconvolve the luma only and add its change to every channel
    # (a third of the FFT work; colour keeps the blurred chroma). On all 167 detection images, paired, rgb gained
    # +0.16 to +0.48 dB PSNR at ImageNet-C and shake 2-4 and +0.003 to +0.034 mAP@0.5:0.95 on shake, with
    # ImageNet-C detection within 0.01 (docs/results/2026-12-07_detection_scale.md): the default for images and the
    # evaluations. The pipeline runs luma (real time)
    channels: Literal["rgb", "luma"] = "rgb"
    # the refiner run after the deconvolution: "" = the one bundled in the estimator file (if any), "auto" = the
    # bundled one on CUDA and none on a CPU (the pipeline's default: on a CPU it costs the real-time budget),
    # "none" = no refiner, or the path of a refiner generator (in_channels 6 or 7)
    refiner: str = ""
    # closed-form refinement of the network's kernel (deblur.kernel_refine; iters 0 = off). On all 167 detection
    # images it recovered more than the network's kernel alone at every severity of both blurs, paired
    # (docs/results/2026-12-06_kernel_refinement.md)
    refine: RefineConfig = field(default_factory=RefineConfig)
    # deconvolve a copy whose long side is work_side px, e.g. the detector's input size: the kernel is still
    # estimated, and the gate still decides, on full-resolution tiles (where the blur is not shrunk away), then the
    # kernel is scaled to the copy (refined before or after: work_refine). 0 = at the input's resolution. Frames are
    # never enlarged.
    # restore() returns the copy; the uint8 interface (__call__) resizes it back to the input's size
    work_side: int = 0
    # with work_side: refine the kernel on the full-resolution frame's tile, where the blur has its detail, then scale
    # it to the copy ("full"), or refine it on the copy ("work"; cheaper: its tile shrinks with the copy). On 40
    # evaluation images at ImageNet-C and shake 2-4, paired, "full" lost 0.00-0.03 mAP@0.5 to full-resolution
    # deconvolution where "work" lost up to 0.14 (docs/results/2026-12-07_detection_scale.md)
    work_refine: Literal["work", "full"] = "full"
    # the frames' encoding gamma: the kernel is refined on, and the frame deconvolved in, the decoded values x^gamma
    # (linear light, where a camera's blur happens), then re-encoded; the network and the gate see the stored values.
    # 1 = the stored values (the default: the evaluations' blur convolves them, as ImageNet-C's). On all 167 evaluation
    # images blurred by shake in linear light (eval blur.linear=true), 2.2 gained PSNR +3.1 to +3.6 dB and mAP@0.5:0.95
    # +0.063 / +0.030 / +0.182 at severities 2 / 3 / 4, paired; on blur of the stored values it loses (-3.4 dB with the
    # refined kernel, python bench/linear_light.py). Camera footage blurs in linear light: try 2.2 there
    # (docs/results/2026-12-07_linear_light.md)
    gamma: float = 1.0
    # deconvolve by each kernel moved so that its centre of mass is on its centre pixel to a fraction of a pixel (the
    # kernels are centred to whole pixels): the output keeps the blurred frame's position (the mean of the scene's
    # positions during the exposure). Held-out PSNR over blurred +3.06 against +2.46 dB (python -m deblur.evaluate
    # --options center=false), and on all 167 evaluation images +0.18 to +1.18 dB
    # (docs/results/2026-12-07_subpixel_centre.md)
    center: bool = True

    def __post_init__(self):
        check_range("crops", self.crops, 1)
        check_range("crop", self.crop, 32)
        check_range("gate_px", self.gate_px, 0.0)
        check_range("dark_luma", self.dark_luma, 0.0, 1.0)
        check_range("dark_contrast", self.dark_contrast, 0.01, 0.5)
        check_range("dark_gain", self.dark_gain, 1.0)
        check_range("balance", self.balance, 1.0e-8)
        check_range("network_balance", self.network_balance, 1.0e-8)
        check_range("noise_gain", self.noise_gain, 0.0)
        check_range("temporal", self.temporal, 0.0, 0.99)
        check_range("gamma", self.gamma, 1.0, 3.0)
        if self.work_side and self.work_side < 32:
            raise ValueError(f"'work_side' must be 0 (deconvolve at the input's resolution) or >= 32 (the long side, "
                             f"px), got {self.work_side}")


class KernelDeblurrer:
    """Estimate a blur kernel per frame and Wiener-deconvolve it.

    Args:
        estimator: an exported kernel estimator file (deblur.save_estimator; None = the shipped default),
            or a KernelEstimator module.
        device: 'auto', 'cpu', 'cuda' or 'cuda:N'.
        cfg: KernelDeblurConfig; keyword options override its fields (``crops=4``).
        runtime: where the estimator network runs: 'torch', 'onnxruntime', 'openvino', 'torch_compile' or 'auto'
            (runtime/; the deconvolution is torch FFTs either way). threads / cache_dir: as runtime.compile_module.
    """

    def __init__(self, estimator: str | os.PathLike | nn.Module | None = None, device: str | torch.device = "auto",
                 cfg: KernelDeblurConfig | None = None, runtime: str = "torch", threads: int = 0,
                 cache_dir: str | os.PathLike | None = None, **options) -> None:
        self.device = resolve_device(device)
        keep_large_allocations()  # its frame-sized temporaries reuse freed memory (runtime/memory.py)
        if isinstance(estimator, nn.Module):
            self.estimator = estimator.to(self.device).eval()
        else:
            self.estimator, _ = load_estimator(estimator, device=self.device)
        for p in self.estimator.parameters():
            p.requires_grad_(False)
        self.cfg = dataclasses.replace(cfg or KernelDeblurConfig(), **options)
        self.kernel_size = self.estimator.kernel_size
        self.runtime = resolve_runtime(runtime, self.device)
        self.engine = None  # runtime.CompiledModule of the estimator when not eager torch on the CPU
        if self.runtime != "torch" or self.device.type == "cuda":
            # fp32, never the policy's 'auto' (fp16 on CUDA): the estimate is a softmax over k x k taps, most of them
            # tiny, and its angle must be right within a few degrees; but OpenVINO's 'auto' (bf16 where the CPU has it
            # natively, else fp32): on 72 blurred evaluation frames its kernels were fp32's to 0.05 deg (median; p90
            # 0.10) and 0.1 % of their length, at 3.4 against 4.9 ms for 8 tiles on one Zen 4 thread
            precision = "auto" if self.runtime == "openvino" else "fp32"
            self.engine = compile_module(self.estimator, None, self.runtime, self.device, precision,
                                         cache_dir=cache_dir, threads=threads)
        self.refiner = None
        if self.cfg.refiner not in ("", "auto", "none"):
            self.refiner, gen_cfg = load_generator(self.cfg.refiner, device=self.device)
            if gen_cfg.in_channels not in (6, 7):
                raise ValueError(f"refiner {self.cfg.refiner} is a plain generator (in_channels {gen_cfg.in_channels}); "
                                 "a refiner is trained with model.estimator set (configs/deblur_train_refiner.yaml)")
        elif (self.cfg.refiner == "" or (self.cfg.refiner == "auto" and self.device.type == "cuda")) \
                and not isinstance(estimator, nn.Module):
            bundled = load_refiner(estimator if estimator is not None else DEFAULT_ESTIMATOR, device=self.device)
            self.refiner = bundled[0] if bundled is not None else None
        self.refiner_engine = None  # runtime.CompiledModule of the refiner (OpenVINO bf16 where the CPU has it, fp16 on CUDA)
        if self.refiner is not None:
            for p in self.refiner.parameters():
                p.requires_grad_(False)
            if self.runtime != "torch" or self.device.type == "cuda":
                self.refiner_engine = compile_module(self.refiner, None, self.runtime, self.device, "auto",
                                                     cache_dir=cache_dir, threads=threads, spatial_multiple=STRIDE)
        self.last_kernels: Tensor | None = None  # (B,k,k) kernels of the last batch (gated frames included)
        self.last_gated: Tensor | None = None  # (B,) True where the frame passed through
        self.nonfinite = 0  # frames passed through because their kernel was not finite
        self.refine_failed = 0  # frames whose kernel refinement failed (the network's kernel was used)
        side = max(self.kernel_size, self.cfg.refine.size)
        self._small = SmallFrames(max(side, STRIDE if self.refiner is not None else 1),
                                  f"the estimator's {side}-tap kernel" + (" and the refiner" if self.refiner is not None else ""))
        self._previous: Tensor | None = None  # temporal smoothing state: the last frame's kernel
        self._previous_shape: tuple[int, int] | None = None
        self._refined: Tensor | None = None  # video refinement: the last refined kernel (1,k,k)
        self._refined_shape: tuple[int, int] | None = None  # ... and its frame size
        self._since = 0  # frames since the last full refinement
        self._job = None  # refine.background: (future of the running full refinement, its frame's shape)
        self._pool = None  # ... and its thread
        self._last_ms = 0.0  # the last restore() call's time (refine.budget_ms)
        self.skipped_warm = 0  # frames that reused the previous kernel without warm iterations (refine.budget_ms)
        self._rgb: Tensor | None = None  # BGR -> RGB channel index on the device (__call__)

    def reset(self) -> None:
        """Forget the temporal state (the smoother's previous kernel, video refinement's last refined kernel): the
        next frame's kernel is its own estimate. Called after a warm-up (its uniform frame's kernel must not start
        the first real frame's), and for a new input."""
        self._previous = self._previous_shape = None
        self._refined = self._refined_shape = None
        self._since = 0
        self._job = None  # a running background refinement finishes unread

    _STATE = ("_previous", "_previous_shape", "_refined", "_refined_shape", "_since", "_job")

    @property
    def stateful(self) -> bool:
        """Whether a frame's kernel depends on the frames before it (temporal smoothing, video refinement)."""
        return self.cfg.temporal > 0 or (self.cfg.refine.iters > 0 and self.cfg.refine.every > 1)

    def video_state(self) -> tuple:
        """The temporal state, to keep one per video stream (``set_video_state`` puts it back)."""
        return tuple(getattr(self, k) for k in self._STATE)

    def set_video_state(self, state: tuple | None) -> None:
        """Put back a ``video_state()``; None = a new stream (as ``reset()``)."""
        if state is None:
            self.reset()
            return
        for k, v in zip(self._STATE, state):
            setattr(self, k, v)

    def counters(self) -> dict[str, int]:
        """Frames handled specially, warmup() excluded: passed through for a non-finite kernel (nonfinite),
        deblurred padded because they are smaller than the kernel (small_frames), deconvolved with the refinement's
        starting kernel (the network's, or in video the last refined one) because the refinement failed
        (refine_failed), given the previous frame's kernel without warm iterations for lack of time (refine_skipped,
        refine.budget_ms)."""
        return {"nonfinite": self.nonfinite, "small_frames": self._small.count, "refine_failed": self.refine_failed,
                "refine_skipped": self.skipped_warm}

    # --- kernels ----------------------------------------------------------------------------------
    def _grid(self, img: Tensor) -> Tensor:
        """(B,C,H,W) -> (B, n, C, S, S): the centred grid of S x S tiles (a frame smaller than a tile mirror-padded)."""
        s = self.cfg.crop
        b, c = img.shape[:2]
        img = pad_to(img, s, s)[0]
        h, w = img.shape[-2:]
        top, left = (h % s) // 2, (w % s) // 2  # centre the tile grid
        grid = img[..., top : top + (h // s) * s, left : left + (w // s) * s]
        return grid.unfold(2, s, s).unfold(3, s, s).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c, s, s)

    def _tiles(self, grey: Tensor, bright: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(B,1,H,W) grey and its frame's brightest channel (B,1,H,W) (None: the grey tells what is clipped) -> the most
        textured S x S tiles of each frame as the estimator is to see them (B, crops, 1, S, S), and their weights in the
        combination (B, crops): 1, but 0 for a dark frame's tiles with a clipped highlight when it has other tiles
        chosen (None when no frame is dark: all 1)."""
        cfg = self.cfg
        dark = self._dark(grey)
        if not dark.any():
            tiles = self._grid(grey)
            score = _energy(tiles)
        else:
            stack = self._grid(torch.cat([grey, grey if bright is None else bright.to(grey)], dim=1))
            tiles = stack[:, :, :1]
            clipped = (stack[:, :, 1].flatten(2).amax(2) >= _CLIPPED) & dark[:, None]  # (B,n)
            score = _energy(tiles) - 4.0 * clipped  # the energy is at most 2: a clipped tile ranks below every other
        n = min(cfg.crops, tiles.shape[1])
        best = score.topk(n, dim=1).indices  # (B,n)
        chosen = torch.take_along_dim(tiles, best[..., None, None, None], dim=1)
        weights = None
        if dark.any():
            lit = torch.take_along_dim(clipped, best, dim=1)
            weights = (~lit | lit.all(1, keepdim=True)).float()
            mean = chosen.mean((-1, -2, -3), keepdim=True)
            gain = (cfg.dark_contrast / chosen.std((-1, -2, -3), keepdim=True).clamp_min(1e-6)).clamp(1.0, cfg.dark_gain)
            stretched = ((chosen - mean) * gain + 0.5).clamp(0.0, 1.0)
            chosen = torch.where(dark[:, None, None, None, None], stretched, chosen)
        return chosen, weights

    @property
    def shrinks_uint8(self) -> bool:
        """Whether a work-size copy is best made from the uint8 frame (``shrink_bgr``, the kernel estimated on the full
        frame's ``luma_bgr``, ``restore(copy, grey=..., bright=...)``): on a CPU, when the luma is deconvolved (every
        channel deconvolved amplifies the copy's rounding; on CUDA the float frame is shrunk on the GPU)."""
        return self.device.type == "cpu" and self.cfg.channels == "luma"

    def bright_bgr(self, frames_bgr: Sequence[np.ndarray], grey: Tensor) -> Tensor | None:
        """For ``restore(copy, grey=..., bright=...)``: the uint8 frames' brightest channel (B,1,H,W) in [0,1] when one
        of them is dark (it tells their clipped highlights, ``_tiles``), else None (nothing to tell)."""
        if not bool(self._dark(grey).any()):
            return None
        return torch.from_numpy(np.stack([f.max(2) for f in frames_bgr])).float().div_(255.0)[:, None]

    def _dark(self, grey: Tensor) -> Tensor:
        """(B,1,H,W) grey -> (B,) True for a dark frame (mean luma below ``dark_luma``): its own tile choice in
        ``_tiles``, and no refinement in ``restore``."""
        return grey.mean((1, 2, 3)) < self.cfg.dark_luma

    @torch.inference_mode()
    def estimate(self, x: Tensor | None, grey: Tensor | None = None, bright: Tensor | None = None) -> Tensor:
        """(B,3,H,W) RGB float [0,1] -> (B,k,k) kernels (non-negative, summing to 1). ``grey``: ``luma(x)``,
        when the caller has it already. With ``x`` None, ``grey`` alone, and ``bright`` (B,1,H,W), the frames'
        brightest channel, tells a dark frame's clipped highlights (None: the grey does)."""
        if x is None and grey is None:
            raise ValueError("KernelDeblurrer.estimate needs the RGB frames or their luma")
        grey = luma(x.float()) if grey is None else grey.float()
        if x is not None and self._dark(grey).any():
            bright = x.float().amax(1, keepdim=True)
        tiles, weights = self._tiles(grey, bright)
        b, n = tiles.shape[:2]
        k = self.kernel_size
        per_tile = (self.engine or self.estimator)(tiles.flatten(0, 1)).float().view(b, n, k * k)
        geometric = self.cfg.combine == "geometric"  # product of the tiles' kernels (they must agree), renormalised
        if geometric:
            per_tile = per_tile.clamp_min(1e-30).log()
        if weights is None:
            combined = per_tile.mean(1)
        else:  # every frame keeps at least one tile of weight 1
            combined = (per_tile * (weights / weights.sum(1, keepdim=True))[..., None]).sum(1)
        return (torch.softmax(combined, dim=1) if geometric else combined).view(b, k, k)

    def _smooth(self, kernels: Tensor, shape: tuple[int, int]) -> Tensor:
        a = self.cfg.temporal
        if a <= 0:
            return kernels
        out = []
        for kern in kernels:
            if self._previous is not None and self._previous_shape == shape and torch.isfinite(self._previous).all():
                kern = (1 - a) * kern + a * self._previous
            self._previous, self._previous_shape = kern, shape
            out.append(kern)
        return torch.stack(out)

    def _count_failed(self, n: int, where: str = "") -> None:
        self.refine_failed += n
        logger.warning("Kernel refinement failed for %d frame(s)%s (%d so far): its starting kernel is used", n, where,
                       self.refine_failed)

    def _refine(self, grey: Tensor, kernels: Tensor, shape: tuple, r: RefineConfig) -> tuple[Tensor, Tensor, Tensor]:
        """refine_kernels with ``r``, in video (refine.every > 1) warm-started from the last refined kernel between
        the full refinements (run in a background thread with ``refine.background``). ``shape``: the frame's size and
        the size refined at (a work-size copy's may be the same for two frame sizes). -> (kernels, ok: the refinement
        did not fail, refined: the kernel is a refined one, deconvolved with ``balance``)."""
        size = refined_size(r, kernels.shape[-1], shape[-2:])
        # the canvas and tile of the full refinement (an auto size would grow again from the refined canvas)
        tile = refined_tile(r, kernels.shape[-1], shape[-2:])
        if r.warm_tile:  # never more than the full refinement's tile (on a work-size copy that one is scaled down)
            tile = min(r.warm_tile, tile) if tile else r.warm_tile
        # (warm iterations go on from the last kernel alone: the starts are the full refinement's)
        warm_cfg = dataclasses.replace(r, levels=1, iters=r.warm_iters, fine_iters=-1, size=size, tile=tile,
                                       starts=(1.0,))
        if r.every > 1 and r.background:
            return self._refine_background(grey, kernels, shape, r, size, warm_cfg)
        warm = (r.every > 1 and self._refined is not None and self._refined_shape == shape and self._since < r.every
                and self._refined.shape[-1] == size)
        if warm:
            refined, ok = refine_kernels(grey, self._refined.expand(len(kernels), -1, -1), warm_cfg)
            self._since += len(kernels)
        else:
            refined, ok = refine_kernels(grey, kernels, r)
            self._since = len(kernels)
        if ok[-1]:
            self._refined, self._refined_shape = refined[-1:].clone(), shape
        return refined, ok, ok

    def _refine_background(self, grey: Tensor, kernels: Tensor, shape: tuple, r: RefineConfig, size: int,
                           warm_cfg: RefineConfig) -> tuple[Tensor, Tensor, Tensor]:
        """The video mode with the full refinements in a background thread: every ``every`` frames (and on a new
        frame size) the last frame of the batch goes to the thread, unless a refinement is still running there. Each
        frame gets ``warm_iters`` iterations from the previous frame's kernel, and a finished full refinement
        replaces that start once (it re-anchors the chain, as the synchronous mode's full refinements do); until the
        first one has finished, from its network kernel. On bench/temporal.py's drifting blur (640x360, 48 frames,
        every 8, one warm iteration) chaining the warm frames gained +1.49 dB over the blurred frames, restarting each
        from the last full refinement -1.56 dB: that kernel is a few frames old by then. Two warm iterations, every
        16: +3.29 dB (the synchronous mode, every 8: +3.68)."""
        job = self._job
        if job is not None and job[0].done():
            self._job = None
            try:
                got, ok = job[0].result()
            except Exception as e:  # noqa: BLE001 - the stream goes on with its warm-started kernels
                got, ok = None, torch.zeros(1, dtype=torch.bool)
                logger.warning("Background kernel refinement raised %s: %s", type(e).__name__, e)
            if not bool(ok[-1]):
                self._count_failed(1, " in the background")
            elif job[1] == shape:
                self._refined, self._refined_shape = got[-1:], shape
        usable = self._refined is not None and self._refined_shape == shape and self._refined.shape[-1] == size
        # behind time (refine.budget_ms): no warm iterations this frame, once there is a kernel to go on from or a
        # full refinement under way
        skip = bool(r.budget_ms) and self._last_ms > r.budget_ms and (usable or self._job is not None)
        if self._job is None and (not usable or self._since >= r.every):
            self._submit(grey, kernels, shape, r)
        self._since += len(kernels)
        if skip:  # the previous frame's kernel as it is (this frame is then quicker, and the next one catches up);
            # before the first full refinement has finished, the network's (deconvolved as such)
            self.skipped_warm += len(kernels)
            done = torch.ones(len(kernels), dtype=torch.bool, device=kernels.device)
            if not usable:
                return resize_kernels(kernels, size), done, ~done
            return self._refined.expand(len(kernels), -1, -1).clone(), done, done
        start = self._refined.expand(len(kernels), -1, -1) if usable else kernels
        refined, ok = refine_kernels(grey, start, warm_cfg)
        if usable and ok[-1]:  # the next frame goes on from this one (camera motion drifts between full refinements)
            self._refined = refined[-1:].clone()
        # the network's kernel with no iteration on it (warm_iters 0, no refined start yet) is not a refined one
        return refined, ok, ok & (usable or r.warm_iters > 0)

    def _submit(self, grey: Tensor, kernels: Tensor, shape: tuple, r: RefineConfig) -> None:
        """Hand the batch's last frame to the background refinement thread (started on first use)."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="kernel-refine")
        self._job = (self._pool.submit(refine_kernels, grey[-1:].clone(), kernels[-1:].clone(), r), shape)
        self._since = 0

    def close(self) -> None:
        """Stop the background refinement thread (refine.background), waiting for a running refinement; the
        deblurrer stays usable (a later frame starts a new thread)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._job = None

    # --- restoration ------------------------------------------------------------------------------
    def restore(self, x: Tensor, residual: bool = False, grey: Tensor | None = None,
                bright: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """``_restore``, timed (refine.budget_ms)."""
        t0 = time.perf_counter()
        try:
            return self._restore(x, residual, grey, bright)
        finally:
            self._last_ms = (time.perf_counter() - t0) * 1e3

    @torch.inference_mode()
    def _restore(self, x: Tensor, residual: bool = False, grey: Tensor | None = None,
                 bright: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """(B,3,H,W) RGB float [0,1] on the device -> restored, same layout, float32 clamped to [0,1]; with
        ``work_side`` smaller than the frame, at ``work_size`` (``last_kernels`` then hold the kernels at that scale),
        unless every frame passed the gate (then the frames as they came, at their size; not with ``residual``).

        ``grey``: the frames' luma (B,1,H,W). Larger than ``x``, it is the full-resolution frame and ``x`` the caller's
        work-size copy of it (shrunk from uint8 on the CPU: ``__call__`` and the pipeline): the kernel is estimated and
        refined on ``grey`` and ``x`` deconvolved, and a frame the gate passes comes back as that copy. ``bright``: then
        the full frames' brightest channel (B,1,H,W), which tells a dark frame's clipped highlights (None: the luma).

        ``residual`` (a refiner's training input): also the deconvolution's luma residual ``y - k * x``
        (B,1,H,W), not clamped; zero for the frames the gate passed through."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"KernelDeblurrer.restore expects (B,3,H,W) RGB in [0,1], got shape {tuple(x.shape)}")
        x = x.float()
        if grey is not None and (grey.ndim != 4 or grey.shape[:2] != (len(x), 1) or grey.shape[-2] < x.shape[-2]
                                 or grey.shape[-1] < x.shape[-1]):
            raise ValueError(f"KernelDeblurrer.restore: grey must be the frames' luma (B,1,H,W), at least as large as "
                             f"x {tuple(x.shape)}, got {tuple(grey.shape)}")
        copied = grey is not None and tuple(grey.shape[-2:]) != tuple(x.shape[-2:])
        grey = luma(x) if grey is None else grey.to(x.device, torch.float32)
        kernels = self._smooth(self.estimate(None, grey, bright) if copied else self.estimate(x, grey),
                               tuple(grey.shape[-2:]))
        finite = torch.isfinite(kernels).flatten(1).all(1)
        if not finite.all():
            self.nonfinite += int((~finite).sum())
            logger.warning("Kernel estimate not finite for %d frame(s) (%d so far): passed through", int((~finite).sum()),
                           self.nonfinite)
        safe = torch.where(finite[:, None, None], kernels, torch.zeros_like(kernels))
        extent = kernel_extent(kernel_moments(safe))
        sharp = (extent < self.cfg.gate_px) | ~finite
        r = self.cfg.refine
        dark = self._dark(grey) if r.iters else None  # on the full frame, before grey becomes the work-size copy's
        full_shape = tuple(grey.shape[-2:])
        work = tuple(x.shape[-2:]) if copied else work_size(full_shape, self.cfg.work_side)
        scale, full = 1.0, x
        if bool(sharp.all()) and not residual:  # nothing to deblur: the frames as they came, whatever the work size
            self.last_kernels, self.last_gated = safe, sharp
            return x.clone()
        # refinement works on the full-resolution frame, its kernels scaled to a work-size copy afterwards (late_scale),
        # unless work_refine "work" puts it on the copy
        refine_grey, refine_safe, refined_at, late_scale = grey, safe, full_shape, 0.0
        if work != full_shape:  # the kernel scaled to the copy, on a canvas as large as refinement would use
            scale = max(work) / max(full_shape)
            side = odd_side(refined_size(r, safe.shape[-1], full_shape) * scale)
            if self.cfg.work_refine == "full" and r.iters:
                late_scale = scale
            else:
                tile = refined_tile(r, safe.shape[-1], full_shape)  # the same image content as at full resolution
                r = dataclasses.replace(r, size=side, tile=tile and max(32, 32 * round(tile * scale / 32)))
            # the copy to deconvolve is shrunk with antialiasing (blurring commutes with a low-pass resampling, not with
            # aliasing decimation)
            if not copied:
                x = F.interpolate(x, size=work, mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)
            # a caller's uint8 copy deconvolved in luma: its luma from the full frame's float luma, not from the rounded
            # copy, which the deconvolution amplifies (-0.1 dB at 1280x720, python bench/temporal.py)
            from_full = copied and self.cfg.channels == "luma"
            grey = F.interpolate(grey, size=work, mode="bilinear", align_corners=False, antialias=True) if from_full \
                else luma(x)
            safe = resize_kernels(safe, side, scale)
            if not late_scale:
                refine_grey, refine_safe, refined_at = grey, safe, work
        refined, is_refined = None, torch.zeros_like(sharp)
        if r.iters:  # the frames the gate lets through (the gate asks the network's kernel only)
            # but not dark frames: their tiles' gradients are mostly noise, and on 24 synthetic night frames
            # (bench/gate.py's low light, shake 2 and 4) the refinement shrank the network's kernel (median extent
            # 8.7 -> 2.3 px, true 14.2; mean shape error 0.44 -> 0.55)
            check = (~sharp & ~dark).nonzero().flatten()
            if len(check):
                if self.cfg.gamma != 1.0:  # in linear light (the luma decoded: close to the linear luma)
                    refine_grey = refine_grey.clamp(0.0, 1.0).pow(self.cfg.gamma)
                # the video state's key: the frame's size and the size refined at
                got, ok, was_refined = self._refine(refine_grey[check], refine_safe[check], full_shape + refined_at, r)
                if not ok.all():
                    self._count_failed(int((~ok).sum()))
                if late_scale:
                    got = resize_kernels(got, safe.shape[-1], late_scale)
                refined = resize_kernels(safe, got.shape[-1])
                refined[check] = got
                is_refined[check] = was_refined
        self.last_kernels, self.last_gated = (safe if refined is None else refined), sharp
        used = safe if refined is None else refined
        if not bool(sharp.any()):  # every frame deblurred: no copies in and out of the batch
            out, res_out = self._deconvolve(x, used, residual, scale, is_refined, grey)
            return (out, res_out) if residual else out
        # a frame passed through at a work size is shrunk as the detector's letterbox would have
        out = full.clone() if full is x else shrink(full, work)
        res_out = torch.zeros_like(x[:, :1]) if residual else None
        todo = (~sharp).nonzero().flatten()
        if len(todo):
            deconv, res = self._deconvolve(x[todo], used[todo], residual, scale, is_refined[todo], grey[todo])
            out[todo] = deconv
            if residual:
                res_out[todo] = res
        return (out, res_out) if residual else out

    @torch.inference_mode()
    def deconvolve(self, x: Tensor, kernels: Tensor, residual: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``restore`` with given kernels ((B,k,k), e.g. a refiner's training crops with their true kernels
        perturbed): no estimate, gate or refinement; the deconvolution (and the refiner) as restore runs them."""
        deconv, res = self._deconvolve(x.float(), kernels.to(x.device, torch.float32), residual)
        return (deconv, res) if residual else deconv

    def _deconvolve(self, blur: Tensor, used: Tensor, residual: bool, scale: float = 1.0,
                    refined: Tensor | None = None, grey: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Wiener (luma or RGB, cfg.channels) with kernels ``used``, then the refiner if any -> (deconvolved [0,1],
        the luma residual y - k*x when ``residual``, else None). ``refined`` ((B,) bool; None = none): the frames whose
        kernel was refined, regularised by ``balance`` (the others by ``network_balance``). ``scale``: of a work-size
        copy, deconvolved with ``balance * scale^4`` for a refined kernel: the antialiased copy's noise variance falls
        by about scale^2, and its content's power at a given frequency of the copy rises by about 1/scale^2. With the
        kernel refined at full resolution, on 40 evaluation images (long side ~768 px, copies at 416: scale^4 ~ 0.09)
        a balance of 0.25 and 0.5 x scale^2 recovered more detection and PSNR than scale^2 at ImageNet-C and shake
        2-4, and at 1280x720 (bench/temporal.py) scale^4 gained 0.17 dB more than scale^2 and 0.04 dB less than
        scale^3. The network's own kernel, less exact, keeps ``network_balance * scale^2``: at 1280x720 it gained
        0.36 dB more than scale^4 (docs/results/2026-12-07_detection_scale.md). ``grey``: ``luma(blur)`` when the
        caller has it."""
        balance = torch.full((len(blur),), self.cfg.network_balance * scale**2, device=blur.device)
        if refined is not None:
            balance = torch.where(refined.to(blur.device), torch.full_like(balance, self.cfg.balance * scale**4), balance)
        if self.cfg.noise_gain > 0:
            balance = balance + self.cfg.noise_gain * estimate_noise(blur) ** 2
        padded, crop = self._small.pad(blur)
        if padded is not blur:
            blur, grey = padded, None
        want = residual or (self.refiner is not None and self.refiner.in_channels == 7)
        gamma = self.cfg.gamma
        if want and gamma != 1.0:  # a refiner is trained on the stored values' residual (gamma 1)
            raise ValueError("deblur.kernel.gamma must be 1 with a residual output or a 7-channel refiner (both are "
                             f"computed on the stored values), got gamma={gamma}: set gamma=1 or use a 6-channel "
                             "refiner")
        stored, blur = blur, (blur if gamma == 1.0 else blur.clamp(0.0, 1.0).pow(gamma))  # (cfg.gamma: linear light)
        if self.cfg.channels == "luma":
            grey = luma(blur) if grey is None or gamma != 1.0 else grey
            got = wiener_deconvolve(grey, used, balance=balance, residual=want, center=self.cfg.center)
            x_grey, res = got if want else (got, None)
            deconv = blur.add(x_grey.sub_(grey)).clamp_(0.0, 1.0)  # x_grey: a fresh result, changed in place
        else:
            got = wiener_deconvolve(blur, used, balance=balance, residual=want, center=self.cfg.center)
            deconv, res = got if want else (got, None)
            deconv, res = deconv.clamp_(0.0, 1.0), (luma(res) if want else None)  # luma is linear in RGB
        if gamma != 1.0:
            deconv, blur = deconv.pow_(1.0 / gamma), stored
        if self.refiner is not None:
            parts = [blur, deconv] + ([res + 0.5] if self.refiner.in_channels == 7 else [])
            run = self.refiner_engine or self.refiner
            deconv = (run(torch.cat(parts, dim=1) * 2.0 - 1.0).float().clamp_(-1.0, 1.0) + 1.0) * 0.5
        return crop(deconv), (crop(res) if residual else None)

    # --- uint8 frames -----------------------------------------------------------------------------
    def __call__(self, frames_bgr: Sequence[np.ndarray], full_size: bool = True) -> list[np.ndarray]:
        """list of (H,W,3) BGR uint8 -> deblurred frames, same order, shapes and dtype. With ``work_side`` smaller
        than a frame, ``full_size=False`` returns the deconvolved copy at ``work_size`` (what the pipeline's detector
        gets); else it is resized back. A sharp frame is returned untouched either way. On a CPU with ``channels``
        luma, the copy is shrunk from the uint8 frame (``shrink_bgr``) and the kernel estimated on its luma
        (``luma_bgr``), without an RGB tensor of the full frame (rgb keeps the float copy: deconvolving every channel
        amplifies the uint8 copy's rounding)."""
        check_bgr_frames(frames_bgr)
        results = []
        for f in frames_bgr:
            work = work_size(f.shape[:2], self.cfg.work_side)
            if work != f.shape[:2] and self.shrinks_uint8:
                grey = luma_bgr([f])
                y = self.restore(self._tensor(shrink_bgr(f, work)), grey=grey, bright=self.bright_bgr([f], grey))
                if bool(self.last_gated.all()):
                    results.append(f.copy())
                    continue
            else:
                y = self.restore(self._tensor(f))
            if tuple(y.shape[-2:]) != f.shape[:2] and full_size:  # work_side: back to the input's size
                y = F.interpolate(y, size=f.shape[:2], mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
            img = (y[0] * 255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            results.append(np.ascontiguousarray(img[..., ::-1]))
        return results

    def _tensor(self, frame_bgr: np.ndarray) -> Tensor:
        """(H,W,3) BGR uint8 -> (1,3,H,W) RGB float [0,1] on the device, NCHW-contiguous (the channel gather changes
        the layout; restore's full-frame ops are 2-4x slower on pixel-interleaved strides)."""
        if self._rgb is None:
            self._rgb = torch.tensor([2, 1, 0], device=self.device)
        x = torch.from_numpy(np.ascontiguousarray(frame_bgr)).to(self.device).permute(2, 0, 1)
        return x.index_select(0, self._rgb)[None].float().div_(255.0)

    def warmup(self, height: int = 360, width: int = 640) -> None:
        """One pass on a grey frame, then reset(): the warm-up leaves no kernel and no count behind."""
        counts = self.counters()
        self([np.full((height, width, 3), 128, np.uint8)])
        self.reset()
        self.nonfinite, self._small.count, self.refine_failed = counts["nonfinite"], counts["small_frames"], counts["refine_failed"]
        self.skipped_warm = counts["refine_skipped"]
