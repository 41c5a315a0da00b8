"""Detections + ground truth + image metrics -> every number of the report.

Per severity and condition: mAP@0.5 and mAP@0.5:0.95 (COCO-style, evaluation.matching) with block-bootstrap
intervals, precision / recall / mean TP confidence / number of detections at the operating threshold
(IoU 0.5), per-class AP (person always), PSNR / SSIM against sharp; per method: the recovery fraction
(mAP_method - mAP_blurred) / (mAP_sharp - mAP_blurred) and the change against blurred, with intervals from
the same (paired) resamples.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np

from configs import did_you_mean
from evaluation.bootstrap import (
    block_bootstrap_weights,
    make_blocks,
    percentile_interval,
)
from evaluation.data import canonical_name
from evaluation.matching import (
    IOU_THRESHOLDS,
    Boxes,
    ClassTable,
    average_precision,
    match_all,
    operating_point,
    tp_confidences,
)

logger = logging.getLogger(__name__)

PERSON = "person"


def recovery_fraction(map_sharp, map_blurred, map_method, min_gap: float):
    """(map_method - map_blurred) / (map_sharp - map_blurred); NaN where the gap is below ``min_gap``
    (nothing was lost to blur, so there is nothing to recover). Works on floats and arrays."""
    s, b, m = (np.asarray(v, np.float64) for v in (map_sharp, map_blurred, map_method))
    gap = s - b
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(gap >= min_gap, (m - b) / np.where(gap == 0, 1.0, gap), np.nan)
    return float(out) if out.ndim == 0 else out


def _f(x) -> float | None:
    """JSON-friendly float: NaN/inf -> None."""
    x = float(x)
    return x if math.isfinite(x) else None


def _ci(samples: np.ndarray | None, ci: float) -> list[float | None] | None:
    if samples is None:
        return None
    lo, hi = percentile_interval(samples, ci)
    return [_f(lo), _f(hi)]


@dataclass
class Scored:
    """One condition at one severity: the point numbers, bootstrap samples and raw TP confidences."""

    map_t: np.ndarray  # (T,) mean AP per IoU threshold
    samples_t: np.ndarray | None  # (B,T)
    class_ap: dict[str, np.ndarray]  # name -> (T,)
    class_samples: dict[str, np.ndarray | None]  # name -> (B,T)
    op: dict
    tp_conf: np.ndarray


def score_condition(
    gts: list[Boxes], dets: list[Boxes], classes: list[int], class_names: list[str], report_classes: list[str],
    weights: np.ndarray | None, operating_conf: float, max_dets: int,
) -> Scored:
    tables: dict[int, ClassTable] = match_all(gts, dets, classes, max_dets=max_dets)
    # AP of every class once (point and resamples); the mean over classes and the per-class rows reuse it
    ap = {c: average_precision(t) for c, t in tables.items()}  # (T,)
    ap_samples = {c: average_precision(t, weights) for c, t in tables.items()} if weights is not None else None
    class_ap, class_samples = {}, {}
    for name in report_classes:
        c = class_names.index(name) if name in class_names else -1
        class_ap[name] = ap[c] if c in ap else np.full(len(IOU_THRESHOLDS), np.nan)
        class_samples[name] = ap_samples[c] if ap_samples is not None and c in ap_samples else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice: no ground truth in a resample
        map_t = np.nanmean(np.stack(list(ap.values())), axis=0)
        samples_t = np.nanmean(np.stack(list(ap_samples.values())), axis=0) if ap_samples is not None else None
    return Scored(
        map_t=map_t,
        samples_t=samples_t,
        class_ap=class_ap,
        class_samples=class_samples,
        op=operating_point(tables, operating_conf),
        tp_conf=tp_confidences(tables),
    )


def eval_classes(gts: list[Boxes], class_names: list[str], wanted: list[str] | None) -> list[int]:
    """Indices of the classes to evaluate: ``wanted`` by name, else every class with ground truth."""
    if wanted is None:
        present = sorted({int(c) for g in gts for c in g.cls})
        return present
    index = {canonical_name(n): i for i, n in enumerate(class_names)}
    out = []
    for name in wanted:
        key = canonical_name(name)
        if key not in index:
            raise ValueError(f"classes: {name!r} is not a class name of the detector or labels."
                             f"{did_you_mean(key, index)} Valid names include {class_names[:8]} ...")
        out.append(index[key])
    return out


def score_all(
    gts: list[Boxes],
    dets: dict[str, dict[str, list[Boxes]]],  # severity -> condition -> per-image detections
    quality: dict[str, dict[str, list[tuple[float, float]]]],  # severity -> condition -> (psnr, ssim) per image
    sequences: list[str],
    class_names: list[str],
    cfg,  # EvalConfig
) -> tuple[dict, dict]:
    """-> (results, extras). results[severity][condition] = JSON-ready dict; extras holds TP confidences
    per severity/condition for plots, and the evaluated classes."""
    classes = eval_classes(gts, class_names, cfg.classes)
    if not classes or sum(len(g) for g in gts) == 0:
        raise ValueError(
            "The ground truth holds no boxes of the evaluated classes, so mAP is undefined. With pseudo ground "
            f"truth, no detection on the sharp images reached pseudo_gt_conf={cfg.pseudo_gt_conf}: use images "
            "with objects the detector knows, or lower pseudo_gt_conf."
        )
    counts = {class_names[c]: int(sum(int((g.cls == c).sum()) for g in gts)) for c in classes}
    frequent = sorted(counts, key=lambda n: -counts[n])[: cfg.per_class_top]
    report_classes = [PERSON] + [n for n in frequent if n != PERSON]
    blocks = make_blocks(sequences, cfg.data.block_size)
    weights = block_bootstrap_weights(blocks, len(gts), cfg.bootstrap, cfg.seed) if cfg.bootstrap else None

    results: dict = {}
    extras: dict = {"tp_conf": {}, "classes": [class_names[c] for c in classes], "gt_per_class": counts,
                    "n_blocks": len(blocks), "report_classes": report_classes}
    sharp_scored = None
    for sev, by_cond in dets.items():
        scored = {}
        for cond, cond_dets in by_cond.items():
            if cond == "sharp" and sharp_scored is not None:
                scored[cond] = sharp_scored  # the same detections at every severity
                continue
            scored[cond] = score_condition(gts, cond_dets, classes, class_names, report_classes, weights,
                                           cfg.operating_conf, cfg.max_dets)
            if cond == "sharp":
                sharp_scored = scored[cond]
        results[sev] = {}
        extras["tp_conf"][sev] = {c: s.tp_conf for c, s in scored.items()}
        for cond, s in scored.items():
            results[sev][cond] = _condition_entry(s, scored, cond, quality.get(sev, {}).get(cond), cfg)
        if "deblurred" in scored:
            for label in cfg.deblur.compare:
                results[sev][label]["vs_deblurred"] = versus(
                    scored[label], scored["deblurred"], quality[sev][label], quality[sev]["deblurred"], weights, cfg.ci)
    return results, extras


# mAP@0.5 and mAP@0.5:0.95 from per-IoU-threshold arrays (..., T)
PICKS = (("map50", lambda t: t[..., 0]), ("map50_95", lambda t: t.mean(-1)))


def paired_deltas(a: Scored, b: Scored, ci: float) -> dict:
    """``a`` minus ``b`` on the same images: mAP@0.5, mAP@0.5:0.95 and person AP@0.5, each with a paired
    block-bootstrap interval (the same resamples for both, so the noise they share cancels)."""
    out: dict = {}
    for key, pick in PICKS:
        out[f"delta_{key}"] = _f(pick(a.map_t) - pick(b.map_t))
        if a.samples_t is not None and b.samples_t is not None:
            out[f"delta_{key}_ci"] = _ci(pick(a.samples_t) - pick(b.samples_t), ci)
    if PERSON in a.class_ap and PERSON in b.class_ap:
        out["person_delta_ap50"] = _f(a.class_ap[PERSON][0] - b.class_ap[PERSON][0])
        sa, sb = a.class_samples.get(PERSON), b.class_samples.get(PERSON)
        out["person_delta_ap50_ci"] = _ci(sa[:, 0] - sb[:, 0], ci) if sa is not None and sb is not None else None
    return out


def versus(a: Scored, b: Scored, qual_a, qual_b, weights: np.ndarray | None, ci: float) -> dict:
    """Model ``a`` minus model ``b``: :func:`paired_deltas` plus the mean PSNR difference, also paired."""
    out = paired_deltas(a, b, ci)
    diff = np.asarray(qual_a, np.float64)[:, 0] - np.asarray(qual_b, np.float64)[:, 0]
    ok = np.isfinite(diff)  # an image restored exactly (PSNR inf) by either model has no PSNR difference
    out["delta_psnr"] = _f(diff[ok].mean()) if ok.any() else None
    if weights is not None and ok.any():
        w = weights[:, ok]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["delta_psnr_ci"] = _ci(w @ diff[ok] / w.sum(1), ci)
    return out


def _condition_entry(s: Scored, scored: dict[str, Scored], cond: str, qual, cfg) -> dict:
    ci = cfg.ci
    entry = {
        "map50": _f(s.map_t[0]),
        "map50_95": _f(s.map_t.mean()),
        "map50_ci": _ci(None if s.samples_t is None else s.samples_t[:, 0], ci),
        "map50_95_ci": _ci(None if s.samples_t is None else s.samples_t.mean(1), ci),
        "precision": _f(s.op["precision"]),
        "recall": _f(s.op["recall"]),
        "mean_conf_tp": _f(s.op["mean_conf_tp"]),
        "n_det": s.op["n_det"],
        "n_tp": s.op["n_tp"],
        "n_gt": s.op["n_gt"],
    }
    if cond == "sharp":
        entry["psnr"], entry["ssim"] = None, 1.0  # the reference itself (PSNR infinite)
    elif qual:
        q = np.asarray(qual, np.float64)
        finite = q[np.isfinite(q[:, 0]), 0]
        entry["psnr"] = _f(finite.mean()) if len(finite) else None
        entry["ssim"] = _f(q[:, 1].mean())
    else:
        entry["psnr"] = entry["ssim"] = None
    entry["per_class"] = {}
    for name, ap in s.class_ap.items():
        smp = s.class_samples.get(name)
        entry["per_class"][name] = {
            "ap50": _f(ap[0]), "ap50_95": _f(np.nanmean(ap)) if np.isfinite(ap).any() else None,
            "ap50_ci": _ci(None if smp is None else smp[:, 0], ci),
        }
    if cond not in ("sharp", "blurred") and "sharp" in scored and "blurred" in scored:
        sh, bl = scored["sharp"], scored["blurred"]
        for key, pick in PICKS:
            entry[f"recovery_{key}"] = _f(recovery_fraction(pick(sh.map_t), pick(bl.map_t), pick(s.map_t),
                                                            cfg.min_recovery_gap))
            if s.samples_t is not None:
                rec = recovery_fraction(pick(sh.samples_t), pick(bl.samples_t), pick(s.samples_t), cfg.min_recovery_gap)
                entry[f"recovery_{key}_ci"] = _ci(rec, ci)
                entry[f"recovery_{key}_undefined_frac"] = _f(np.mean(~np.isfinite(rec)))
        entry.update(paired_deltas(s, bl, ci))  # against blurred
    return entry
