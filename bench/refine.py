"""Which kernel-refinement settings are worth their cost? Paired on the same blurred photos, starting from the same
network kernels.

The photos are the training config's held-out ``val`` split (``--split train``: its training photos; never the
detection evaluation images), shrunk to ``--side`` px on the long side. Each is blurred by three families at
severities 2-4 (the shake and ImageNet-C kernels of ``python -m deblur.evaluate``, plus a random camera
trajectory; ``--large``: camera paths and straight lines of 45-81 px), with sensor noise (``--noise``, sigma 0.005). The
shipped estimator's kernel is computed once per blurred photo; every ``--settings`` entry (``refine.*`` keys)
then refines it. Reported per setting: the median kernel shape error against the true kernel
(``deblur.kernel_refine.shape_error``), the mean Wiener PSNR gain over the blurred photo with that kernel (centred to a
fraction of a pixel, as the deblurrer deconvolves: ``deblur.kernel.center``), the
paired difference of both against the first setting (95 % bootstrap interval), and milliseconds per refinement;
then the Wiener PSNR gain with the true kernel (the same balance): what an exact refinement would give.

``--start-blur SIGMA`` starts every refinement from the true kernel blurred by a Gaussian of SIGMA px instead of the
network's: how good a start has to be (sigma 2 gives a blob with the true footprint, shape error ~0.25).

    python bench/refine.py --settings "" "fine_iters=5" "levels=2" --limit 20
    python bench/refine.py --settings "starts=[1]" "" --limit 10   # one refinement start against the default four
    python bench/refine.py --start-blur 2 --settings "levels=1 iters=3 starts=[1]" "starts=[1]" --limit 6
    python bench/refine.py --large --side 1280 --families trajectory linear --settings "size=41" "" "tile=384"
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from configs import CONFIG_DIR, load_config  # noqa: E402
from deblur.config import TrainConfig  # noqa: E402
from deblur.data.blur_synth import add_noise, apply_kernel, linear_kernel, trajectory_kernel  # noqa: E402
from deblur.data.dataset import SyntheticBlur  # noqa: E402
from deblur.deconv import wiener_deconvolve  # noqa: E402
from deblur.evaluate import make_kernel  # noqa: E402
from deblur.kernel_deblur import KernelDeblurrer, luma  # noqa: E402
from deblur.kernel_refine import RefineConfig, odd_side, refine_kernels, resize_kernels, shape_error  # noqa: E402
from deblur.metrics import psnr  # noqa: E402
from stats import paired_interval  # noqa: E402  (bench/stats.py, beside this script)

FAMILIES = ("shake", "imagenet_c", "trajectory", "linear")
LARGE = {2: 45, 3: 63, 4: 81}  # --large: the blur's extent (px) at each severity


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha1("|".join(map(str, parts)).encode()).digest()[:4], "little")


def true_kernel(name: str, family: str, severity: int, large: bool = False) -> np.ndarray:
    """The blur of one photo: severities 2/3/4 are camera paths of 10/17/24 px, straight lines of 11/19/27 px, or
    the kernels of ``python -m deblur.evaluate``; with ``large``, paths and lines of 45/63/81 px."""
    seed = _seed(name, family, severity)
    if family == "trajectory":
        length = LARGE[severity] if large else 3.0 + 7.0 * (severity - 1)
        return trajectory_kernel(odd_side(length + 2), 1.0, seed, max_len=length)
    if family == "linear":
        length = LARGE[severity] if large else 3.0 + 8.0 * (severity - 1)
        return linear_kernel(length, float(np.random.default_rng(seed).uniform(0, 180)))
    if large:
        raise ValueError(f"--large: family {family!r} has no large form; use --families trajectory linear")
    return make_kernel(name, family, severity)


def _blurred(kernels: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B,k,k) kernels convolved with a Gaussian of ``sigma`` px (cut at 3 sigma), renormalised (0 = as they are)."""
    if sigma <= 0:
        return kernels
    r = int(3 * sigma) + 1
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-t * t / (2 * sigma * sigma))
    g = (g / g.sum())[None, None]
    x = torch.nn.functional.pad(kernels[:, None], (r, r, r, r))
    x = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, g[..., None, :]), g[..., :, None])[:, 0]
    return x / x.sum((-1, -2), keepdim=True)


def refine_setting(text: str) -> RefineConfig:
    """'fine_iters=5 tile=192' (the refine.* keys, without the prefix) -> RefineConfig."""
    return load_config(RefineConfig, overrides=text.split())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=[""], metavar="'KEY=VALUE ...'",
                   help="refine.* option sets without the 'refine.' prefix; the first is the reference ('' = defaults)")
    p.add_argument("--limit", type=int, default=20, help="photos, evenly spread over the split (0 = all)")
    p.add_argument("--side", type=int, default=640, help="long side of the photos, px")
    p.add_argument("--severities", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--families", nargs="+", default=["shake", "imagenet_c", "trajectory"], choices=FAMILIES)
    p.add_argument("--large", action="store_true", help="blur of 45-81 px (trajectory and linear; use --side 1280)")
    p.add_argument("--split", choices=("val", "train"), default="val",
                   help="the training config's held-out photos, or its training photos (more of them; the refinement "
                        "learns nothing)")
    p.add_argument("--noise", type=float, default=0.005, help="sigma of the Gaussian sensor noise (0 = none, as the "
                   "detection evaluation's blur)")
    p.add_argument("--start-blur", type=float, default=None, metavar="SIGMA",
                   help="start from the true kernel blurred by a Gaussian of SIGMA px (0 = the true kernel itself), "
                        "not from the network's")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/bench_refine.json")
    args = p.parse_args(argv)
    if args.large and args.start_blur is not None:
        p.error("--start-blur works on the network's 41-px canvas: leave out --large")
    try:
        settings = {s: refine_setting(s) for s in args.settings}
    except (ValueError, TypeError) as e:
        p.error(f"--settings: {e}")
    torch.set_num_threads(args.threads)
    cfg = load_config(TrainConfig, CONFIG_DIR / "deblur_train.yaml")
    held_out = SyntheticBlur(dataclasses.replace(getattr(cfg, args.split), preload=False), seed=cfg.seed)
    names = held_out.names
    if args.limit and args.limit < len(names):  # evenly spread (the training photos are sorted by source)
        names = [names[i * len(names) // args.limit] for i in range(args.limit)]
    if not names:
        p.error("no held-out photos: run `make data` first")
    deblurrer = KernelDeblurrer(device="cpu")
    shape = {s: [] for s in settings}
    gain = {s: [] for s in settings}
    ms = {s: [] for s in settings}
    keys = []
    oracle = []  # the Wiener gain with the true kernel, at the same balance
    for i, name in enumerate(names):
        img = held_out.image(i)
        scale = args.side / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        for family in args.families:
            for sev in args.severities:
                try:
                    k = true_kernel(name, family, sev, args.large)
                except ValueError as e:
                    p.error(str(e))
                blur = apply_kernel(img, k).astype(np.float32) / 255.0
                if args.noise > 0:
                    blur = add_noise(blur, args.noise, _seed(name, "noise", family, sev))
                x = torch.from_numpy(blur).permute(2, 0, 1)[None].contiguous()
                grey = luma(x)
                start = deblurrer.estimate(x)
                truth = torch.from_numpy(k)[None]
                if args.start_blur is not None:
                    start = _blurred(resize_kernels(truth.float(), start.shape[-1]), args.start_blur)
                base = psnr(x[0].permute(1, 2, 0).numpy(), img.astype(np.float32) / 255.0, data_range=1.0)
                keys.append(f"{name}|{family}|{sev}")
                with torch.inference_mode():
                    out = wiener_deconvolve(x, truth.float(), balance=1e-2, center=True).clamp(0, 1)
                sharp = img.astype(np.float32) / 255.0
                oracle.append(psnr(out[0].permute(1, 2, 0).numpy(), sharp, data_range=1.0) - base)
                for s, rc in settings.items():
                    t0 = time.perf_counter()
                    kernel, _ = refine_kernels(grey, start, rc)
                    ms[s].append(1000 * (time.perf_counter() - t0))
                    shape[s].append(float(shape_error(kernel, truth)[0]))
                    with torch.inference_mode():
                        out = wiener_deconvolve(x, kernel, balance=1e-2, center=True).clamp(0, 1)
                    gain[s].append(psnr(out[0].permute(1, 2, 0).numpy(), img.astype(np.float32) / 255.0, data_range=1.0)
                                   - base)
        print(f"{i + 1}/{len(names)} {name}", file=sys.stderr)
    rng = np.random.default_rng(0)
    ref = args.settings[0]
    rows = {}
    for s in settings:
        ds, dg = np.array(shape[s]) - np.array(shape[ref]), np.array(gain[s]) - np.array(gain[ref])
        fam = {f: round(float(np.median([v for v, key in zip(shape[s], keys) if f"|{f}|" in key])), 3)
               for f in args.families}
        rows[s or "defaults"] = {
            "shape_error_median": round(float(np.median(shape[s])), 4), "shape_error_by_family": fam,
            "psnr_gain_db": round(float(np.mean(gain[s])), 3), "ms_median": round(float(np.median(ms[s])), 1),
            "vs_reference_shape": round(float(ds.mean()), 4), "vs_reference_shape_ci95": paired_interval(ds, rng, digits=4),
            "vs_reference_db": round(float(dg.mean()), 3), "vs_reference_db_ci95": paired_interval(dg, rng, digits=4)}
        r = rows[s or "defaults"]
        print(f"{s or 'defaults':36s} shape {r['shape_error_median']:.3f} {fam}  PSNR gain {r['psnr_gain_db']:+.2f} dB  "
              f"{r['ms_median']:.0f} ms | vs {ref or 'defaults'}: shape {r['vs_reference_shape']:+.4f} "
              f"{r['vs_reference_shape_ci95']}, {r['vs_reference_db']:+.3f} dB {r['vs_reference_db_ci95']}")
    print(f"{'true kernel':36s} PSNR gain {np.mean(oracle):+.2f} dB")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"photos": len(names), "cases": len(keys), "side": args.side,
                                          "threads": args.threads, "rows": rows,
                                          "true_kernel_psnr_gain_db": round(float(np.mean(oracle)), 3)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
