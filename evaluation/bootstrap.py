"""Block bootstrap: confidence intervals that are honest for video.

Consecutive frames of one video are nearly the same picture, so resampling single frames
pretends there are far more independent images than there are. Images are grouped into blocks
(``block_size`` consecutive frames of one video; every photo is its own block) and whole blocks
are resampled with replacement. A resample is a vector of image multiplicities, which
:func:`evaluation.matching.average_precision` takes as weights: every condition is scored on the
very same resample (paired), so differences and recovery fractions get intervals too.
"""

from __future__ import annotations

import numpy as np


def make_blocks(sequences: list[str], block_size: int) -> list[list[int]]:
    """sequences[i]: the video (or photo) image i belongs to, images in frame order.
    -> blocks of image indices: runs of ``block_size`` consecutive images of one sequence."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    by_seq: dict[str, list[int]] = {}
    for i, s in enumerate(sequences):
        by_seq.setdefault(s, []).append(i)
    blocks = []
    for members in by_seq.values():
        blocks.extend(members[k : k + block_size] for k in range(0, len(members), block_size))
    return blocks


def block_bootstrap_weights(blocks: list[list[int]], n_images: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_images) multiplicities: each row draws len(blocks) blocks with replacement."""
    if not blocks:
        raise ValueError("no blocks to resample: the evaluation set is empty")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(blocks), size=(n_resamples, len(blocks)))
    block_counts = np.zeros((n_resamples, len(blocks)), np.int64)
    np.add.at(block_counts, (np.arange(n_resamples)[:, None], draws), 1)
    weights = np.zeros((n_resamples, n_images), np.float64)
    for b, members in enumerate(blocks):
        weights[:, members] = block_counts[:, b : b + 1]
    return weights


def percentile_interval(samples: np.ndarray, ci: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples (NaN samples, e.g. undefined recovery, are left out)."""
    samples = np.asarray(samples, np.float64)
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
