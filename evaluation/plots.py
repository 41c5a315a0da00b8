"""PNG plots of the report (matplotlib, Agg backend), each written atomically."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from detect import Detection, draw_detections  # noqa: E402
from evaluation.matching import Boxes  # noqa: E402
from runtime.files import atomic_write_bytes

logger = logging.getLogger(__name__)

COLORS = {"sharp": "tab:green", "blurred": "tab:red", "deblurred": "tab:blue", "unsharp": "tab:orange",
          "wiener": "tab:purple"}


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_map_vs_severity(report: dict, path: Path) -> None:
    """mAP@0.5:0.95 (and mAP@0.5) against severity, one line per condition, with bootstrap intervals."""
    results = report["results"]
    sevs = list(results)
    x = np.arange(len(sevs))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "map50_95", "mAP@0.5:0.95"), (axes[1], "map50", "mAP@0.5")):
        for k, cond in enumerate(report["conditions"]):
            ys = np.array([np.nan if results[s][cond][key] is None else results[s][cond][key] for s in sevs])
            cis = [results[s][cond].get(f"{key}_ci") for s in sevs]
            lo = np.array([ys[i] - c[0] if c and c[0] is not None else 0.0 for i, c in enumerate(cis)])
            hi = np.array([c[1] - ys[i] if c and c[1] is not None else 0.0 for i, c in enumerate(cis)])
            dx = (k - (len(report["conditions"]) - 1) / 2) * 0.04  # keep error bars apart
            ax.errorbar(x + dx, ys, yerr=[np.clip(lo, 0, None), np.clip(hi, 0, None)], marker="o", capsize=3,
                        label=cond, color=COLORS.get(cond))
        ax.set_xticks(x, sevs)
        ax.set_xlabel(f"blur severity ({report['blur']['kind']})")
        ax.set_ylabel(title)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"{title} vs blur ({report['ground_truth']['kind']} GT)")
    axes[0].legend()
    _save(fig, path)


def plot_tp_confidence(tp_conf: dict, conditions: list[str], operating_conf: float, path: Path) -> None:
    """Histograms of true-positive confidences (IoU 0.5), one panel per severity."""
    sevs = list(tp_conf)
    fig, axes = plt.subplots(1, len(sevs), figsize=(3.2 * len(sevs) + 1, 3.2), squeeze=False, sharey=True)
    bins = np.linspace(0, 1, 21)
    for ax, sev in zip(axes[0], sevs):
        for cond in conditions:
            vals = tp_conf[sev].get(cond, np.zeros(0))
            ax.hist(vals, bins=bins, histtype="step", lw=1.6, label=f"{cond} ({len(vals)})", color=COLORS.get(cond))
        ax.axvline(operating_conf, color="gray", ls="--", lw=1)
        ax.set_title(f"severity {sev}")
        ax.set_xlabel("confidence of true positives")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("count")
    _save(fig, path)


def _draw(img_bgr: np.ndarray, orig_width: int, boxes: Boxes, names: list[str], conf: float) -> np.ndarray:
    s = img_bgr.shape[1] / orig_width
    dets = [Detection(xyxy=tuple(float(v) * s for v in b), conf=float(c), cls=int(k), name=names[int(k)])
            for b, c, k in zip(boxes.xyxy, boxes.conf, boxes.cls) if c >= conf]
    return draw_detections(img_bgr, dets)


def plot_examples(examples: list[dict], names: list[str], operating_conf: float, path: Path) -> None:
    """Grid: one row per example image, columns sharp | blurred | deblurred, detections >= operating_conf."""
    if not examples:
        return
    cols = list(examples[0]["frames"])
    fig, axes = plt.subplots(len(examples), len(cols), figsize=(4.2 * len(cols), 3.3 * len(examples)), squeeze=False)
    for r, ex in enumerate(examples):
        for c, cond in enumerate(cols):
            ax = axes[r][c]
            ax.axis("off")
            if cond not in ex["frames"]:
                continue
            img, width, boxes = ex["frames"][cond]
            drawn = _draw(img, width, boxes, names, operating_conf)
            ax.imshow(cv2.cvtColor(drawn, cv2.COLOR_BGR2RGB))
            n = int((boxes.conf >= operating_conf).sum())
            ax.set_title(f"{ex['name']} | {cond} (sev {ex['severity']}) | {n} dets", fontsize=8)
    _save(fig, path)
