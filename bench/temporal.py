"""Does smoothing the kernel over consecutive frames help? A video whose blur drifts slowly, restored with
``KernelDeblurrer(temporal=a)`` for several ``a``, on the very same blurred frames (paired).

Frames: the evaluation set's vtest frames (every 5th frame of opencv-doc's vtest.avi, in order). Frame i is
blurred by a centred linear kernel whose angle and length drift smoothly (camera motion is continuous):
angle = 30 + 25 sin(i / 9) degrees, length = 17 + 6 sin(i / 7) px, plus sensor noise (sigma 0.005). Reports
per setting the mean PSNR gain over the blurred frames (with a paired 95 % bootstrap interval against a = 0)
and the median angle error of the kernels used.

    python bench/temporal.py --alphas 0 0.3 0.6 --frames 60
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deblur.archs.kernel_arch import angle_error, kernel_moments, moment_angle  # noqa: E402
from deblur.data.blur_synth import add_noise, apply_kernel, linear_kernel  # noqa: E402
from deblur.kernel_deblur import KernelDeblurrer  # noqa: E402
from deblur.metrics import psnr  # noqa: E402


def drift(i: int) -> tuple[float, float]:
    """(angle degrees, length px) of frame i's blur."""
    return 30.0 + 25.0 * math.sin(i / 9.0), 17.0 + 6.0 * math.sin(i / 7.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.3, 0.6])
    p.add_argument("--weights", default=None, help="kernel estimator (default: the shipped one)")
    p.add_argument("--glob", default="data/eval/vtest/*.jpg")
    p.add_argument("--out", default="runs/bench_temporal.json")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    paths = sorted(glob.glob(str(ROOT / args.glob)))[: args.frames]
    if not paths:
        p.error(f"no frames match {args.glob}; run `python scripts/fetch_data.py --what eval` first")
    sharp = [cv2.imread(q) for q in paths]
    blurred, true_angles = [], []
    for i, img in enumerate(sharp):
        angle, length = drift(i)
        b = apply_kernel(img, linear_kernel(length, angle))
        b = np.clip(add_noise(b.astype(np.float32) / 255.0, 0.005, i) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        blurred.append(b)
        true_angles.append(angle % 180.0)
    base = np.array([psnr(b, s) for b, s in zip(blurred, sharp)])
    gains, errors = {}, {}
    for a in args.alphas:
        deblurrer = KernelDeblurrer(args.weights, device="cpu", temporal=a)
        out, errs = [], []
        for b, ang in zip(blurred, true_angles):
            out.append(deblurrer([b])[0])
            est = moment_angle(kernel_moments(deblurrer.last_kernels))
            errs.append(float(angle_error(est, torch.tensor([ang]))[0]))
        gains[a] = np.array([psnr(o, s) for o, s in zip(out, sharp)]) - base
        errors[a] = float(np.median(errs))
    rng = np.random.default_rng(0)
    ref = args.alphas[0]
    rows = {}
    for a in args.alphas:
        d = gains[a] - gains[ref]
        boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(1000)]
        rows[a] = {"psnr_gain_db": round(float(gains[a].mean()), 3), "median_angle_error_deg": round(errors[a], 2),
                   f"vs_{ref}_db": round(float(d.mean()), 3),
                   "ci95": [round(float(np.percentile(boots, 2.5)), 3), round(float(np.percentile(boots, 97.5)), 3)]}
        print(f"temporal={a}: PSNR gain {rows[a]['psnr_gain_db']:+.2f} dB, median angle error {errors[a]:.1f} deg, "
              f"vs {ref}: {rows[a][f'vs_{ref}_db']:+.3f} dB [{rows[a]['ci95'][0]:+.3f}, {rows[a]['ci95'][1]:+.3f}]")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"frames": len(sharp), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
