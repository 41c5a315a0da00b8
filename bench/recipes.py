"""Training-recipe benchmark: the same CPU budget for each candidate, then held-out PSNR/SSIM and detection.

Each candidate is a list of ``train_deblur.py`` overrides on top of ``BASE`` (the first default recipe, spelled
out) and ``configs/deblur_train.yaml`` (data, model, batch 4, crop 256). Every run
starts from the same random init (seed 0, identity start), sees the same data and gets the same budget of
*process CPU time* (``max_cpu_minutes``, all threads), so runs side by side (``--jobs 2 --threads 1``) or a
busy machine do not tilt the comparison. Then each exported generator is scored by

- ``python -m deblur.evaluate``: held-out photos blurred by camera shake and centred ImageNet-C kernels,
  PSNR/SSIM gain over the blurred input;
- ``eval_detection.py blurred_vs_deblurred --limit N``: YOLOv3-tiny on the detection set at two ImageNet-C
  severities: recovery of mAP@0.5:0.95 and mAP@0.5, and the change in person AP@0.5.

Results are written after every candidate to bench/results/recipes_<tag>.json and .md; a rerun with the same
``--tag`` skips candidates already done (an unfinished one starts over).

    python bench/recipes.py --cpu-minutes 12 --jobs 2 --threads 1 --tag 2026-11-25
    python bench/recipes.py --only lr3e-4_warmup_ema lr1e-4_const --cpu-minutes 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import cpu_model  # bench/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime.files import atomic_write_text  # noqa: E402

# The base recipe every candidate changes one thing of: configs/deblur_train.yaml as it was when the benchmark was
# first run (2026-11-25), spelled out so that later changes to the YAML do not change what a candidate means.
BASE = ["optimizer.name=adam", "optimizer.lr=3.0e-4", "scheduler.name=constant", "scheduler.warmup_steps=200",
        "ema=0.999", "model.content_loss={l1: 1.0, fft: 0.1}", "model.d_name=no_gan", "model.norm_layer=instance",
        "train.blur.centered=true"]

# name -> (what it tests, overrides on top of BASE)
CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "lr3e-4_warmup_ema": ("the base: Adam 3e-4, 200 warm-up steps, constant, EMA 0.999, L1 + 0.1 FFT", []),
    "lr1e-4_const": ("Adam 1e-4 constant, no warm-up, no EMA (DeblurGANv2's lr; the first default recipe)",
                     ["optimizer.lr=1.0e-4", "scheduler.warmup_steps=0", "ema=0.0"]),
    "lr3e-4_noema": ("the base without EMA and with a short warm-up (isolates EMA + warm-up)",
                     ["scheduler.warmup_steps=20", "ema=0.0"]),
    "lr1e-3_adamw_cos": ("AdamW (weight decay 0) 1e-3, 20 warm-up steps, cosine to 1e-6 over 300 steps, EMA 0.99",
                         ["optimizer.name=adamw", "optimizer.lr=1.0e-3", "scheduler.name=cosine",
                          "scheduler.warmup_steps=20", "scheduler.min_lr=1.0e-6", "num_epochs=3",
                          "train_batches_per_epoch=100", "ema=0.99"]),
    "norm_none": ("no normalisation in the FPN and heads (instance norm's statistics change with image size)",
                  ["model.norm_layer=none"]),
    "ssim_loss": ("loss mix L1 + 0.1 FFT + 0.2 SSIM", ["model.content_loss={l1: 1.0, fft: 0.1, ssim: 0.2}"]),
    "uncentered_blur": ("one-sided ImageNet-C-style kernels that also shift content (as the detection set's blur)",
                        ["train.blur.centered=false"]),
    "gan": ("adversarial term on: PatchGAN, RaGAN-LS, adv_lambda 0.001", ["model.d_name=patch_gan",
                                                                          "model.adv_lambda=0.001"]),
}

# every candidate: long enough that the CPU budget, not the step count, ends it; no in-run validation
COMMON = ["num_epochs=1000", "train_batches_per_epoch=250", "val_batches_per_epoch=0", "save_every=50"]


def run(cmd: list[str], threads: int, log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log, "a") as f:
        f.write("+ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}); see {log}")


def bench_one(name: str, args, tag: str) -> dict:
    py = sys.executable
    run_name = f"{tag}_{name}"
    run_dir = ROOT / "runs" / "recipes" / run_name
    if run_dir.exists():  # an unfinished earlier attempt: its CPU budget is unknown, so start it over
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    log = run_dir / "bench.log"
    overrides = [*COMMON, *BASE, *CANDIDATES[name][1]]
    base = [f"name={run_name}", "project=runs/recipes", f"threads={args.threads}", "device=cpu", *overrides]
    run([py, "train_deblur.py", *base, f"max_cpu_minutes={args.cpu_minutes}"], args.threads, log)
    weights = run_dir / "export.pt"
    run([py, "train_deblur.py", *base, "--export", str(weights), "--export-from", "last.pt"], args.threads, log)

    import torch

    steps = int(torch.load(weights, weights_only=True, map_location="cpu")["step"])
    ev = run_dir / "eval"
    run([py, "-m", "deblur.evaluate", "--weights", str(weights), "--out", str(ev)], args.threads, log)
    table = json.loads((ev / "report.json").read_text())["table"]
    entry = {"what": CANDIDATES[name][0], "overrides": CANDIDATES[name][1], "steps": steps, "heldout": {}}
    for key in ("all/mean", "shake/mean", "imagenet_c/mean"):
        if key in table:
            cell = table[key]
            entry["heldout"][key] = {"psnr_gain": cell["deblurred"]["psnr"] - cell["blurred"]["psnr"],
                                     "ssim_gain": cell["deblurred"]["ssim"] - cell["blurred"]["ssim"]}
    if args.detect_limit:
        det = run_dir / "detect"
        sev = ", ".join(str(s) for s in args.severities)
        run([py, "eval_detection.py", "blurred_vs_deblurred", "--limit", str(args.detect_limit), "--out", str(det),
             f"deblur.weights={weights}", "methods=[deblurred]", f"blur.severities=[{sev}]",
             f"threads={args.threads}"], args.threads, log)
        rep = json.loads((det / "report.json").read_text())
        entry["detection"] = {
            str(s): {k: rep["results"][str(s)]["deblurred"].get(k) for k in
                     ("recovery_map50_95", "recovery_map50", "person_delta_ap50", "psnr")}
            | {"blurred_psnr": rep["results"][str(s)]["blurred"]["psnr"]}
            for s in args.severities
        }
    return entry


def fmt(x, spec: str) -> str:
    return "n/a" if x is None or x != x else format(x, spec)


def table_md(results: dict, severities: list[int]) -> str:
    head = ["recipe", "steps", "held-out PSNR gain (dB)", "shake", "ImageNet-C", "SSIM gain"]
    for s in severities:
        head += [f"recovery mAP@.5:.95 sev {s}", f"recovery mAP@.5 sev {s}", f"person ΔAP50 sev {s}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = sorted(results["runs"].items(), key=lambda kv: -kv[1]["heldout"]["all/mean"]["psnr_gain"])
    for name, e in rows:
        h = e["heldout"]
        cells = [name, str(e["steps"]), fmt(h["all/mean"]["psnr_gain"], "+.2f"),
                 fmt(h.get("shake/mean", {}).get("psnr_gain"), "+.2f"),
                 fmt(h.get("imagenet_c/mean", {}).get("psnr_gain"), "+.2f"), fmt(h["all/mean"]["ssim_gain"], "+.3f")]
        for s in severities:
            d = e.get("detection", {}).get(str(s), {})
            cells += [fmt(d.get("recovery_map50_95"), "+.1%"), fmt(d.get("recovery_map50"), "+.1%"),
                      fmt(d.get("person_delta_ap50"), "+.3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    return (
        f"Recipe benchmark: {results['cpu_minutes']} CPU-minutes of training per recipe from random init "
        f"(crop 256, batch 4 unless the recipe says), at most {results['jobs']} run(s) side by side at "
        f"{results['threads']} thread(s) each on {results['cpu']} ({results['cores']} cores).\n"
        f"Held-out: `python -m deblur.evaluate` (all/shake/ImageNet-C means). Detection: "
        f"`eval_detection.py --limit {results['detect_limit']}` at ImageNet-C severities {results['severities']}.\n"
        f"Reproduce: `{results['command']}`\n\n{table_md(results, results['severities'])}\n\n"
        + "\n".join(f"- `{n}`: {e['what']}" for n, e in results["runs"].items()) + "\n"
        + "".join(f"- `{n}` (not run): {why}\n" for n, why in results.get("not_run", {}).items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-minutes", type=float, default=12.0, help="process CPU-time budget per candidate")
    parser.add_argument("--only", nargs="*", default=None, help=f"candidates to run (default all: {list(CANDIDATES)})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="candidates trained side by side (jobs x threads <= cores)")
    parser.add_argument("--detect-limit", type=int, default=20, help="eval_detection.py --limit N (0 = skip)")
    parser.add_argument("--severities", type=int, nargs="+", default=[3, 5], help="ImageNet-C severities to detect at")
    parser.add_argument("--tag", default=dt.date.today().isoformat(), help="results file and run-name prefix")
    args = parser.parse_args(argv)
    names = args.only or list(CANDIDATES)
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")
    if args.cpu_minutes <= 0 or args.jobs < 1 or args.threads < 1:
        parser.error("--cpu-minutes must be > 0, --jobs and --threads >= 1")

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"recipes_{args.tag}.json", out_dir / f"recipes_{args.tag}.md"
    results = json.loads(json_path.read_text()) if json_path.is_file() else {"runs": {}}
    if results.get("cpu_minutes", args.cpu_minutes) != args.cpu_minutes:
        parser.error(f"{json_path} was made with --cpu-minutes {results['cpu_minutes']}; use another --tag")
    results.update(cpu=cpu_model(), cores=os.cpu_count(), cpu_minutes=args.cpu_minutes,
                   threads=args.threads, jobs=max(args.jobs, results.get("jobs", 1)), detect_limit=args.detect_limit,
                   severities=args.severities,
                   command=f"python bench/recipes.py --cpu-minutes {args.cpu_minutes:g} --threads {args.threads} "
                           f"--detect-limit {args.detect_limit} --severities {' '.join(map(str, args.severities))} "
                           f"--tag {args.tag} [--jobs N] [--only NAME ...]")
    todo = [n for n in names if n not in results["runs"]]
    lock = threading.Lock()

    def write() -> None:
        """Merge our runs into the file under a lock: other invocations (other --only lanes) may share the tag."""
        with open(json_path.with_suffix(".lock"), "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            on_disk = json.loads(json_path.read_text()) if json_path.is_file() else {"runs": {}}
            results["runs"] = on_disk["runs"] | results["runs"]
            for path, text in ((json_path, json.dumps(results, indent=2)), (md_path, markdown(results))):
                atomic_write_text(path, text)

    def job(name: str) -> None:
        entry = bench_one(name, args, args.tag)
        with lock:
            results["runs"][name] = entry
            write()
        print(f"{name}: {entry['steps']} steps, held-out {entry['heldout']['all/mean']['psnr_gain']:+.2f} dB", flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for f in [pool.submit(job, n) for n in todo]:
            f.result()
    write()
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
