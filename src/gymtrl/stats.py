"""Every statistic the project reports, in one place. Pure functions, no I/O.

- One run: `reward_metrics` (avg_reward and success_rate with 95% intervals), `RunningStats`.
- Two runs on the same held-out tasks: `paired_bootstrap`, `mcnemar_exact`. A comparison pairs
  rewards by task key, so the question is "did the same tasks get better", which needs far fewer tasks
  than comparing two independent means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and a normal-approximation 95% interval."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def wilson_ci(successes: int, n: int) -> tuple[float, float]:
    """Wilson score interval: sensible at 0% and 100%, where the normal one collapses."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def reward_metrics(rewards: list[float], threshold: float) -> dict:
    """n, avg_reward and success_rate (reward >= threshold), each with its 95% interval."""
    if not rewards:
        return {"n": 0}
    mean, lo, hi = mean_ci(rewards)
    wins = sum(r >= threshold for r in rewards)
    slo, shi = wilson_ci(wins, len(rewards))
    r6 = lambda x: round(x, 6)  # noqa: E731
    # Interval ends are separate scalars: DVC drops list values from `dvc metrics/exp show`.
    return {"n": len(rewards), "avg_reward": r6(mean), "avg_reward_ci95_low": r6(lo), "avg_reward_ci95_high": r6(hi),
            "success_rate": r6(wins / len(rewards)), "success_rate_ci95_low": r6(slo),
            "success_rate_ci95_high": r6(shi)}


def task_outcomes(rewards_by_task: list[list[float]], threshold: float) -> dict:
    """Over tasks with k samples each: pass@k (a task is solved when any sample succeeds), and how many
    tasks have both a success and a failure (where on-policy preference pairs exist)."""
    won = [[r >= threshold for r in rs] for rs in rewards_by_task]
    solved = sum(any(w) for w in won)
    return {"tasks": len(won), "tasks_solved": solved, "pass_at_k": round(solved / max(len(won), 1), 6),
            "tasks_mixed": sum(any(w) and not all(w) for w in won)}


@dataclass
class RunningStats:
    """n, min, max and mean of a stream, in constant memory."""

    n: int = 0
    total: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")

    def add(self, x: float) -> None:
        self.n, self.total, self.low, self.high = self.n + 1, self.total + x, min(self.low, x), max(self.high, x)

    def as_dict(self) -> dict:
        if not self.n:
            return {"n": 0}
        return {"n": self.n, "min": self.low, "max": self.high, "mean": round(self.total / self.n, 6)}


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
