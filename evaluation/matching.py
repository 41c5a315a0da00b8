"""COCO-style box AP, our own implementation (checked against faster-coco-eval in tests).

Follows pycocotools' COCOeval for iouType='bbox', area 'all', no crowd:
* per image and class, detections sorted by score (stable) and cut to ``max_dets`` (100);
* greedy matching in score order: each detection takes the unmatched ground-truth box with the
  highest IoU >= t (ties: the later box), at each IoU threshold t in 0.50:0.05:0.95;
* per class, detections of all images are pooled and sorted by score, precision is made
  monotone and read at 101 recall points (0:0.01:1); AP is their mean;
* classes without ground truth are left out of the mean (COCO's -1).

Matching is per image, so it is done once (:func:`match_all`); AP of any multiset of images (a
bootstrap resample) is then a weighted cumulative sum over the pooled, pre-sorted detections
(:func:`average_precision`), which is what makes block bootstrap cheap.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO: 0.50:0.05:0.95
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO: 101-point interpolation
_EPS = np.spacing(1)


@dataclass
class Boxes:
    """Boxes of one image: ``xyxy`` (N,4) float pixels, ``cls`` (N,) int, ``conf`` (N,) float (1 for ground truth)."""

    xyxy: np.ndarray
    cls: np.ndarray
    conf: np.ndarray

    @staticmethod
    def empty() -> "Boxes":
        return Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))

    @staticmethod
    def make(xyxy, cls, conf=None) -> "Boxes":
        xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
        cls = np.asarray(cls, np.int64).reshape(-1)
        conf = np.ones(len(cls), np.float32) if conf is None else np.asarray(conf, np.float32).reshape(-1)
        if not len(xyxy) == len(cls) == len(conf):
            raise ValueError(f"Boxes: xyxy {xyxy.shape}, cls {cls.shape} and conf {conf.shape} disagree in length")
        return Boxes(xyxy, cls, conf)

    @staticmethod
    def from_detections(dets) -> "Boxes":
        """A detector's list of detect.Detection for one image."""
        if not dets:
            return Boxes.empty()
        return Boxes.make([d.xyxy for d in dets], [d.cls for d in dets], [d.conf for d in dets])

    def as_ground_truth(self, min_conf: float) -> "Boxes":
        """Pseudo ground truth: the boxes with conf >= ``min_conf``, each then of confidence 1."""
        keep = self.select(self.conf >= min_conf)
        return Boxes.make(keep.xyxy, keep.cls)

    def __len__(self) -> int:
        return len(self.cls)

    def scaled(self, sx: float, sy: float) -> "Boxes":
        """The boxes of a resized copy of the image, back in the image's pixels (x times sx, y times sy)."""
        return Boxes(self.xyxy * np.array([sx, sy, sx, sy], np.float32), self.cls, self.conf)

    def select(self, mask: np.ndarray) -> "Boxes":
        return Boxes(self.xyxy[mask], self.cls[mask], self.conf[mask])


def box_iou(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """(A,4) x (B,4) xyxy -> (A,B) IoU, areas as w*h (COCO, no +1)."""
    a = a_xyxy[:, None, :].astype(np.float64)
    b = b_xyxy[None, :, :].astype(np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_image(det_xyxy, det_conf, gt_xyxy, iou_thresholds=IOU_THRESHOLDS, max_dets: int = 100):
    """One image, one class. Returns (conf (D,), tp (T,D) bool) of the kept detections in score order."""
    order = np.argsort(-np.asarray(det_conf), kind="mergesort")[:max_dets]
    conf = np.asarray(det_conf, np.float64)[order]
    tp = np.zeros((len(iou_thresholds), len(order)), bool)
    if len(order) == 0 or len(gt_xyxy) == 0:
        return conf, tp
    ious = box_iou(np.asarray(det_xyxy)[order], np.asarray(gt_xyxy))
    # a detection whose best IoU is below the lowest threshold can match nothing: skip it
    candidates = np.flatnonzero(ious.max(axis=1) >= min(iou_thresholds[0], 1 - 1e-10))
    for ti, t in enumerate(iou_thresholds):
        t = min(t, 1 - 1e-10)
        taken = np.zeros(ious.shape[1], bool)
        for d in candidates:
            best, m = t, -1
            for g in range(ious.shape[1]):
                if taken[g] or ious[d, g] < best:
                    continue
                best, m = ious[d, g], g
            if m >= 0:
                taken[m] = True
                tp[ti, d] = True
    return conf, tp


@dataclass
class ClassTable:
    """All detections of one class, pooled over images and sorted by score (descending, stable)."""

    conf: np.ndarray  # (N,)
    tp: np.ndarray  # (T,N) bool
    image: np.ndarray  # (N,) image index
    n_gt: np.ndarray  # (n_images,) ground-truth boxes of this class per image


def match_all(
    gts: list[Boxes],
    dets: list[Boxes],
    classes: list[int],
    iou_thresholds=IOU_THRESHOLDS,
    max_dets: int = 100,
) -> dict[int, ClassTable]:
    """Match every image once; -> {class: ClassTable}. ``gts`` and ``dets`` are aligned per image."""
    if len(gts) != len(dets):
        raise ValueError(f"{len(gts)} ground-truth images but {len(dets)} detection images")
    n = len(gts)
    tables = {}
    for c in classes:
        confs, tps, imgs = [], [], []
        n_gt = np.zeros(n, np.int64)
        for i, (gt, det) in enumerate(zip(gts, dets)):
            g = gt.xyxy[gt.cls == c]
            dm = det.cls == c
            n_gt[i] = len(g)
            conf, tp = match_image(det.xyxy[dm], det.conf[dm], g, iou_thresholds, max_dets)
            confs.append(conf)
            tps.append(tp)
            imgs.append(np.full(len(conf), i, np.int64))
        conf = np.concatenate(confs) if confs else np.zeros(0)
        tp = np.concatenate(tps, axis=1) if tps else np.zeros((len(iou_thresholds), 0), bool)
        image = np.concatenate(imgs) if imgs else np.zeros(0, np.int64)
        order = np.argsort(-conf, kind="mergesort")
        tables[c] = ClassTable(conf[order], tp[:, order], image[order], n_gt)
    return tables


def average_precision(table: ClassTable, weights: np.ndarray | None = None, chunk: int = 64) -> np.ndarray:
    """AP per IoU threshold. weights: None (each image once) -> (T,); (B, n_images) image multiplicities
    (a bootstrap resample per row) -> (B,T). NaN where the (resampled) images hold no ground truth.

    Only the true positives matter: recall changes only there, and between two of them precision is
    highest at the first (fewest false positives), so the monotone envelope read at the 101 recall points
    is the same when computed on the true-positive positions alone, with precision = TP weight / all
    weight up to that position. That makes a bootstrap resample cost O(#TP) per threshold, not O(#dets).
    """
    single = weights is None
    w_all = np.ones((1, len(table.n_gt))) if single else np.atleast_2d(np.asarray(weights, np.float64))
    n_thr = table.tp.shape[0]
    tp_pos = [np.flatnonzero(table.tp[t]) for t in range(n_thr)]
    out = np.empty((w_all.shape[0], n_thr))
    for start in range(0, w_all.shape[0], chunk):
        w_img = w_all[start : start + chunk]  # (b, n_images)
        n_pos = w_img @ table.n_gt  # (b,)
        w = w_img[:, table.image]  # (b, N) weight of each detection
        seen = np.cumsum(w, axis=1)  # (b, N) detections so far (TP + FP)
        ap = np.zeros((len(w_img), n_thr))
        for t, pos in enumerate(tp_pos):
            if len(pos) == 0:
                continue
            tp_sum = np.cumsum(w[:, pos], axis=1)  # (b, K)
            precision = tp_sum / (seen[:, pos] + _EPS)
            precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            recall = tp_sum / np.maximum(n_pos, _EPS)[:, None]
            for r in range(len(w_img)):
                idx = np.searchsorted(recall[r], RECALL_POINTS, side="left")
                valid = idx < len(pos)
                ap[r, t] = np.where(valid, precision[r, np.minimum(idx, len(pos) - 1)], 0.0).sum() / len(RECALL_POINTS)
        ap[n_pos == 0] = np.nan
        out[start : start + len(w_img)] = ap
    return out[0] if single else out


def mean_ap(tables: dict[int, ClassTable], weights: np.ndarray | None = None) -> np.ndarray:
    """Mean over classes (with ground truth) of AP per IoU threshold: (T,) or (B,T)."""
    aps = np.stack([average_precision(t, weights) for t in tables.values()])  # (C,T) or (C,B,T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice -> NaN is the intended answer
        return np.nanmean(aps, axis=0)


def operating_point(tables: dict[int, ClassTable], conf: float) -> dict:
    """Precision, recall, mean confidence of true positives and the number of detections at IoU 0.5,
    counting detections with score >= conf (greedy matching in score order, as for AP)."""
    n_tp = n_det = n_gt = 0
    tp_conf = []
    for t in tables.values():
        keep = t.conf >= conf
        hit = t.tp[0] & keep
        n_tp += int(hit.sum())
        n_det += int(keep.sum())
        n_gt += int(t.n_gt.sum())
        tp_conf.append(t.conf[hit])
    tp_conf = np.concatenate(tp_conf) if tp_conf else np.zeros(0)
    return {
        "precision": n_tp / n_det if n_det else float("nan"),
        "recall": n_tp / n_gt if n_gt else float("nan"),
        "mean_conf_tp": float(tp_conf.mean()) if len(tp_conf) else float("nan"),
        "n_det": n_det,
        "n_tp": n_tp,
        "n_gt": n_gt,
    }


def tp_confidences(tables: dict[int, ClassTable]) -> np.ndarray:
    """Scores of all true positives at IoU 0.5 (any score the detector kept)."""
    parts = [t.conf[t.tp[0]] for t in tables.values()]
    return np.concatenate(parts) if parts else np.zeros(0)
