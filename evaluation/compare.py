"""Side-by-side table of several eval_detection runs (e.g. two deblurring models) on the same images.

    python -m evaluation.compare runs/eval/shipped runs/eval/finetuned --labels shipped finetuned
    python -m evaluation.compare runs/eval/x runs/eval/x --condition deblurred finetuned   # deblur.compare models

Each run folder holds the report.json that ``eval_detection.py`` wrote. The runs must share the data, blur
and detector (checked: a comparison across different images or detectors would be meaningless); the
table gives, per severity and run, the chosen condition's numbers and a mean over severities.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# what must be equal for two runs to be comparable: report section -> keys
SAME = {"data": ("source", "n_images", "limit", "n_gt_boxes"),
        "blur": ("kind", "severities", "centered", "linear", "seed"), "detector": ("sha256", "type")}
OLD = {"linear": False}  # what a report written before the key existed meant


def load_report(run: str | Path) -> dict:
    path = Path(run)
    path = path / "report.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give an eval_detection.py output folder (it holds report.json)")
    return json.loads(path.read_text())


def check_comparable(reports: dict[str, dict]) -> None:
    (first_label, first), *rest = reports.items()
    for label, rep in rest:
        for section, keys in SAME.items():
            for key in keys:
                a, b = first[section].get(key, OLD.get(key)), rep[section].get(key, OLD.get(key))
                if a != b:
                    raise ValueError(f"runs '{first_label}' and '{label}' differ in {section}.{key} ({a!r} vs {b!r}); "
                                     "compare runs made with the same data, blur and detector")


def _f(v, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _p(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * v:+.0f}%"


def _row(sev: str, label: str, e: dict) -> list[str]:
    person = e.get("per_class", {}).get("person", {})
    return [sev, label, _f(e.get("map50")), _f(e.get("map50_95")), _f(person.get("ap50")), _f(e.get("mean_conf_tp")),
            _f(e.get("psnr"), 2), _f(e.get("ssim")), _p(e.get("recovery_map50")), _p(e.get("recovery_map50_95"))]


KEYS = ("map50", "map50_95", "mean_conf_tp", "psnr", "ssim", "recovery_map50", "recovery_map50_95")


def compare_table(reports: dict[str, dict], condition: str | dict[str, str] = "deblurred") -> str:
    """Markdown: one row per (severity, run) for ``condition`` (the blurred input once per severity, for
    reference), then per run the mean over severities. ``condition`` may name one condition per label
    (several models of one run made with deblur.compare)."""
    check_comparable(reports)
    cond = condition if isinstance(condition, dict) else {label: condition for label in reports}
    head = ["sev", "run", "mAP@.5", "mAP@.5:.95", "person AP@.5", "TP conf", "PSNR", "SSIM", "recovery @.5",
            "recovery @.5:.95"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    severities = list(next(iter(reports.values()))["results"])
    for sev in severities:
        first = next(iter(reports.values()))["results"][sev]
        lines.append("| " + " | ".join(_row(sev, "blurred", first["blurred"])) + " |")
        for label, rep in reports.items():
            if cond[label] not in rep["results"][sev]:
                raise ValueError(f"run '{label}' has no '{cond[label]}' condition (it has {sorted(rep['results'][sev])})")
            lines.append("| " + " | ".join(_row(sev, label, rep["results"][sev][cond[label]])) + " |")
    for label, rep in reports.items():
        entries = [rep["results"][s][cond[label]] for s in severities]
        mean = {}
        for key in KEYS:
            vals = [v for v in (e.get(key) for e in entries) if v is not None and math.isfinite(v)]
            mean[key] = sum(vals) / len(vals) if vals else None
        persons = [v for v in (e["per_class"].get("person", {}).get("ap50") for e in entries) if v is not None]
        mean["per_class"] = {"person": {"ap50": sum(persons) / len(persons) if persons else None}}
        lines.append("| " + " | ".join(_row("mean", label, mean)) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="eval_detection.py output folders (or their report.json)")
    parser.add_argument("--labels", nargs="*", default=None, help="a name per run (default: the folder names)")
    parser.add_argument("--condition", nargs="+", default=["deblurred"],
                        help="condition to compare, one for all runs or one per run (e.g. the labels of "
                             "deblur.compare, with the same run given several times; default: %(default)s)")
    args = parser.parse_args(argv)
    conditions = args.condition * len(args.runs) if len(args.condition) == 1 else args.condition
    if len(conditions) != len(args.runs):
        parser.error(f"give one --condition for all runs or one per run: {len(args.runs)} runs, {conditions}")
    labels = args.labels or ([Path(r).name for r in args.runs] if len(set(args.runs)) == len(args.runs) else conditions)
    if len(labels) != len(args.runs) or len(set(labels)) != len(labels):
        parser.error(f"give one distinct label per run: {len(args.runs)} runs, labels {labels}")
    reports = {label: load_report(run) for label, run in zip(labels, args.runs)}
    print(compare_table(reports, dict(zip(labels, conditions))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
