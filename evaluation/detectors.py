"""The detector_variants experiment: what a cheaper detector (int8, a smaller input) costs in mAP and buys in speed.

    report = run_detector_variants(cfg)          # python eval_detection.py detector_variants

Every variant (``cfg.detector_variants``: overrides of ``cfg.detector``, e.g. precision=int8 or imgsz=320)
and the reference ``cfg.detector`` detect on the very same images, sharp and blurred at each severity, so
the report gives each variant's mAP difference to the reference with a paired block-bootstrap interval,
and the ms per frame each one took in this run (interleaved, so machine load hits all alike).

Ground truth: the labels where the set has them; else the detections (conf >= pseudo_gt_conf) of a separate
ground-truth detector (``variants_gt``: overrides of ``cfg.detector``, by default imgsz=608) on the sharp
image. A ground truth from the reference itself would score the reference ~1 by construction and favour it
over any variant that differs, e.g. a smaller input; with ``variants_gt=[]`` it measures exactly that:
how far each variant's detections move from the reference's.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from configs import from_dict, parse_overrides, save_config, to_dict
from detect import DetectorConfig, build_detector
from evaluation.bootstrap import block_bootstrap_weights, make_blocks
from evaluation.conditions import blur_image, blur_kernel
from evaluation.config import EvalConfig
from evaluation.data import (
    FrameReader,
    ground_truth_boxes,
    load_eval_set,
    spread_subset,
)
from evaluation.matching import Boxes
from evaluation.report import with_ci
from evaluation.scoring import eval_classes, paired_deltas, score_condition
from runtime.files import atomic_write_text

logger = logging.getLogger(__name__)

REFERENCE = "reference"


def variant_config(base: DetectorConfig, overrides: list[str], key: str) -> DetectorConfig:
    """``base`` with ``key=value`` overrides; ValueError naming ``key`` for a bad one."""
    try:
        return from_dict(DetectorConfig, {**to_dict(base), **parse_overrides(overrides)})
    except (ValueError, TypeError) as e:
        raise ValueError(f"{key}={overrides}: {e}") from e


def run_detector_variants(cfg: EvalConfig, progress: bool = True, detectors: dict | None = None) -> dict:
    """Score the reference detector and every variant of ``cfg.detector_variants``; write report.md/.json.

    detectors: {label: detector} injected instead of building them (tests); must hold 'reference' and, when
    the set has no labels and ``variants_gt`` is set, 'ground_truth'.
    """
    t_start = time.perf_counter()
    out_dir = Path(cfg.out or f"runs/eval/{cfg.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = replace(cfg, out=str(out_dir))
    save_config(cfg, out_dir / "config.yaml")

    configs = {REFERENCE: cfg.detector}
    configs.update({label: variant_config(cfg.detector, ov, f"detector_variants.{label}")
                    for label, ov in cfg.detector_variants.items()})
    gt_cfg = variant_config(cfg.detector, cfg.variants_gt, "variants_gt") if cfg.variants_gt else None
    if detectors is None:
        detectors = {label: build_detector(c) for label, c in configs.items()}
        if gt_cfg is not None:
            detectors["ground_truth"] = build_detector(gt_cfg)
    names = list(detectors[REFERENCE].names)
    eval_set = load_eval_set(cfg.data, names)
    samples = spread_subset(eval_set.samples, cfg.limit)
    labelled = eval_set.labelled and cfg.data.ground_truth != "pseudo"
    gt_detector = detectors.get("ground_truth", detectors[REFERENCE]) if not labelled else None
    labels = list(configs)
    severities = [str(s) for s in cfg.blur.severities]

    for label in labels:  # build engines (export, int8 calibration) before anything is timed
        warmup = getattr(detectors[label], "warmup", None)
        if warmup is not None:
            warmup()
    gts: list[Boxes] = []
    kept = []
    dets = {sev: {label: [] for label in labels} for sev in severities}
    seconds = {label: 0.0 for label in labels}
    frames_run = 0
    bar = tqdm(total=len(samples), desc="variants", unit="img", disable=not progress, leave=False)
    with FrameReader() as reader:
        for sample in samples:
            bar.update(1)
            sharp = reader.read(sample.path, sample.frame)
            if sharp is None or min(sharp.shape[:2]) < 32:
                logger.warning("skipping %s: cannot be decoded or smaller than 32x32", sample.name)
                continue
            if labelled:
                gt = ground_truth_boxes(sample, *sharp.shape[:2])
            else:
                gt = Boxes.from_detections(gt_detector([sharp])[0]).as_ground_truth(cfg.pseudo_gt_conf)
            kept.append(sample)
            gts.append(gt)
            for sev in severities:
                img = sharp if sev == "0" else blur_image(sharp, blur_kernel(cfg.blur, sample.name, int(sev)),
                                                          cfg.blur.linear)
                for label in labels:  # interleaved: a load spike costs every detector alike
                    t0 = time.perf_counter()
                    found = detectors[label]([img])[0]
                    seconds[label] += time.perf_counter() - t0
                    dets[sev][label].append(Boxes.from_detections(found))
                frames_run += 1
    bar.close()
    if not kept:
        raise ValueError("No image of the evaluation set could be decoded. Check data.sources.")

    classes = eval_classes(gts, eval_set.class_names, cfg.classes)
    if not classes or not sum(len(g) for g in gts):
        raise ValueError(f"The ground truth holds no boxes (pseudo_gt_conf={cfg.pseudo_gt_conf}): mAP is undefined. "
                         "Use images with objects the detector knows, or lower pseudo_gt_conf.")
    blocks = make_blocks([s.sequence for s in kept], cfg.data.block_size)
    weights = block_bootstrap_weights(blocks, len(gts), cfg.bootstrap, cfg.seed) if cfg.bootstrap else None
    results: dict = {}
    for sev in severities:
        scored = {label: score_condition(gts, dets[sev][label], classes, eval_set.class_names, ["person"], weights,
                                         cfg.operating_conf, cfg.max_dets) for label in labels}
        results[sev] = {}
        for label, s in scored.items():
            entry = {"map50": float(s.map_t[0]), "map50_95": float(s.map_t.mean())}
            if label != REFERENCE:
                entry.update(paired_deltas(s, scored[REFERENCE], cfg.ci))
            results[sev][label] = entry

    report = {
        "name": cfg.name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "ground_truth": ("labels" if labelled else
                         f"detections with conf >= {cfg.pseudo_gt_conf} on the sharp image by "
                         + (f"the reference with {cfg.variants_gt}" if gt_cfg else "the reference itself")),
        "n_images": len(kept), "n_blocks": len(blocks), "n_gt_boxes": int(sum(len(g) for g in gts)),
        "blur": {"kind": cfg.blur.kind, "severities": severities, "centered": cfg.blur.centered,
                 "linear": cfg.blur.linear, "seed": cfg.blur.seed},
        "detectors": {label: {"config": to_dict(c), "overrides": cfg.detector_variants.get(label, []),
                              "runtime": _runtime_name(detectors[label]),
                              "ms_per_frame": round(1000 * seconds[label] / max(1, frames_run), 1)}
                      for label, c in configs.items()},
        "results": results,
        "ci": f"{cfg.ci:.0%} block bootstrap ({cfg.bootstrap} resamples), paired: the same resamples for every detector",
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    report["table"] = variants_table(report)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1))
    atomic_write_text(out_dir / "report.md", f"# Detector variants\n\nGround truth: {report['ground_truth']}; "
                f"{report['n_images']} images, {report['n_gt_boxes']} boxes; {report['ci']}.\n\n{report['table']}\n")
    logger.info("report written to %s", out_dir)
    return report


def _runtime_name(detector) -> str:
    engine = getattr(detector, "engine", None)
    return engine.name if engine is not None else getattr(detector, "runtime", type(detector).__name__)


def variants_table(report: dict) -> str:
    """Markdown: one row per severity and detector; differences to the reference with paired intervals."""
    rows = ["| sev | detector | runtime | ms/frame | mAP@.5 | mAP@.5:.95 | Δ mAP@.5 vs reference [95% CI] "
            "| Δ mAP@.5:.95 [95% CI] |", "|---|---|---|---|---|---|---|---|"]
    for sev, by_label in report["results"].items():
        for label, e in by_label.items():
            d = report["detectors"][label]
            rows.append(f"| {sev} | {label} | {d['runtime']} | {d['ms_per_frame']} | {e['map50']:.3f} | "
                        f"{e['map50_95']:.3f} | {with_ci(e.get('delta_map50'), e.get('delta_map50_ci'))} | "
                        f"{with_ci(e.get('delta_map50_95'), e.get('delta_map50_95_ci'))} |")
    return "\n".join(rows)
