"""Detection under blur: python eval_detection.py blurred_vs_deblurred [--config Y] [--limit N] [--out DIR] [key=value ...]
                   python eval_detection.py detector_variants  (int8 / smaller input against the reference detector)

Blurs every image of the evaluation set at each severity, restores it (our deblurrer, unsharp masking, Wiener
with the true kernel), runs the detector on every condition and writes report.md/.json/.csv and plots to
--out (default runs/eval/<name>/). Overrides: e.g. blur.severities=[3] deblur.weights=runs/x/gen.pt bootstrap=0.
Several models on the same images and bootstrap resamples: "deblur.compare={finetuned: runs/y/gen.pt}".
"""

import argparse
import logging
import sys

from configs import CONFIG_DIR, load_config
from configs.cli import RUN_ERRORS, USAGE_ERRORS, CliError, guarded
from evaluation import EvalConfig, run_blurred_vs_deblurred
from evaluation.detectors import run_detector_variants
from evaluation.report import versus_table

EXPERIMENTS = {"blurred_vs_deblurred": run_blurred_vs_deblurred, "detector_variants": run_detector_variants}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--config", default=str(CONFIG_DIR / "eval_detection.yaml"), help="YAML file (EvalConfig)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most N images (spread over the set)")
    parser.add_argument("--out", default=None, help="output folder (default runs/eval/<name>/)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. blur.severities=[1,3]")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if not any(o.startswith("name=") for o in overrides):
        overrides.insert(0, f"name={args.experiment}")  # runs/eval/<experiment>/ unless named
    if args.limit is not None:
        overrides.append(f"limit={args.limit}")
    if args.out is not None:
        overrides.append(f"out={args.out}")
    if args.limit is not None and args.limit < 0:
        parser.error(f"--limit must be >= 0 (0 = every image), got {args.limit}")
    try:
        cfg = guarded(lambda: load_config(EvalConfig, args.config, overrides), args.debug, 2, USAGE_ERRORS)
        report = guarded(lambda: EXPERIMENTS[args.experiment](cfg, progress=not args.quiet), args.debug, 1, RUN_ERRORS)
    except CliError as e:
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.experiment == "detector_variants":
        print(f"Ground truth: {report['ground_truth']}\n{report['table']}")
        print(f"Report: {cfg.out or 'runs/eval/' + cfg.name}/report.md")
        return 0
    gt = report["ground_truth"]
    print(f"Ground truth: {gt['kind']} ({gt['description']})")
    print(report["table"])
    versus = versus_table(report)
    if versus:
        print("\nOther models against deblurred (paired bootstrap):\n" + versus)
    print(f"Report: {cfg.out or 'runs/eval/' + cfg.name}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
