"""Does it matter that real blur happens in linear light? A probe, paired on the same frames.

A camera integrates light linearly during the exposure and applies its tone curve afterwards, while our
synthetic blur (``apply_kernel``, the evaluations' ImageNet-C and shake kernels) convolves the sRGB-encoded
values. Each frame here (vtest frames every 40th, and the training set's scikit-image photos, at 640 px) is blurred
by one smooth camera path (``deblur.data.blur_synth.camera_motion``, translation only, 8-25 px) both ways: averaged
in linear light (``render(linear=True)``) and convolved in sRGB, plus noise (sigma 0.005). Reported per blur: the
median shape error of the network's and the refined kernel against the path's kernel, and the mean Wiener PSNR
gain over the blurred frame with each kernel and with the true one, deconvolving the sRGB values (today) or the
linearised ones (gamma 2.2, re-encoded after).

    python bench/linear_light.py --frames 10
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
from deblur.kernel_deblur import KernelDeblurrer, luma  # noqa: E402
from deblur.kernel_refine import RefineConfig, refine_kernels, shape_error  # noqa: E402
from deblur.metrics import psnr  # noqa: E402

GAMMA = 2.2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = sorted(glob.glob(str(ROOT / "data/eval/vtest/*.jpg")))[::40][:6] + sorted(
        glob.glob(str(ROOT / "data/train/skimage/*.png")))
    paths = paths[: args.frames]
    if not paths:
        p.error("no frames: run `make data` first")
    deblurrer = KernelDeblurrer(device="cpu")
    rows: dict[tuple[str, str], list] = {}
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
            for domain in ("sRGB", "linear"):
                work = x if domain == "sRGB" else x ** GAMMA
                refined, _ = refine_kernels(luma(work), network, RefineConfig())
                gains = []
                for k in (network, refined, true):
                    out = wiener_deconvolve(work, k, balance=1e-2).clamp(0, 1)
                    out = out if domain == "sRGB" else out ** (1 / GAMMA)
                    gains.append(psnr(out[0].permute(1, 2, 0).numpy(), sharp, data_range=1.0) - base)
                rows.setdefault((blur, domain), []).append(
                    [float(shape_error(network, true)[0]), float(shape_error(refined, true)[0]), *gains])
        print(f"{i + 1}/{len(paths)} {Path(path).name}", file=sys.stderr)
    print("| blur | deconvolved in | shape error: network / refined | Wiener gain dB: network / refined / true kernel |")
    print("|---|---|---|---|")
    for (blur, domain), r in rows.items():
        a = np.array(r)
        print(f"| {blur} | {domain} | {np.median(a[:, 0]):.3f} / {np.median(a[:, 1]):.3f} | "
              f"{a[:, 2].mean():+.2f} / {a[:, 3].mean():+.2f} / {a[:, 4].mean():+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
