"""Held-out deblurring quality: PSNR/SSIM of blurred input, our model, unsharp masking and Wiener (true kernel).

The held-out images are the ``val`` split of the training config (``bounds`` [0.9, 1.0] of a hash of each
name, never seen in training), shrunk to ``val.preload_size``. Each image is blurred with fixed seeds by
camera-shake trajectories (``shake_kernel``) and by centred ImageNet-C motion kernels at severities 1-5.
Metrics skip a border of the kernel's size (every method alike) so that edge handling does not decide them.

    python -m deblur.evaluate --weights deblur/weights/fpn_mobilenet_v2.pt --out runs/deblur_eval
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from configs import CONFIG_DIR, load_config
from deblur.baselines import unsharp, wiener
from deblur.blur_synth import apply_kernel, imagenet_c_kernel, shake_kernel
from deblur.config import TrainConfig
from deblur.dataset import SyntheticBlur
from deblur.metrics import psnr, ssim
from deblur.predict import Deblurrer

logger = logging.getLogger(__name__)

FAMILIES = ("shake", "imagenet_c")
METHODS = ("blurred", "deblurred", "unsharp", "wiener")


def _seed(name: str, family: str, severity: int) -> int:
    return int.from_bytes(hashlib.sha1(f"{name}|{family}|{severity}".encode()).digest()[:4], "little")


def make_kernel(name: str, family: str, severity: int) -> np.ndarray:
    """The fixed kernel for one held-out image, family and severity."""
    seed = _seed(name, family, severity)
    if family == "shake":
        return shake_kernel(severity, seed)
    angle = float(np.random.default_rng(seed).uniform(-45, 45))
    return imagenet_c_kernel(severity, angle, centered=True)


def evaluate(deblurrer: Deblurrer, cfg: TrainConfig, severities=(1, 2, 3, 4, 5), families=FAMILIES,
             limit: int = 0) -> dict:
    """Every method on every held-out image x family x severity -> nested dict of mean PSNR/SSIM."""
    held_out = SyntheticBlur(dataclasses.replace(cfg.val, preload=False), seed=cfg.seed)
    names = held_out.names[:limit] if limit else held_out.names
    rows: dict[str, dict[str, dict[str, list[float]]]] = {}
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        sharp = held_out.image(i)
        short = cfg.val.preload_size
        if short and min(sharp.shape[:2]) > short:
            import cv2

            s = short / min(sharp.shape[:2])
            sharp = cv2.resize(sharp, (round(sharp.shape[1] * s), round(sharp.shape[0] * s)), interpolation=cv2.INTER_AREA)
        for family in families:
            for sev in severities:
                kernel = make_kernel(name, family, sev)
                blurred = apply_kernel(sharp, kernel)
                restored_bgr = deblurrer([blurred[..., ::-1].copy()])[0]
                outputs = {
                    "blurred": blurred,
                    "deblurred": restored_bgr[..., ::-1],
                    "unsharp": unsharp(blurred),
                    "wiener": wiener(blurred, kernel),  # balance 0.002, as eval_detection
                }
                b = kernel.shape[0]
                crop = (slice(b, -b), slice(b, -b))
                key = f"{family}/{sev}"
                for method, out in outputs.items():
                    cell = rows.setdefault(key, {}).setdefault(method, {"psnr": [], "ssim": []})
                    cell["psnr"].append(psnr(out[crop], sharp[crop]))
                    cell["ssim"].append(ssim(out[crop], sharp[crop]))
        logger.info("%d/%d %s (%.0f s)", i + 1, len(names), name, time.perf_counter() - t0)
    table = {
        key: {m: {k: float(np.mean(v)) for k, v in cell.items()} for m, cell in methods.items()}
        for key, methods in rows.items()
    }
    for fam in families:  # the mean over severities of each family, and of everything
        table[f"{fam}/mean"] = _mean([table[f"{fam}/{s}"] for s in severities])
    table["all/mean"] = _mean([table[f"{f}/{s}"] for f in families for s in severities])
    return {"images": list(names), "severities": list(severities), "families": list(families), "table": table}


def _mean(cells: list[dict]) -> dict:
    return {m: {k: float(np.mean([c[m][k] for c in cells])) for k in ("psnr", "ssim")} for m in METHODS}


def to_markdown(result: dict) -> str:
    lines = [
        "| blur | severity | blurred PSNR / SSIM | **ours** | gain (dB) | unsharp | Wiener (true kernel) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, cell in result["table"].items():
        family, sev = key.split("/")
        f = {m: f"{cell[m]['psnr']:.2f} / {cell[m]['ssim']:.3f}" for m in METHODS}
        gain = cell["deblurred"]["psnr"] - cell["blurred"]["psnr"]
        lines.append(f"| {family} | {sev} | {f['blurred']} | **{f['deblurred']}** | {gain:+.2f} | {f['unsharp']} | {f['wiener']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="exported generator (default: the shipped weights)")
    parser.add_argument("--config", default=str(CONFIG_DIR / "deblur_train.yaml"), help="its val split is the held-out set")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--limit", type=int, default=0, help="only the first N held-out images")
    parser.add_argument("--out", default="runs/deblur_eval", help="folder for report.md and report.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    cfg = load_config(TrainConfig, args.config)
    deblurrer = Deblurrer(args.weights, device=args.device)
    result = evaluate(deblurrer, cfg, tuple(args.severities), limit=args.limit)
    result["weights"] = str(args.weights or "default")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(result)
    for name, text in (("report.md", md + "\n"), ("report.json", json.dumps(result, indent=2))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
