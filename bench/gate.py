"""Does the blur gate call real blur sharp? The kernel-aware deblurrer passes a frame through untouched when
its estimated kernel is shorter than ``gate_px``; this counts its decisions on the evaluation frames:

- sharp (no blur): passing through is right;
- centred ImageNet-C and camera shake at severities 1 and 2 (light blur): passing through loses detection;
- synthetic low-light frames: the frame darkened to 15 %, a few saturated point lights added, blurred in
  linear light and clipped (as night streaks are), sensor noise (sigma 0.01) and JPEG 85; "low light, sharp"
  is the same transform without blur (passing through is right).

    python bench/gate.py [--limit N] [--out runs/bench_gate.json]
    python bench/gate.py --limit 12 --kernels   # also: does the refinement help on night frames? (it does not) [--dark-luma X]

``--dark-luma 0`` turns the deblurrer's dark-frame tile handling off (KernelDeblurConfig.dark_luma).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deblur.data.blur_synth import add_noise, apply_kernel, imagenet_c_kernel, jpeg, shake_kernel  # noqa: E402
from deblur.archs.kernel_arch import kernel_extent, kernel_moments  # noqa: E402
from deblur.kernel_deblur import KernelDeblurrer, luma  # noqa: E402
from deblur.kernel_refine import RefineConfig, refine_kernels, shape_error  # noqa: E402


def _seed(name: str, what: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{name}|{what}".encode()).digest()[:4], "little")


def low_light(img_bgr: np.ndarray, kernel: np.ndarray, seed: int) -> np.ndarray:
    """Dark frame with saturated point lights, blurred in linear light, clipped, noisy, JPEG."""
    rng = np.random.default_rng(seed)
    lin = (img_bgr.astype(np.float32) / 255.0) ** 2.2 * 0.15 ** 2.2
    h, w = lin.shape[:2]
    for _ in range(int(rng.integers(3, 9))):  # lamps, headlights: far brighter than white
        y, x, r = int(rng.integers(0, h)), int(rng.integers(0, w)), int(rng.integers(2, 6))
        cv2.circle(lin, (x, y), r, (8.0, 8.0, 8.0), -1)
    k = kernel.astype(np.float32)
    blurred = np.clip(cv2.filter2D(lin, -1, k[::-1, ::-1], borderType=cv2.BORDER_REFLECT), 0.0, 1.0) ** (1 / 2.2)
    noisy = np.clip(add_noise(blurred, 0.01, seed) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return jpeg(noisy, 85)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=0, help="only every k-th frame, so that N are used (0 = all)")
    p.add_argument("--glob", nargs="+", default=["data/eval/vtest/*.jpg", "data/eval/photos/*.jpg"])
    p.add_argument("--out", default="runs/bench_gate.json")
    p.add_argument("--dark-luma", type=float, default=None, help="KernelDeblurConfig.dark_luma (default: its default)")
    p.add_argument("--kernels", action="store_true",
                   help="also: on the blurred low-light frames, the network's and the refined kernel against the true "
                        "one (median extent, mean shape error)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    paths = sorted(q for g in args.glob for q in glob.glob(str(ROOT / g)))
    if args.limit:
        paths = paths[:: max(1, len(paths) // args.limit)][: args.limit]
    if not paths:
        p.error(f"no frames match {args.glob}; run `python scripts/fetch_data.py --what eval` first")
    options = {} if args.dark_luma is None else {"dark_luma": args.dark_luma}
    deblurrer = KernelDeblurrer(device="cpu", runtime="openvino", refine=RefineConfig(iters=0), **options)  # the gate only
    conditions = {
        "sharp": lambda img, n: img,
        "imagenet_c 1": lambda img, n: apply_kernel(img, imagenet_c_kernel(1, _seed(n, "a1") % 180, centered=True)),
        "imagenet_c 2": lambda img, n: apply_kernel(img, imagenet_c_kernel(2, _seed(n, "a2") % 180, centered=True)),
        "shake 1": lambda img, n: apply_kernel(img, shake_kernel(1, _seed(n, "s1"))),
        "shake 2": lambda img, n: apply_kernel(img, shake_kernel(2, _seed(n, "s2"))),
        "low light, sharp": lambda img, n: low_light(img, np.ones((1, 1), np.float32), _seed(n, "ln")),
        "low light, shake 2": lambda img, n: low_light(img, shake_kernel(2, _seed(n, "l2")), _seed(n, "ln")),
        "low light, shake 4": lambda img, n: low_light(img, shake_kernel(4, _seed(n, "l4")), _seed(n, "ln")),
    }
    passed = {c: 0 for c in conditions}
    night = {"network": [], "refined": [], "true": []}  # --kernels: (extent px, shape error) per blurred night frame
    for path in paths:
        img = cv2.imread(path)
        for cond, make in conditions.items():
            frame = make(img, Path(path).name)
            deblurrer([frame])
            passed[cond] += int(deblurrer.last_gated[0])
            if args.kernels and cond.startswith("low light, shake"):
                sev, n = int(cond[-1]), Path(path).name
                true = torch.from_numpy(shake_kernel(sev, _seed(n, f"l{sev}")))[None]
                x = torch.from_numpy(frame[..., ::-1].astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
                net = deblurrer.estimate(x)
                refined, _ = refine_kernels(luma(x), net, RefineConfig())
                for name, k in (("network", net), ("refined", refined), ("true", true)):
                    night[name].append((float(kernel_extent(kernel_moments(k))[0]), float(shape_error(k, true)[0])))
    rows = {c: {"frames": len(paths), "passed_through": n, "fraction": round(n / len(paths), 3)} for c, n in passed.items()}
    print(f"gate_px {deblurrer.cfg.gate_px}, dark_luma {deblurrer.cfg.dark_luma}: frames passed through "
          f"untouched (called sharp), of {len(paths)}")
    for c, r in rows.items():
        print(f"  {c:22s} {r['passed_through']:4d}  ({100 * r['fraction']:.0f} %)")
    if args.kernels:
        for name, r in night.items():
            a = np.array(r)
            print(f"  night kernels, {name:8s} median extent {np.median(a[:, 0]):5.1f} px, mean shape error {a[:, 1].mean():.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"gate_px": deblurrer.cfg.gate_px,
                                           "dark_luma": deblurrer.cfg.dark_luma, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
