"""Does blur that varies across the frame (camera rotation) need more than one kernel per frame? Paired, on the same
blurred photos.

Photos: the training config's held-out ``val`` split (``--split train``: its training photos, to tune on) shrunk to
``--side`` px on the long side, plus every ``--vtest-step``-th frame of data/eval/vtest resized to 640x480 (0 = none;
never another held-out set). Each photo is blurred by ``rotational_blur`` (``deblur.data.blur_synth``: in-plane
rotation about a centre anywhere in the frame enlarged by half its size on every side, plus a translation whose
path spans U(``--shift``) px, frames averaged in linear light) at each ``--angles`` (the camera turns by
U(-a, a) degrees in the exposure; one seed per photo, so the strengths differ only by the rotation), plus noise
(sigma 0.005). Then, all luma-only like ``KernelDeblurrer`` (balance 1e-2):

  oracle_global     Wiener with the true kernel at the frame's centre, whole frame
  oracle_tiles      a kernel per tile of the grid (``--grid``): the true kernel at each tile's centre, tiles blended
                    (``deconvolve_tiles`` below)
  est_global        the network's kernel refined once (``RefineConfig()``: four starts), Wiener on the whole frame
  est_tiles         the est_global kernel refined again on a ``--window`` px square around each tile's centre
                    (``--tile-levels``, ``--tile-iters``), falling back to it where a window is flat (``--flat``),
                    the refinement fails or disagrees (``--disagree``); tiles blended like oracle_tiles
  tiles_from_truth  (``--from-truth``) est_tiles' per-tile refinement started from the true centre kernel: the
                    per-tile step alone, against oracle_global

Reported per rotation strength: the spread of the true kernels (shape error of the corner kernels against the
centre's, blur extent at the centre and the corners), the mean PSNR gain over the blurred photo of each method on
the whole frame, the centre ninth and the four corner ninths, the paired differences oracle_tiles - oracle_global
and est_tiles - est_global with 95 % bootstrap intervals (over photos), kernel shape errors against the true local
kernels, and ms per frame (one thread unless ``--threads``).

    python bench/spatial.py --disagree 0.2                          # all four methods, 0/1/2/4 degrees
    python bench/spatial.py --oracle-only --grid 6 8 --whole        # the ceiling of finer tiles
    python bench/spatial.py --oracle-only --from-truth --disagree 0.2 --angles 0 1 2

Outcome (2026-12, 10 held-out photos + 20 vtest frames, 3 x 4 tiles): with true kernels, one kernel per frame is
not enough: tiles gain +1.0 dB at 1 degree and +2.0 dB at 2 degrees (most of it in the corners). With estimated
kernels the per-tile refinement does not recover it (+0.07 to +0.27 dB, about as much at 0 degrees, where the blur
does not vary, as at 2), and started from the true kernel it moves the tiles' kernels away from their truth. So
the per-tile deconvolution stays here, not in deblur/, until a kernel estimate can resolve the variation.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from configs import CONFIG_DIR, load_config  # noqa: E402
from deblur.config import TrainConfig  # noqa: E402
from deblur.data.blur_synth import CameraMotion, add_noise, camera_motion, fit_kernel, rotational_blur  # noqa: E402
from deblur.data.dataset import SyntheticBlur  # noqa: E402
from deblur.deconv import WienerPlan, wiener_deconvolve  # noqa: E402
from deblur.kernel_deblur import KernelDeblurrer, luma  # noqa: E402
from deblur.kernel_refine import RefineConfig, refine_kernels, resize_kernels, shape_error  # noqa: E402
from stats import paired_interval  # noqa: E402  (bench/stats.py, beside this script)

METHODS = ("oracle_global", "oracle_tiles", "est_global", "est_tiles", "tiles_from_truth")
REGIONS = ("frame", "centre", "corners")
BALANCE = 1.0e-2  # KernelDeblurConfig.network_balance (its balance before 2026-12-07)


# --- the per-tile deconvolution (kept here: it did not win with estimated kernels, see the module docstring) ---
# A rows x cols grid of equal cores; tile i is Wiener-deconvolved with its own kernel on a window holding its core,
# the blend band around it and a margin (the deconvolution's border effects fall outside what is kept), and the
# results are blended with separable raised-cosine weights that sum to 1 everywhere: across each boundary the
# weight passes from one tile to the next over `blend` px centred on it (blend = a core's side: the weights of
# neighbouring tile centres fall to 0 at the next centre, an interpolation). Windows all have one size (moved
# inwards at the frame's border, so their edge is the frame's): one batched wiener_deconvolve call.

@dataclass(frozen=True)
class TileGrid:
    """A ``rows x cols`` grid of equal tile cores over an (H, W) frame (``layout``)."""

    rows: int = 3
    cols: int = 4
    blend: int = 0  # px over which a boundary passes from one tile to the next (0 = a core's side: interpolation)
    margin: int = 0  # px deconvolved beyond the blend band and then dropped (0 = the kernel's side)

    def __post_init__(self):
        if self.rows < 1 or self.cols < 1 or self.blend < 0 or self.margin < 0:
            raise ValueError(f"TileGrid: rows, cols >= 1 and blend, margin >= 0, got {self}")

    def _axis(self, n: int, parts: int, k: int, device) -> tuple[Tensor, list[int], int, list[float]]:
        """One axis of ``n`` px cut in ``parts``: weights (parts, n), window starts, window length, core centres."""
        bounds = [round(i * n / parts) for i in range(parts + 1)]
        core = max(bounds[i + 1] - bounds[i] for i in range(parts))
        least = min(bounds[i + 1] - bounds[i] for i in range(parts))
        band = float(min(self.blend or least, least))
        margin = self.margin or k
        pos = torch.arange(n, device=device, dtype=torch.float32) + 0.5  # pixel centres, boundaries on pixel edges

        def rise(b: float) -> Tensor:  # 0 before b - band / 2, 1 after b + band / 2, a raised cosine between
            if band <= 0:
                return (pos >= b).float()
            t = ((pos - (b - band / 2)) / band).clamp(0.0, 1.0)
            return 0.5 - 0.5 * torch.cos(math.pi * t)

        weights, starts = [], []
        length = min(n, core + int(math.ceil(band)) + 2 * margin)
        for i in range(parts):
            w = torch.ones(n, device=device)
            if i > 0:
                w = w * rise(bounds[i])
            if i < parts - 1:
                w = w * (1.0 - rise(bounds[i + 1]))
            weights.append(w)
            lo = int(math.floor(bounds[i] - band / 2)) - margin
            starts.append(min(max(lo, 0), n - length))
        centres = [(bounds[i] + bounds[i + 1] - 1) / 2 for i in range(parts)]
        return torch.stack(weights), starts, length, centres

    def layout(self, h: int, w: int, k: int, device=None):
        """(wy (rows,H), wx (cols,W), window starts y (rows,), x (cols,), window (Lh, Lw), tile centres [(x, y)]
        row-major) for an (h, w) frame and ``k``-tap kernels."""
        wy, ys, lh, cy = self._axis(h, self.rows, k, device)
        wx, xs, lw, cx = self._axis(w, self.cols, k, device)
        return wy, wx, ys, xs, (lh, lw), [(x, y) for y in cy for x in cx]

    def centres(self, h: int, w: int) -> list[tuple[float, float]]:
        """The tiles' core centres (x, y) px, row-major."""
        return self.layout(h, w, 1)[-1]


def deconvolve_tiles(blur: Tensor, kernels: Tensor, grid: TileGrid, balance: float = 1.0e-2,
                     whole: bool = False) -> Tensor:
    """Deconvolve ``blur`` ((B,C,H,W) float [0,1]) with a kernel per tile (``kernels`` (B, rows*cols, k, k) or
    (rows*cols, k, k), row-major) and blend -> (B,C,H,W), not clamped. Every tile: ``wiener_deconvolve`` with its
    defaults (reflect padding, edge taper) and ``center=True`` (as the deblurrer) on its window, all tiles in one
    batch; ``whole``: on the whole frame (the frame's spectrum computed once; no window borders, so equal kernels give
    exactly ``wiener_deconvolve(..., center=True)``, at about twice the FFT work of 3 x 4 windows)."""
    b, c, h, w = blur.shape
    n = grid.rows * grid.cols
    if kernels.ndim == 3:
        kernels = kernels[None].expand(b, -1, -1, -1)
    if kernels.shape[:2] != (b, n):
        raise ValueError(f"deconvolve_tiles: kernels must be (B, {n}, k, k) or ({n}, k, k), got {tuple(kernels.shape)}")
    k = kernels.shape[-1]
    wy, wx, ys, xs, (lh, lw), _ = grid.layout(h, w, k, blur.device)
    if whole:
        result = torch.zeros_like(blur)
        for i in range(b):
            out = WienerPlan(blur[i : i + 1], k)(kernels[i].to(blur.dtype), balance, center=True)  # (n,C,H,W)
            weight = (wy[:, None, :, None] * wx[None, :, None, :]).reshape(n, 1, h, w).to(blur.dtype)
            result[i] = (weight * out).sum(0)
        return result
    if k > min(lh, lw):
        raise ValueError(f"deconvolve_tiles: a {k}-tap kernel is larger than the {lh}x{lw} tile windows")
    windows = torch.stack([blur[..., y : y + lh, x : x + lw] for y in ys for x in xs], 1)  # (B,n,C,lh,lw)
    out = wiener_deconvolve(windows.flatten(0, 1), kernels.reshape(b * n, k, k).to(blur.dtype), balance=balance,
                            center=True)
    out = out.view(b, n, c, lh, lw)
    result = torch.zeros_like(blur)
    for i, (y, x) in enumerate((y, x) for y in ys for x in xs):
        r, q = divmod(i, grid.cols)
        weight = wy[r, y : y + lh, None] * wx[q, None, x : x + lw]
        result[..., y : y + lh, x : x + lw] += weight.to(blur.dtype) * out[:, i]
    return result


def _energy(x: Tensor) -> Tensor:
    """(N,1,h,w) -> (N,) mean absolute horizontal plus vertical difference."""
    return x.diff(dim=-1).abs().mean((-1, -2, -3)) + x.diff(dim=-2).abs().mean((-1, -2, -3))


@torch.inference_mode()
def refine_tiles(grey: Tensor, start: Tensor, grid: TileGrid, window: int = 256,
                 cfg: RefineConfig | None = None, flat: float = 0.5, disagree: float = 1.0) -> tuple[Tensor, dict]:
    """Per-tile kernels for ``deconvolve_tiles``: ``start`` ((B,k,k), the frame's refined kernel) refined again
    (``cfg``, default ``RefineConfig(levels=1, iters=3, tile=0, starts=(1.0,))``) on a ``window`` px square around each tile's
    centre (moved inside the frame). A tile keeps ``start`` where its window's gradient energy is below ``flat``
    times the frame's most textured window's, where the refinement fails, or where its kernel's shape error against
    ``start`` exceeds ``disagree`` (1 = never). Returns ((B, rows*cols, k, k), info: ``ok``, ``energy``,
    ``disagreement``, ``used`` (B, n) tensors)."""
    cfg = cfg or RefineConfig(levels=1, iters=3, tile=0, starts=(1.0,))
    b, _, h, w = grey.shape
    n = grid.rows * grid.cols
    k = start.shape[-1]
    wh, ww = min(window, h), min(window, w)
    crops = []
    for cx, cy in grid.centres(h, w):
        y0 = min(max(int(round(cy - wh / 2)), 0), h - wh)
        x0 = min(max(int(round(cx - ww / 2)), 0), w - ww)
        crops.append(grey[..., y0 : y0 + wh, x0 : x0 + ww])
    crops = torch.stack(crops, 1).flatten(0, 1)  # (B*n,1,wh,ww)
    starts = start[:, None].expand(b, n, k, k).reshape(b * n, k, k)
    refined, ok = refine_kernels(crops, starts, cfg)
    refined = resize_kernels(refined, k) if refined.shape[-1] != k else refined
    energy = _energy(crops).view(b, n)
    differ = shape_error(refined, starts).view(b, n)
    ok = ok.view(b, n)
    used = ok & (energy >= flat * energy.amax(1, keepdim=True)) & (differ <= disagree)
    kernels = torch.where(used[..., None, None], refined.view(b, n, k, k), start[:, None].expand(b, n, k, k))
    return kernels, {"ok": ok, "energy": energy, "disagreement": differ, "used": used}


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha1("|".join(map(str, parts)).encode()).digest()[:4], "little")


def draw_motion(shape: tuple[int, int], seed: int, max_angle: float, shift: tuple[float, float],
                step: float = 0.5, max_frames: int = 2048) -> CameraMotion:
    """``camera_motion`` with its translation path rescaled to span U(``shift``) px (its larger side) and enough
    frames that no pixel moves more than ``step`` px between two. The same seed gives the same path, centre and
    relative angle at every ``max_angle``."""
    rng = np.random.default_rng(seed)
    span = float(rng.uniform(*shift))
    m = camera_motion(shape, rng, max_angle_deg=max_angle, max_shift=1.0)
    ext = float(np.ptp(m.shifts, axis=0).max())
    shifts = m.shifts * (span / ext) if ext > 0 else m.shifts
    h, w = shape[:2]
    coarse = CameraMotion(m.angles, shifts, m.centre)
    fastest = max(float(np.hypot(*np.diff(coarse.displacements(x, y), axis=0).T).max())
                  for x, y in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)))
    n = int(np.clip(math.ceil(fastest * (m.n_frames - 1) / step) + 1, m.n_frames, max_frames))
    t0, t = np.linspace(0, 1, m.n_frames), np.linspace(0, 1, n)
    angles = np.interp(t, t0, m.angles)
    shifts = np.stack([np.interp(t, t0, shifts[:, 0]), np.interp(t, t0, shifts[:, 1])], 1)
    return CameraMotion(angles - angles.mean(), shifts - shifts.mean(0), m.centre)


def extent(motion: CameraMotion, x: float, y: float) -> float:
    """The blur's extent at (x, y): the largest distance between two points of its path, px."""
    d = motion.displacements(x, y)[::4]
    return float(np.sqrt(((d[:, None] - d[None]) ** 2).sum(-1)).max())


def regions(h: int, w: int) -> dict[str, np.ndarray]:
    """Boolean (H,W) masks: the whole frame, the centre ninth, the four corner ninths."""
    ys, xs = [round(i * h / 3) for i in range(4)], [round(i * w / 3) for i in range(4)]
    centre = np.zeros((h, w), bool)
    centre[ys[1]:ys[2], xs[1]:xs[2]] = True
    corners = np.zeros((h, w), bool)
    for r in (0, 2):
        for c in (0, 2):
            corners[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = True
    return {"frame": np.ones((h, w), bool), "centre": centre, "corners": corners}


def region_psnr(out: np.ndarray, sharp: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    err = ((out.astype(np.float64) - sharp) ** 2).mean(-1)
    return {r: float(10 * np.log10(1.0 / max(err[m].mean(), 1e-12))) for r, m in masks.items()}


def photos(args) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8) of the held-out photos at ``--side`` px and the vtest frames at 640x480."""
    cfg = load_config(TrainConfig, CONFIG_DIR / "deblur_train.yaml")
    held_out = SyntheticBlur(dataclasses.replace(getattr(cfg, args.split), preload=False), seed=cfg.seed)
    names = held_out.names[: args.limit] if args.limit else held_out.names
    out = []
    for i, name in enumerate(names):
        img = held_out.image(i)
        s = args.side / max(img.shape[:2])
        out.append((name, cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)),
                                     interpolation=cv2.INTER_AREA)))
    if args.vtest_step:
        for f in sorted(glob.glob(str(ROOT / "data/eval/vtest/*.jpg")))[:: args.vtest_step]:
            img = cv2.imread(f)[..., ::-1]
            out.append((Path(f).name, cv2.resize(img, (640, 480), interpolation=cv2.INTER_AREA)))
    return out


def _luma_deconv(x: torch.Tensor, grey: torch.Tensor, deconv_grey: torch.Tensor) -> np.ndarray:
    """KernelDeblurrer's luma path: the luma's change added to every channel, clamped -> (H,W,3) float."""
    return (x + (deconv_grey - grey)).clamp(0, 1)[0].permute(1, 2, 0).numpy()


def run_case(deblurrer: KernelDeblurrer, img: np.ndarray, motion: CameraMotion, seed: int, args,
             grid: TileGrid, tile_cfg: RefineConfig) -> dict:
    h, w = img.shape[:2]
    blurred, local = rotational_blur(img, motion=motion, linear=not args.srgb)
    blur = add_noise(blurred.astype(np.float32) / 255.0, 0.005, seed)
    sharp = img.astype(np.float32) / 255.0
    masks = regions(h, w)
    x = torch.from_numpy(blur).permute(2, 0, 1)[None].contiguous()
    grey = luma(x)
    centres = grid.centres(h, w)
    # the true kernels: at the frame's centre and at each tile's centre, on one canvas
    raw = [local((w - 1) / 2, (h - 1) / 2)] + [local(cx, cy) for cx, cy in centres]
    side = max(k.shape[0] for k in raw)
    true = torch.from_numpy(np.stack([fit_kernel(k, side) for k in raw]))
    corners = torch.from_numpy(np.stack([fit_kernel(local(cx, cy), side) for cx, cy in
                                         ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1))]))
    row = {"psnr": {"blurred": region_psnr(blur, sharp, masks)}, "ms": {},
           "spread": float(shape_error(corners, true[:1].expand(4, -1, -1)).mean()),
           "extent_centre": extent(motion, (w - 1) / 2, (h - 1) / 2),
           "extent_corners": max(extent(motion, cx, cy) for cx, cy in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1))),
           "angle": float(np.ptp(motion.angles))}
    with torch.inference_mode():
        out = wiener_deconvolve(grey, true[0], balance=BALANCE, center=True)
        row["psnr"]["oracle_global"] = region_psnr(_luma_deconv(x, grey, out), sharp, masks)
        out = deconvolve_tiles(grey, true[1:], grid, BALANCE, whole=args.whole)
        row["psnr"]["oracle_tiles"] = region_psnr(_luma_deconv(x, grey, out), sharp, masks)
        if args.from_truth:  # the per-tile refinement alone: started from the true centre kernel
            kt, _ = refine_tiles(grey, true[:1], grid, args.window, tile_cfg, args.flat, args.disagree)
            out = deconvolve_tiles(grey, kt[0], grid, BALANCE, whole=args.whole)
            row["psnr"]["tiles_from_truth"] = region_psnr(_luma_deconv(x, grey, out), sharp, masks)
            row["shape_from_truth"] = float(shape_error(kt[0], true[1:]).mean())
            row["shape_centre_truth"] = float(shape_error(true[:1].expand(len(centres), -1, -1), true[1:]).mean())
        if args.oracle_only:
            return row
        # today's path (KernelDeblurrer.restore, luma channel, no gate: every blur here is > 3 px)
        t0 = time.perf_counter()
        start = deblurrer.estimate(x)
        t1 = time.perf_counter()
        kernel, _ = refine_kernels(grey, start, deblurrer.cfg.refine)
        t2 = time.perf_counter()
        out = wiener_deconvolve(grey, kernel, balance=BALANCE, center=True)
        t3 = time.perf_counter()
        row["psnr"]["est_global"] = region_psnr(_luma_deconv(x, grey, out), sharp, masks)
        tiles, info = refine_tiles(grey, kernel, grid, args.window, tile_cfg, args.flat, args.disagree)
        t4 = time.perf_counter()
        out = deconvolve_tiles(grey, tiles[0], grid, BALANCE, whole=args.whole)
        t5 = time.perf_counter()
        row["psnr"]["est_tiles"] = region_psnr(_luma_deconv(x, grey, out), sharp, masks)
    row["ms"] = {"estimate": 1e3 * (t1 - t0), "refine": 1e3 * (t2 - t1), "wiener": 1e3 * (t3 - t2),
                 "tile_refine": 1e3 * (t4 - t3), "tile_wiener": 1e3 * (t5 - t4)}
    truth = true[1:]
    k = kernel.shape[-1]
    n = len(truth)
    row["shape"] = {  # shape error against the true kernels at the tile centres, mean over tiles
        "est_global": float(shape_error(kernel.expand(n, -1, -1), resize_kernels(truth, max(k, side))).mean()),
        "est_tiles": float(shape_error(tiles[0], resize_kernels(truth, max(k, side))).mean()),
        "oracle_global": float(shape_error(true[:1].expand(n, -1, -1), truth).mean())}
    row["shape_centre"] = float(shape_error(kernel, resize_kernels(true[:1], max(k, side)))[0])
    row["tiles_used"] = float(info["used"].float().mean())
    return row


OK_SHAPE = 0.15  # diagnostic only: a global estimate this close to the true centre kernel "succeeded"


def summarise(rs: list[dict], rng: np.random.Generator) -> dict:
    """One rotation strength's rows -> the report's entry (means, paired differences with 95 % intervals)."""
    methods = [m for m in METHODS if m in rs[0]["psnr"]]

    def gain(m, r, sel=None):
        return np.array([x["psnr"][m][r] - x["psnr"]["blurred"][r] for x in rs if sel is None or sel(x)])

    e = {"cases": len(rs),
         "angle_deg_mean": round(float(np.mean([x["angle"] for x in rs])), 3),
         "spread_corner_vs_centre": round(float(np.median([x["spread"] for x in rs])), 3),
         "extent_centre_px": round(float(np.median([x["extent_centre"] for x in rs])), 1),
         "extent_corners_px": round(float(np.median([x["extent_corners"] for x in rs])), 1),
         "gain_db": {m: {r: round(float(gain(m, r).mean()), 3) for r in REGIONS} for m in methods}}
    pairs = [("oracle_tiles", "oracle_global", "oracle_tiles_minus_global", None)]
    if "est_global" in methods:
        ok = lambda x: x["shape_centre"] < OK_SHAPE  # noqa: E731
        pairs += [("est_tiles", "est_global", "est_tiles_minus_global", None),
                  ("est_tiles", "est_global", "est_tiles_minus_global_where_est_ok", ok)]
        ms = {k: float(np.median([x["ms"][k] for x in rs])) for k in rs[0]["ms"]}
        shape = {m: round(float(np.mean([x["shape"][m] for x in rs])), 3) for m in rs[0]["shape"]}
        e.update(shape_error_vs_local=shape,
                 tiles_refined=round(float(np.mean([x["tiles_used"] for x in rs])), 3),
                 est_ok=sum(ok(x) for x in rs), ms_median={k: round(v, 1) for k, v in ms.items()},
                 ms_est_global=round(ms["estimate"] + ms["refine"] + ms["wiener"], 1),
                 ms_est_tiles=round(ms["estimate"] + ms["refine"] + ms["tile_refine"] + ms["tile_wiener"], 1))
    if "tiles_from_truth" in methods:
        pairs.append(("tiles_from_truth", "oracle_global", "tiles_from_truth_minus_oracle_global", None))
        e["shape_error_vs_local_from_truth"] = {
            "true_centre_kernel": round(float(np.mean([x["shape_centre_truth"] for x in rs])), 3),
            "tiles_refined_from_it": round(float(np.mean([x["shape_from_truth"] for x in rs])), 3)}
    for a, b, key, sel in pairs:
        d = {r: gain(a, r, sel) - gain(b, r, sel) for r in REGIONS}
        if len(d["frame"]):
            e[key] = {r: {"mean": round(float(v.mean()), 3), "ci95": paired_interval(v, rng, resamples=2000)} for r, v in d.items()}
    return e


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--angles", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0],
                   help="max rotation in the exposure, degrees (0 = pure translation: the control)")
    p.add_argument("--shift", type=float, nargs=2, default=[8.0, 25.0], help="translation path span range, px")
    p.add_argument("--limit", type=int, default=0, help="held-out photos (0 = all)")
    p.add_argument("--side", type=int, default=640)
    p.add_argument("--split", choices=("val", "train"), default="val")
    p.add_argument("--vtest-step", type=int, default=8, help="every N-th vtest frame too (0 = none)")
    p.add_argument("--grid", type=int, nargs=2, default=[3, 4], metavar=("ROWS", "COLS"))
    p.add_argument("--blend", type=int, default=0, help="TileGrid.blend (0 = a core's side)")
    p.add_argument("--margin", type=int, default=0, help="TileGrid.margin (0 = the kernel's side)")
    p.add_argument("--whole", action="store_true", help="deconvolve the whole frame per tile kernel (no windows)")
    p.add_argument("--window", type=int, default=256, help="per-tile refinement window, px")
    p.add_argument("--tile-levels", type=int, default=1)
    p.add_argument("--tile-iters", type=int, default=3)
    p.add_argument("--flat", type=float, default=0.5, help="a tile keeps the frame's kernel below this x the "
                                                           "most textured window's gradient energy")
    p.add_argument("--disagree", type=float, default=1.0, help="... or when its shape error against it is above")
    p.add_argument("--srgb", action="store_true", help="average the frames' stored (sRGB) values, not linear light "
                                                       "(the blur is then exactly linear in what is deconvolved)")
    p.add_argument("--oracle-only", action="store_true", help="skip the estimated kernels (est_global, est_tiles)")
    p.add_argument("--from-truth", action="store_true", help="also tiles_from_truth: the per-tile refinement started "
                                                             "from the true centre kernel (the per-tile step alone)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench_spatial.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    grid = TileGrid(*args.grid, blend=args.blend, margin=args.margin)
    tile_cfg = RefineConfig(levels=args.tile_levels, iters=args.tile_iters, tile=0, starts=(1.0,))  # warm, local
    deblurrer = KernelDeblurrer(device="cpu")
    pics = photos(args)
    if not pics:
        p.error("no photos: run `make data` first")
    rows: dict[float, list[dict]] = {a: [] for a in args.angles}
    for i, (name, img) in enumerate(pics):
        for a in args.angles:
            motion = draw_motion(img.shape, _seed(name, "motion"), a, tuple(args.shift))
            rows[a].append(run_case(deblurrer, img, motion, _seed(name, "noise", a), args, grid, tile_cfg))
        print(f"{i + 1}/{len(pics)} {name}", file=sys.stderr, flush=True)
    rng = np.random.default_rng(0)
    report = {"photos": len(pics), "side": args.side, "split": args.split, "vtest_step": args.vtest_step,
              "grid": dataclasses.asdict(grid), "whole": args.whole, "window": args.window,
              "tile_refine": dataclasses.asdict(tile_cfg), "flat": args.flat, "disagree": args.disagree,
              "threads": args.threads, "srgb": args.srgb, "from_truth": args.from_truth, "shift": args.shift,
              "angles": {}}
    for a, rs in rows.items():
        report["angles"][str(a)] = e = summarise(rs, rng)
        print(f"\nmax angle {a:g} deg (mean |angle| {e['angle_deg_mean']:.2f}): corner-vs-centre shape error "
              f"{e['spread_corner_vs_centre']:.3f}, extent centre {e['extent_centre_px']:.1f} px, corners "
              f"{e['extent_corners_px']:.1f} px ({e['cases']} photos)")
        print("  gain dB        " + "".join(f"{r:>9s}" for r in REGIONS))
        for m, g in e["gain_db"].items():
            print(f"  {m:14s} " + "".join(f"{g[r]:+9.2f}" for r in REGIONS))
        for key in ("oracle_tiles_minus_global", "est_tiles_minus_global", "est_tiles_minus_global_where_est_ok",
                    "tiles_from_truth_minus_oracle_global"):
            if key in e:
                print(f"  {key:27s} " + "  ".join(f"{r} {e[key][r]['mean']:+.3f} {e[key][r]['ci95']}" for r in REGIONS))
        if "shape_error_vs_local_from_truth" in e:
            print(f"  shape error vs the tiles' true kernels {e['shape_error_vs_local_from_truth']}")
        if "ms_median" in e:
            print(f"  shape error vs local {e['shape_error_vs_local']}  tiles refined {e['tiles_refined']:.2f}  "
                  f"global estimate ok (shape error < {OK_SHAPE}) {e['est_ok']}/{e['cases']}")
            print(f"  ms est_global {e['ms_est_global']:.0f} est_tiles {e['ms_est_tiles']:.0f} {e['ms_median']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
