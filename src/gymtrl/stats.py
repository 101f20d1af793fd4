"""Paired statistics for comparing two runs on the same held-out tasks. Pure functions, no I/O.

A comparison pairs rewards by task key (the same held-out task in both runs), so the question is
"did the same tasks get better", which needs far fewer tasks than comparing two independent means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PairedResult:
    n: int
    mean_a: float
    mean_b: float
    delta: float
    ci95: tuple[float, float]  # paired bootstrap interval of mean(b - a)
    verdict: str  # better / worse / no detectable difference


def paired_bootstrap(a: list[float], b: list[float], resamples: int = 10_000, seed: int = 0) -> PairedResult:
    """Percentile interval of mean(b - a) over tasks resampled with replacement."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_bootstrap needs two equally long, non-empty lists")
    import numpy as np

    n = len(a)
    diffs = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    lo, hi = (float(x) for x in np.quantile(diffs[idx].mean(axis=1), [0.025, 0.975]))
    delta = float(diffs.mean())
    return PairedResult(n, sum(a) / n, sum(b) / n, delta, (lo, hi), verdict(lo, hi))


def verdict(lo: float, hi: float) -> str:
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "no detectable difference"


def mcnemar_exact(fail_to_success: int, success_to_fail: int) -> float:
    """Two-sided exact McNemar p-value: the discordant tasks as fair coin flips under no difference."""
    n = fail_to_success + success_to_fail
    if n == 0:
        return 1.0
    k = min(fail_to_success, success_to_fail)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)
