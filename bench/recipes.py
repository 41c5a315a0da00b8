"""Training-recipe benchmark: the same CPU budget for each candidate, then held-out PSNR/SSIM and detection.

Each candidate is a list of train_deblur.py overrides. Every run gets the same seed, data, held-out split
and wall-clock budget (``--minutes``), then ``deblur.evaluate`` (held-out photos, shake + ImageNet-C) and
optionally a quick ``eval_detection.py --limit N`` check. Results: bench/results/recipes_<date>.json + .md.

    python bench/recipes.py --minutes 15 --only lr1e-4 lr3e-4_ema
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CANDIDATES: dict[str, list[str]] = {
    "lr1e-4": ["optimizer.lr=1.0e-4", "scheduler.name=constant", "scheduler.warmup_steps=0", "ema=0.0"],
    "lr3e-4_ema": ["optimizer.lr=3.0e-4", "scheduler.name=constant", "scheduler.warmup_steps=200", "ema=0.999"],
    "lr1e-3_cosine_ema": ["optimizer.lr=1.0e-3", "optimizer.name=adamw", "scheduler.name=cosine",
                          "scheduler.warmup_steps=200", "ema=0.999"],
    "lr3e-4_batchnorm": ["optimizer.lr=3.0e-4", "scheduler.warmup_steps=200", "ema=0.999", "model.norm_layer=batch"],
    "lr3e-4_ssim": ["optimizer.lr=3.0e-4", "scheduler.warmup_steps=200", "ema=0.999",
                    "model.content_loss={l1: 1.0, fft: 0.1, ssim: 0.2}"],
    "lr3e-4_uncentered": ["optimizer.lr=3.0e-4", "scheduler.warmup_steps=200", "ema=0.999",
                          "train.blur.centered=false"],
    "lr3e-4_gan": ["optimizer.lr=3.0e-4", "scheduler.warmup_steps=200", "ema=0.999", "model.d_name=patch_gan",
                   "model.adv_lambda=0.001"],
}


def run(cmd: list[str]) -> str:
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock training budget per candidate")
    parser.add_argument("--only", nargs="*", default=None, help=f"candidates to run (default all: {list(CANDIDATES)})")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--detect-limit", type=int, default=0, help="also run eval_detection.py --limit N (0 = skip)")
    args = parser.parse_args(argv)
    names = args.only or list(CANDIDATES)
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")

    stamp = dt.datetime.now().strftime("%Y%m%d_%H%M")
    results = {"cpu": platform.processor() or platform.machine(), "minutes": args.minutes, "runs": {}}
    py = sys.executable
    for name in names:
        run_name = f"recipe_{stamp}_{name}"
        run([py, "train_deblur.py", f"name={run_name}", "project=runs/recipes", f"max_minutes={args.minutes}",
             f"threads={args.threads}", "num_epochs=1000", "train_batches_per_epoch=250", *CANDIDATES[name]])
        weights = ROOT / "runs/recipes" / run_name / "export.pt"
        run([py, "train_deblur.py", f"name={run_name}", "project=runs/recipes", "--export", str(weights),
             "--export-from", "last.pt", *CANDIDATES[name]])
        out = ROOT / "runs/recipes" / run_name / "eval"
        run([py, "-m", "deblur.evaluate", "--weights", str(weights), "--out", str(out)])
        report = json.loads((out / "report.json").read_text())
        import torch

        step = torch.load(weights, weights_only=True)["step"]
        entry = {"overrides": CANDIDATES[name], "steps": step, "table": report["table"]}
        if args.detect_limit:
            det_out = ROOT / "runs/recipes" / run_name / "detect"
            run([py, "eval_detection.py", "blurred_vs_deblurred", "--limit", str(args.detect_limit), "--out", str(det_out),
                 f"deblur.weights={weights}"])
            entry["detection"] = json.loads((det_out / "report.json").read_text())
        results["runs"][name] = entry

    lines = ["| recipe | steps | held-out PSNR gain (dB) | SSIM gain |", "|---|---|---|---|"]
    for name, entry in results["runs"].items():
        cell = entry["table"]["all/mean"]
        lines.append(f"| {name} | {entry['steps']} | {cell['deblurred']['psnr'] - cell['blurred']['psnr']:+.2f} | "
                     f"{cell['deblurred']['ssim'] - cell['blurred']['ssim']:+.3f} |")
    table = "\n".join(lines)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"recipes_{stamp}.json").write_text(json.dumps(results, indent=2))
    (out_dir / f"recipes_{stamp}.md").write_text(f"Budget {args.minutes} min per recipe, {results['cpu']}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
