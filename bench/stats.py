"""Intervals the benchmarks report on paired comparisons."""

from __future__ import annotations

import numpy as np


def paired_interval(d: np.ndarray, rng: np.random.Generator, resamples: int = 1000, digits: int = 3) -> list[float]:
    """95 % percentile bootstrap interval of the mean of ``d`` (per-case differences of two settings on the same
    cases), resampling the cases with replacement, rounded to ``digits``."""
    boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(resamples)]
    return [round(float(np.percentile(boots, 2.5)), digits), round(float(np.percentile(boots, 97.5)), digits)]
