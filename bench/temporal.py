"""What helps on video? A clip whose blur drifts slowly, restored with the kernel-aware deblurrer under several
option sets (kernel smoothing ``temporal=a``, refinement ``refine.*`` and its video mode ``refine.every``), on
the very same blurred frames (paired).

Frames: the evaluation set's vtest frames (every 5th frame of opencv-doc's vtest.avi, in order). Frame i is
blurred by a centred linear kernel whose angle and length drift smoothly (camera motion is continuous):
angle = 30 + 25 sin(i / 9) degrees, length = 17 + 6 sin(i / 7) px, plus sensor noise (sigma 0.005). Reports
per setting the mean PSNR gain over the blurred frames (with a paired 95 % bootstrap interval against the first
setting), the median angle error and shape error (``deblur.kernel_refine.shape_error``) of the kernels used, and
the deblurrer's milliseconds per frame. Settings start from the library's defaults, whose full refinements run from
four starts on the whole frame up to 768 px; the pipeline's video mode runs one on a 256-px tile
(``refine.starts=[1] refine.tile=256``, as ``pipeline.config.PIPELINE_REFINE``).

    python bench/temporal.py --alphas 0 0.3 0.6 --frames 60   # kernel smoothing (with the default refinement)
    python bench/temporal.py --settings "refine.iters=0" "" "refine.every=8" --frames 60
    python bench/temporal.py --size 1280x720 --settings "refine.iters=0" "refine.every=8"   # the cost at 720p
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deblur.archs.kernel_arch import angle_error, kernel_moments, moment_angle  # noqa: E402
from configs import load_config  # noqa: E402
from deblur.data.blur_synth import add_noise, apply_kernel, linear_kernel  # noqa: E402
from deblur.kernel_deblur import KernelDeblurConfig, KernelDeblurrer  # noqa: E402
from deblur.kernel_refine import shape_error  # noqa: E402
from deblur.metrics import psnr  # noqa: E402
from stats import paired_interval  # noqa: E402  (bench/stats.py, beside this script)


def drift(i: int) -> tuple[float, float]:
    """(angle degrees, length px) of frame i's blur."""
    return 30.0 + 25.0 * math.sin(i / 9.0), 17.0 + 6.0 * math.sin(i / 7.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--alphas", type=float, nargs="+", default=None, help="shorthand for --settings temporal=A ...")
    p.add_argument("--settings", nargs="+", default=None, metavar="'KEY=VALUE ...'",
                   help="kernel-deblurrer option sets (deblur.kernel keys); the first is the reference")
    p.add_argument("--runtime", default="openvino", help="the estimator's runtime (the pipeline's default on CPUs)")
    p.add_argument("--weights", default=None, help="kernel estimator (default: the shipped one)")
    p.add_argument("--glob", default="data/eval/vtest/*.jpg")
    p.add_argument("--size", default="", metavar="WxH", help="resize the frames first (e.g. 640x360, 1280x720)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/bench_temporal.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = sorted(glob.glob(str(ROOT / args.glob)))[: args.frames]
    if not paths:
        p.error(f"no frames match {args.glob}; run `python scripts/fetch_data.py --what eval` first")
    sharp = [cv2.imread(q) for q in paths]
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            p.error(f"--size {args.size!r}: give WIDTHxHEIGHT, e.g. 640x360")
        sharp = [cv2.resize(s, (w, h), interpolation=cv2.INTER_AREA if w < s.shape[1] else cv2.INTER_CUBIC) for s in sharp]
    blurred, true_angles, kernels = [], [], []
    for i, img in enumerate(sharp):
        angle, length = drift(i)
        kernels.append(linear_kernel(length, angle))
        b = apply_kernel(img, kernels[-1])
        b = np.clip(add_noise(b.astype(np.float32) / 255.0, 0.005, i) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        blurred.append(b)
        true_angles.append(angle % 180.0)
    base = np.array([psnr(b, s) for b, s in zip(blurred, sharp)])
    settings = args.settings if args.settings is not None else [f"temporal={a}" for a in (args.alphas or [0.0, 0.3, 0.6])]
    gains, errors, shapes, ms = {}, {}, {}, {}
    for setting in settings:
        deblurrer = KernelDeblurrer(args.weights, device="cpu", runtime=args.runtime,
                                    cfg=load_config(KernelDeblurConfig, overrides=setting.split()))
        deblurrer.warmup(*blurred[0].shape[:2])
        out, errs, shp, secs = [], [], [], []
        for b, ang, k in zip(blurred, true_angles, kernels):
            t0 = time.perf_counter()
            out.append(deblurrer([b])[0])
            secs.append(time.perf_counter() - t0)
            est = deblurrer.last_kernels.float()
            errs.append(float(angle_error(moment_angle(kernel_moments(est)), torch.tensor([ang]))[0]))
            shp.append(float(shape_error(est, torch.from_numpy(k)[None])[0]))
        gains[setting] = np.array([psnr(o, s) for o, s in zip(out, sharp)]) - base
        errors[setting], shapes[setting], ms[setting] = float(np.median(errs)), float(np.median(shp)), 1000 * float(np.median(secs))
    rng = np.random.default_rng(0)
    ref = settings[0]
    rows = {}
    for a in settings:
        d = gains[a] - gains[ref]
        rows[a] = {"psnr_gain_db": round(float(gains[a].mean()), 3), "median_angle_error_deg": round(errors[a], 2),
                   "median_shape_error": round(shapes[a], 3), "ms_per_frame": round(ms[a], 1),
                   "vs_reference_db": round(float(d.mean()), 3),
                   "ci95": paired_interval(d, rng)}
        print(f"{a or 'defaults'!s:40s} PSNR gain {rows[a]['psnr_gain_db']:+.2f} dB, angle error {errors[a]:.1f} deg, "
              f"shape error {shapes[a]:.3f}, {ms[a]:.0f} ms/frame, vs {ref or 'defaults'}: "
              f"{rows[a]['vs_reference_db']:+.3f} dB [{rows[a]['ci95'][0]:+.3f}, {rows[a]['ci95'][1]:+.3f}]")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"frames": len(sharp), "size": f"{sharp[0].shape[1]}x{sharp[0].shape[0]}",
                                          "threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
