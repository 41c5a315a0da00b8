"""Held-out deblurring quality: PSNR/SSIM of blurred input, our models, unsharp masking and Wiener (true kernel).

The held-out images are the ``val`` split of the training config (``bounds`` [0.9, 1.0] of a hash of each
name, never seen in training), shrunk to ``val.preload_size``. Each image is blurred with fixed seeds by
camera-shake trajectories (``shake_kernel``) and by centred ImageNet-C motion kernels at severities 1-5,
optionally followed by sensor noise (``--noise SIGMA``) and JPEG (``--jpeg QUALITY``). Metrics skip a border
of the kernel's size (every method alike) so that edge handling does not decide them.

Each ``--weights`` file (a generator or a kernel estimator) is a column of its own, on the very same blurred
images, so the columns compare paired:

    python -m deblur.evaluate --weights deblur/weights/kernel_estimator.pt deblur/weights/fpn_mobilenet_v2.pt

``--options 'refine.iters=10'`` adds a column per estimator file with those kernel-deblurrer options. For every
kernel-aware column a second table gives the kernel's shape error against the true kernel (``shape_error``: 1 -
normalised cross-correlation at the best shift; a diffuse blob for a thin curved path cannot pass it).

``--kernels`` reports the estimator's own accuracy instead: median angle error on linear and ImageNet-C kernels
at least 9 px long, relative length error, kernel error on camera shake, on held-out 128 px crops (the
estimator config's val split), clean and with sensor noise + JPEG:

    python -m deblur.evaluate --kernels --weights deblur/weights/kernel_estimator.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from configs import CONFIG_DIR, load_config
from configs.loader import ConfigError
from deblur.baselines import unsharp
from deblur.data.blur_synth import add_noise, apply_kernel, imagenet_c_kernel, jpeg, shake_kernel
from deblur.config import TrainConfig
from deblur.data.dataset import SyntheticBlur
from deblur.deconv import deconvolve_uint8
from deblur.kernel_deblur import KernelDeblurConfig
from deblur.kernel_refine import shape_error
from deblur.metrics import psnr, ssim
from deblur.models import DEFAULT_DEBLURRER
from deblur.predict import load_deblurrer
from runtime.files import atomic_write_text

logger = logging.getLogger(__name__)

FAMILIES = ("shake", "imagenet_c")
BASELINES = ("unsharp", "wiener")


def _seed(name: str, family: str, severity: int) -> int:
    return int.from_bytes(hashlib.sha1(f"{name}|{family}|{severity}".encode()).digest()[:4], "little")


def make_kernel(name: str, family: str, severity: int) -> np.ndarray:
    """The fixed kernel for one held-out image, family and severity."""
    seed = _seed(name, family, severity)
    if family == "shake":
        return shake_kernel(severity, seed)
    angle = float(np.random.default_rng(seed).uniform(-45, 45))
    return imagenet_c_kernel(severity, angle, centered=True)


def degrade(sharp: np.ndarray, kernel: np.ndarray, noise: float, quality: int, seed: int) -> np.ndarray:
    """Blur an (H,W,3) uint8 RGB image, then add Gaussian noise (sigma in [0,1] units) and JPEG (0 = none)."""
    blurred = apply_kernel(sharp, kernel)
    if noise > 0:
        blurred = np.clip(add_noise(blurred.astype(np.float32) / 255.0, noise, seed) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return jpeg(blurred, quality) if quality else blurred


def evaluate(deblurrers: dict, cfg: TrainConfig, severities=(1, 2, 3, 4, 5), families=FAMILIES,
             limit: int = 0, noise: float = 0.0, quality: int = 0) -> dict:
    """Every method on every held-out image x family x severity -> nested dict of mean PSNR/SSIM.

    deblurrers: {label: callable list[BGR uint8] -> list[BGR uint8]}; each label is a column.
    """
    methods = ("blurred", *deblurrers, *BASELINES)
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
                blurred = degrade(sharp, kernel, noise, quality, _seed(name, "noise", sev))
                outputs = {"blurred": blurred}
                shapes = {}
                for label, deblurrer in deblurrers.items():
                    outputs[label] = deblurrer([blurred[..., ::-1].copy()])[0][..., ::-1]
                    estimate = getattr(deblurrer, "last_kernels", None)  # kernel-aware deblurrers only
                    if estimate is not None:
                        shapes[label] = float(shape_error(estimate.float().cpu(), torch.from_numpy(kernel)[None])[0])
                outputs["unsharp"] = unsharp(blurred)
                outputs["wiener"] = deconvolve_uint8(blurred, kernel)  # balance 0.002, as eval_detection
                b = kernel.shape[0]
                crop = (slice(b, -b), slice(b, -b))
                key = f"{family}/{sev}"
                for method, out in outputs.items():
                    cell = rows.setdefault(key, {}).setdefault(method, {"psnr": [], "ssim": []})
                    cell["psnr"].append(psnr(out[crop], sharp[crop]))
                    cell["ssim"].append(ssim(out[crop], sharp[crop]))
                    if method in shapes:
                        cell.setdefault("shape", []).append(shapes[method])
        logger.info("%d/%d %s (%.0f s)", i + 1, len(names), name, time.perf_counter() - t0)
    table = {
        key: {m: {k: float(np.mean(v)) for k, v in cell.items()} for m, cell in methods.items()}
        for key, methods in rows.items()
    }
    for fam in families:  # the mean over severities of each family, and of everything
        table[f"{fam}/mean"] = _mean([table[f"{fam}/{s}"] for s in severities], methods)
    table["all/mean"] = _mean([table[f"{f}/{s}"] for f in families for s in severities], methods)
    return {"images": list(names), "severities": list(severities), "families": list(families), "methods": list(methods),
            "noise_sigma": noise, "jpeg_quality": quality, "table": table}


def _mean(cells: list[dict], methods) -> dict:
    return {m: {k: float(np.mean([c[m][k] for c in cells])) for k in cells[0][m]} for m in methods}


def to_markdown(result: dict) -> str:
    """PSNR / SSIM per blur and severity; each model's PSNR gain over the blurred input in brackets."""
    methods = result["methods"]
    models = [m for m in methods if m not in ("blurred", *BASELINES)]
    names = {"wiener": "Wiener (true kernel)"}
    lines = ["| blur | severity | " + " | ".join(names.get(m, m) for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for key, cell in result["table"].items():
        family, sev = key.split("/")
        row = []
        for m in methods:
            text = f"{cell[m]['psnr']:.2f} / {cell[m]['ssim']:.3f}"
            if m in models or m == "wiener":
                text += f" ({cell[m]['psnr'] - cell['blurred']['psnr']:+.2f} dB)"
            row.append(text)
        lines.append(f"| {family} | {sev} | " + " | ".join(row) + " |")
    shaped = [m for m in models if all("shape" in cell[m] for cell in result["table"].values())]
    if shaped:
        lines += ["", "Kernel shape error, 1 - the normalised cross-correlation with the true kernel at the best shift "
                  "(0 = the true shape; a blob for a thin path scores high):", "",
                  "| blur | severity | " + " | ".join(shaped) + " |", "|---|---|" + "---|" * len(shaped)]
        for key, cell in result["table"].items():
            family, sev = key.split("/")
            lines.append(f"| {family} | {sev} | " + " | ".join(f"{cell[m]['shape']:.3f}" for m in shaped) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", default=None,
                        help="exported generators and/or kernel estimators, one column each (default: the shipped weights)")
    parser.add_argument("--kernels", action="store_true",
                        help="report the kernel estimator's accuracy on held-out crops (--weights: estimator files)")
    parser.add_argument("--options", nargs="+", default=[], metavar="'KEY=VALUE ...'",
                        help="kernel-deblurrer option sets (deblur.kernel keys, e.g. 'refine.iters=10'): each adds a "
                             "column per estimator file, beside the one with the default options")
    parser.add_argument("--crops", type=int, default=1024, help="--kernels: held-out crops per condition")
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian noise sigma in [0,1] units after the blur")
    parser.add_argument("--jpeg", type=int, default=0, help="JPEG quality after the blur and noise (0 = none)")
    parser.add_argument("--config", default=str(CONFIG_DIR / "deblur_train.yaml"), help="its val split is the held-out set")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--limit", type=int, default=0, help="only the first N held-out images")
    parser.add_argument("--out", default="runs/deblur_eval", help="folder for report.md and report.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.kernels:
        return _kernel_report(args)
    cfg = load_config(TrainConfig, args.config)
    weights = args.weights or [str(DEFAULT_DEBLURRER)]
    labels = [Path(w).stem for w in weights]
    if len(set(labels)) != len(labels):
        parser.error(f"--weights: two files share a name ({labels}); each column is named by its file's stem")
    deblurrers, columns = {}, {}
    for label, w in zip(labels, weights):
        for options in ["", *args.options]:
            try:
                kernel = load_config(KernelDeblurConfig, overrides=options.split())
            except (ConfigError, ValueError, TypeError) as e:
                parser.error(f"--options {options!r}: {e}")
            deblurrer = load_deblurrer(w, device=args.device, kernel=kernel)
            if options and not hasattr(deblurrer, "last_kernels"):
                continue  # a generator file: kernel options do not apply
            name = f"{label} {options}".strip()
            deblurrers[name], columns[name] = deblurrer, {"weights": w, "options": options}
    result = evaluate(deblurrers, cfg, tuple(args.severities), limit=args.limit, noise=args.noise, quality=args.jpeg)
    result["weights"] = columns
    md = to_markdown(result)
    _write_reports(Path(args.out), {"report.md": md + "\n", "report.json": json.dumps(result, indent=2)})
    print(md)
    return 0


def _write_reports(out: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        atomic_write_text(out / name, text)


def _kernel_report(args) -> int:
    """--kernels: each estimator's errors on the same held-out crops (clean, then noisy + JPEG)."""
    import torch

    from deblur.config import KernelTrainConfig
    from deblur.data.kernel_dataset import KernelCrops
    from deblur.train.kernel_trainer import evaluate_kernels
    from deblur.models import DEFAULT_ESTIMATOR, load_estimator

    config = args.config if "kernel" in Path(args.config).name else str(CONFIG_DIR / "kernel_train.yaml")
    cfg = load_config(KernelTrainConfig, config)
    crops = KernelCrops(cfg, cfg.val_bounds)
    sets = {"clean": crops.batch(np.random.default_rng([cfg.seed, 11]), args.crops, noise=False),
            "noise+JPEG": crops.batch(np.random.default_rng([cfg.seed, 12]), args.crops, noise=True)}
    cols = ("angle_median", "angle_p90", "extent_rel_median", "kernel_l2_shake", "kernel_shape_shake", "psnr_blur", "psnr_pred", "psnr_true")
    lines = ["| estimator | crops | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    result = {}
    for w in args.weights or [str(DEFAULT_ESTIMATOR)]:
        model, _ = load_estimator(w, device=args.device)
        for name, batch in sets.items():
            with torch.inference_mode():
                r = evaluate_kernels(model, batch, cfg.wiener_balance, next(model.parameters()).device)
            result[f"{w}|{name}"] = r
            lines.append(f"| {Path(w).stem} | {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    md = "\n".join(lines)
    _write_reports(Path(args.out), {"kernels.md": md + "\n", "kernels.json": json.dumps(result, indent=2)})
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
