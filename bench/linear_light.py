"""Does it matter that real blur happens in linear light? A probe, paired on the same frames.

A camera integrates light linearly during the exposure and applies its tone curve afterwards, while our
synthetic blur (``apply_kernel``, the evaluations' ImageNet-C and shake kernels) convolves the sRGB-encoded
values. Each frame here (vtest frames every 40th, and the training set's scikit-image photos, at 640 px) is blurred
by one smooth camera path (``deblur.data.blur_synth.camera_motion``, translation only, 8-25 px) both ways: averaged
in linear light (``render(linear=True)``) and convolved in sRGB, plus noise (sigma 0.005). Reported per blur: the
median shape error of the network's and the refined kernel against the path's kernel, and the mean Wiener PSNR
gain over the blurred frame with each kernel and with the true one (centred as the deblurrer deconvolves), refining
and deconvolving the values decoded by each of ``--gammas`` (1 = the stored sRGB values, the default deblurrer's;
2.2 = linear light; re-encoded after), with the refined kernel's paired difference against the first gamma.

    python bench/linear_light.py --frames 10
    python bench/linear_light.py --frames 16 --gammas 1 1.5 1.8 2.2
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deblur.data.blur_synth import add_noise, apply_kernel, camera_motion  # noqa: E402
from deblur.deconv import wiener_deconvolve  # noqa: E402
from deblur.kernel_deblur import KernelDeblurConfig, KernelDeblurrer, luma  # noqa: E402
from deblur.kernel_refine import RefineConfig, refine_kernels, shape_error  # noqa: E402
from deblur.metrics import psnr  # noqa: E402
from stats import paired_interval  # noqa: E402  (bench/stats.py, beside this script)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gammas", type=float, nargs="+", default=[1.0, 2.2],
                   help="decoding gammas to refine and deconvolve in (the first is the reference)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if len(set(args.gammas)) != len(args.gammas):
        p.error(f"--gammas: each gamma once, got {args.gammas}")
    for g in args.gammas:  # the range deblur.kernel.gamma takes
        try:
            KernelDeblurConfig(gamma=g)
        except ValueError as e:
            p.error(f"--gammas: {e}")
    paths = sorted(glob.glob(str(ROOT / "data/eval/vtest/*.jpg")))[::40][:6] + sorted(
        glob.glob(str(ROOT / "data/train/skimage/*.png")))
    paths = paths[: args.frames]
    if not paths:
        p.error("no frames: run `make data` first")
    deblurrer = KernelDeblurrer(device="cpu")
    rows: dict[tuple[str, float], list] = {}
    for i, path in enumerate(paths):
        img = cv2.imread(path)[..., ::-1]
        s = 640 / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        rng = np.random.default_rng(i)
        motion = camera_motion(img.shape[:2], rng, max_angle_deg=0.0, max_shift=float(rng.uniform(8, 25)))
        true = torch.from_numpy(motion.kernel(img.shape[1] // 2, img.shape[0] // 2))[None]
        sharp = img.astype(np.float32) / 255.0
        for blur in ("linear light", "sRGB"):
            b = motion.render(img, linear=True) if blur == "linear light" else apply_kernel(img, true[0].numpy())
            b = np.clip(add_noise(b.astype(np.float32) / 255.0, 0.005, i) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            base = psnr(b.astype(np.float32) / 255.0, sharp, data_range=1.0)
            x = torch.from_numpy(b.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
            network = deblurrer.estimate(x)
            for gamma in args.gammas:
                work = x ** gamma
                refined, _ = refine_kernels(luma(work), network, RefineConfig())
                gains = []
                for k in (network, refined, true):
                    out = (wiener_deconvolve(work, k, balance=1e-2, center=True).clamp(0, 1)) ** (1 / gamma)
                    gains.append(psnr(out[0].permute(1, 2, 0).numpy(), sharp, data_range=1.0) - base)
                rows.setdefault((blur, gamma), []).append(
                    [float(shape_error(network, true)[0]), float(shape_error(refined, true)[0]), *gains])
        print(f"{i + 1}/{len(paths)} {Path(path).name}", file=sys.stderr)
    rng = np.random.default_rng(0)
    print("| blur | gamma | shape error: network / refined | Wiener gain dB: network / refined / true kernel | "
          f"refined, vs gamma {args.gammas[0]:g}, dB |")
    print("|---|---|---|---|---|")
    for (blur, gamma), r in rows.items():
        a = np.array(r)
        d = a[:, 3] - np.array(rows[(blur, args.gammas[0])])[:, 3]
        print(f"| {blur} | {gamma:g} | {np.median(a[:, 0]):.3f} / {np.median(a[:, 1]):.3f} | "
              f"{a[:, 2].mean():+.2f} / {a[:, 3].mean():+.2f} / {a[:, 4].mean():+.2f} | "
              f"{d.mean():+.2f} {paired_interval(d, rng)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
