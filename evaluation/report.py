"""report.md, report.json, report.csv and the plots, all written atomically (temp file + os.replace)."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

from evaluation import plots
from runtime.files import atomic_write_text

logger = logging.getLogger(__name__)

CSV_FIELDS = [
    "severity", "condition", "map50", "map50_lo", "map50_hi", "map50_95", "map50_95_lo", "map50_95_hi",
    "person_ap50", "person_ap50_lo", "person_ap50_hi", "precision", "recall", "mean_conf_tp", "n_det", "n_tp",
    "n_gt", "psnr", "ssim", "recovery_map50", "recovery_map50_lo", "recovery_map50_hi", "recovery_map50_95",
    "recovery_map50_95_lo", "recovery_map50_95_hi", "delta_map50", "delta_map50_lo", "delta_map50_hi",
    "person_delta_ap50", "person_delta_ap50_lo", "person_delta_ap50_hi",
    # deblur.compare models only: the difference to 'deblurred' on the same resamples
    "vs_deblurred_delta_map50", "vs_deblurred_delta_map50_95", "vs_deblurred_delta_map50_95_lo",
    "vs_deblurred_delta_map50_95_hi", "vs_deblurred_delta_psnr",
]




def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def with_ci(v, ci, digits: int = 3) -> str:
    if v is None:
        return "–"
    if not ci or ci[0] is None:
        return _num(v, digits)
    return f"{_num(v, digits)} [{_num(ci[0], digits)}, {_num(ci[1], digits)}]"


def _pct(v, ci) -> str:
    if v is None:
        return "n/a"
    s = f"{100 * v:.0f}%"
    if ci and ci[0] is not None:
        s += f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"
    return s


def main_table(report: dict) -> str:
    """The markdown table printed by eval_detection.py and at the top of report.md."""
    head = ("| sev | condition | mAP@.5 [95% CI] | mAP@.5:.95 [95% CI] | person AP@.5 | P | R | TP conf | dets "
            "| PSNR | SSIM | recovery @.5 | recovery @.5:.95 |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for sev, by_cond in report["results"].items():
        for cond, e in by_cond.items():
            person = e["per_class"].get("person", {})
            lines.append("| " + " | ".join([
                sev, cond, with_ci(e["map50"], e.get("map50_ci")), with_ci(e["map50_95"], e.get("map50_95_ci")),
                with_ci(person.get("ap50"), person.get("ap50_ci")), _num(e["precision"]), _num(e["recall"]),
                _num(e["mean_conf_tp"]), str(e["n_det"]), _num(e["psnr"], 2), _num(e["ssim"]),
                _pct(e.get("recovery_map50"), e.get("recovery_map50_ci")) if "recovery_map50" in e else "",
                _pct(e.get("recovery_map50_95"), e.get("recovery_map50_95_ci")) if "recovery_map50_95" in e else "",
            ]) + " |")
    return "\n".join(lines)


def per_class_table(report: dict) -> str:
    """Each condition's AP@0.5 / AP@0.5:0.95 of person and the most frequent classes (a box that moves by a few
    pixels keeps its AP@0.5 and loses AP@0.5:0.95)."""
    classes = list(next(iter(next(iter(report["results"].values())).values()))["per_class"])
    head = "| sev | condition | " + " | ".join(f"{c} AP@.5 / @.5:.95" for c in classes) + " |"
    lines = [head, "|" + "|".join(["---"] * (2 + len(classes))) + "|"]
    for sev, by_cond in report["results"].items():
        for cond, e in by_cond.items():
            cells = (f"{_num(e['per_class'][c]['ap50'])} / {_num(e['per_class'][c].get('ap50_95'))}" for c in classes)
            lines.append(f"| {sev} | {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def delta_table(report: dict) -> str:
    """Each method against blurred, with paired-bootstrap intervals: all classes and person."""
    lines = ["| sev | method | Δ mAP@.5 vs blurred [95% CI] | Δ mAP@.5:.95 [95% CI] | Δ person AP@.5 [95% CI] |",
             "|---|---|---|---|---|"]
    for sev, by_cond in report["results"].items():
        for cond, e in by_cond.items():
            if "delta_map50" not in e:
                continue
            lines.append(f"| {sev} | {cond} | {with_ci(e['delta_map50'], e.get('delta_map50_ci'))} | "
                         f"{with_ci(e['delta_map50_95'], e.get('delta_map50_95_ci'))} | "
                         f"{with_ci(e.get('person_delta_ap50'), e.get('person_delta_ap50_ci'))} |")
    return "\n".join(lines)


def versus_table(report: dict) -> str:
    """deblur.compare models against 'deblurred', paired (empty string when there are none)."""
    lines = ["| sev | model | Δ mAP@.5 vs deblurred [95% CI] | Δ mAP@.5:.95 [95% CI] | Δ person AP@.5 [95% CI] "
             "| Δ PSNR (dB) [95% CI] |", "|---|---|---|---|---|---|"]
    rows = [(sev, cond, e["vs_deblurred"]) for sev, by_cond in report["results"].items()
            for cond, e in by_cond.items() if "vs_deblurred" in e]
    for sev, cond, v in rows:
        lines.append(f"| {sev} | {cond} | {with_ci(v['delta_map50'], v.get('delta_map50_ci'))} | "
                     f"{with_ci(v['delta_map50_95'], v.get('delta_map50_95_ci'))} | "
                     f"{with_ci(v.get('person_delta_ap50'), v.get('person_delta_ap50_ci'))} | "
                     f"{with_ci(v.get('delta_psnr'), v.get('delta_psnr_ci'), 2)} |")
    return "\n".join(lines) if rows else ""


def _markdown(report: dict, table: str, plot_files: list[str]) -> str:
    d, det, deb = report["data"], report["detector"], report["deblur"]
    gt = report["ground_truth"]
    lines = [
        f"# Detection under blur: {report['name']}",
        "",
        f"- **Ground truth: {gt['kind']}** — {gt['description']}",
        f"- Data: {d['source']} — {d['n_images']} images"
        + (f" (of {d['n_available']}, --limit {d['limit']})" if d["limit"] and d["n_available"] > d["n_images"] else "")
        + f", {d['n_sequences']} sequences/photos, {d['n_blocks']} bootstrap blocks, {d['n_gt_boxes']} GT boxes "
        f"{d['gt_per_class']}; skipped: {d['n_skipped']}",
        f"- Blur: {report['blur']['kind']}, severities {report['blur']['severities']}"
        + ("" if report["blur"]["kind"] == "real (paired)" else
           f", centred={report['blur']['centered']}" + (", in linear light" if report["blur"].get("linear") else "")
           + f", seed {report['blur']['seed']} (per image: hash of name + severity)"),
        f"- Detector: {det['config']['backend']} {det['weights']} (sha256 {det['sha256']}), imgsz "
        f"{det['config']['imgsz']}, conf {det['config']['conf']} (mAP), operating conf "
        f"{report['metrics']['operating_conf']} (P, R, TP conf, dets)",
        f"- Deblur weights: {deb['weights']} (sha256 {deb['sha256']}), "
        f"{'full resolution' if not deb['max_side'] else 'long side ' + str(deb['max_side'])}, runtime "
        f"{deb.get('runtime', 'torch')}" if deb else
        "- Deblur: not run",
        f"- mAP: {report['metrics']['map']}",
        f"- Intervals: {report['metrics']['ci']}",
        f"- Recovery: {report['metrics']['recovery']}",
        "",
        table,
        "",
        "## Each method against blurred (paired bootstrap)",
        "",
        delta_table(report),
        "",
    ]
    versus = versus_table(report)
    if versus:
        lines += ["## Other models against deblurred (deblur.compare; paired bootstrap)", "", versus, ""]
        for label, info in report.get("compare", {}).items():
            lines.append(f"- {label}: {info['weights']} (sha256 {info['sha256']})")
        lines.append("")
    lines += [
        "## Per-class AP@0.5 / AP@0.5:0.95 (person always; the most frequent classes)",
        "",
        per_class_table(report),
        "",
    ]
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    if d["skipped"]:
        lines += ["## Skipped images", ""] + [f"- {s}" for s in d["skipped"]] + [""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plot_files] + [""]
    t = report["timing"]
    lines += [f"Run time {t['total_s']} s; deblur {t['deblur_ms_per_image']} ms/image, detect "
              f"{t['detect_ms_per_frame']} ms/frame; {report['created']}.", ""]
    return "\n".join(lines)


def _csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for sev, by_cond in report["results"].items():
        for cond, e in by_cond.items():
            row = {"severity": sev, "condition": cond}
            for k in CSV_FIELDS[2:]:
                src, key = (e.get("vs_deblurred", {}), k[len("vs_deblurred_"):]) if k.startswith("vs_deblurred_") \
                    else (e, k)
                if key.endswith("_lo") or key.endswith("_hi"):
                    base = key[:-3]
                    ci = src["per_class"].get("person", {}).get("ap50_ci") if base == "person_ap50" \
                        else src.get(f"{base}_ci")
                    row[k] = "" if not ci or ci[0] is None else ci[0 if key.endswith("_lo") else 1]
                elif key == "person_ap50":
                    row[k] = src["per_class"].get("person", {}).get("ap50")
                else:
                    row[k] = src.get(key)
                if row[k] is None:
                    row[k] = ""
            w.writerow(row)
    return buf.getvalue()


def write_reports(report: dict, extras: dict, examples: list[dict], out_dir: Path, names: list[str]) -> str:
    """Write every output into ``out_dir``; -> the main markdown table."""
    out_dir = Path(out_dir)
    plot_files = ["map_vs_severity.png", "tp_confidence.png"] + (["examples.png"] if examples else [])
    plots.plot_map_vs_severity(report, out_dir / "map_vs_severity.png")
    plots.plot_tp_confidence(extras["tp_conf"], report["conditions"], report["metrics"]["operating_conf"],
                             out_dir / "tp_confidence.png")
    plots.plot_examples(examples, names, report["metrics"]["operating_conf"], out_dir / "examples.png")
    table = main_table(report)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1, allow_nan=False))
    atomic_write_text(out_dir / "report.csv", _csv(report))
    atomic_write_text(out_dir / "report.md", _markdown(report, table, plot_files))
    return table
