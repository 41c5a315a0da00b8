"""Angle and length of the kernels on straight-line blur, network against refined, on whole held-out photos.

The held-out photos are ``python -m deblur.evaluate``'s (the val split of configs/deblur_train.yaml), shrunk so
the long side is 640 px. Each is blurred by ``--per-image`` centred linear kernels, 9-35 px long at any angle
(seeded). For the network's kernel (``refine.iters=0``) and the refined one (the default) it reports the median
and 90th percentile of the angle error, and the median relative length error (kernel moments, as the kernel
trainer's validation measures them).

    python bench/kernel_linear.py [--per-image 6] [--out runs/bench_kernel_linear.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from configs import CONFIG_DIR, load_config  # noqa: E402
from deblur.archs.kernel_arch import angle_error, kernel_extent, kernel_moments, moment_angle  # noqa: E402
from deblur.config import TrainConfig  # noqa: E402
from deblur.data.blur_synth import apply_kernel, linear_kernel  # noqa: E402
from deblur.data.dataset import SyntheticBlur  # noqa: E402
from deblur.kernel_deblur import KernelDeblurrer, luma  # noqa: E402
from deblur.kernel_refine import RefineConfig, refine_kernels, resize_kernels  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-image", type=int, default=6, help="linear kernels per held-out photo")
    p.add_argument("--long-side", type=int, default=640)
    p.add_argument("--out", default="runs/bench_kernel_linear.json")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    cfg = load_config(TrainConfig, CONFIG_DIR / "deblur_train.yaml")
    held_out = SyntheticBlur(dataclasses.replace(cfg.val, preload=False), seed=cfg.seed)
    deblurrer = KernelDeblurrer(device="cpu", runtime="openvino", refine=RefineConfig(iters=0))
    rng = np.random.default_rng(7)
    errors = {"network": ([], []), "refined": ([], [])}
    for i in range(len(held_out.names)):
        img = held_out.image(i)
        s = args.long_side / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        for _ in range(args.per_image):
            kernel = linear_kernel(float(rng.uniform(9, 35)), float(rng.uniform(0, 180)))
            x = torch.from_numpy(np.ascontiguousarray(apply_kernel(img, kernel))).permute(2, 0, 1)[None].float() / 255
            network = deblurrer.estimate(x)
            refined, _ = refine_kernels(luma(x), network, RefineConfig())
            true = kernel_moments(resize_kernels(torch.from_numpy(kernel)[None].float(), network.shape[-1]))
            length = float(kernel_extent(true)[0])
            for name, estimate in (("network", network), ("refined", refined)):
                m = kernel_moments(estimate)
                errors[name][0].append(float(angle_error(moment_angle(m), moment_angle(true))[0]))
                errors[name][1].append(abs(float(kernel_extent(m)[0]) - length) / length)
    rows = {}
    for name, (angle, length) in errors.items():
        rows[name] = {"kernels": len(angle), "angle_median_deg": round(float(np.median(angle)), 2),
                      "angle_p90_deg": round(float(np.percentile(angle, 90)), 2),
                      "length_error_median": round(float(np.median(length)), 3)}
        r = rows[name]
        print(f"{name:8s} {r['kernels']} kernels: angle error median {r['angle_median_deg']:.1f} deg, "
              f"p90 {r['angle_p90_deg']:.1f} deg; length error median {100 * r['length_error_median']:.0f} %")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
