"""Statistics for comparing training modes over paired seeds, and a memorisation check.

Two modes trained from the same seed share their initial weights, data order and noise, so
their KIDs move together with the seed: comparing the per-seed differences (a paired
t-interval) removes that shared variation, and needs far fewer seeds than comparing two
independent means. docs/quality.md describes the protocol that uses these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ganpool.extras import require


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided t confidence interval (Student, n - 1 degrees of freedom)."""

    mean: float
    sd: float  # sample standard deviation (n - 1 in the denominator)
    n: int
    lo: float
    hi: float
    level: float

    def as_dict(self) -> dict:
        return asdict(self)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom."""
    stats = require("scipy.stats", "metrics", "confidence intervals")
    return float(stats.t.ppf(p, df))


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """mean ± t_{(1+level)/2, n-1} · sd / √n. Needs two values at least: one seed says
    nothing about the spread between seeds."""
    x = [float(v) for v in values]
    n = len(x)
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {n}")
    mean = math.fsum(x) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in x) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, sd, n, mean - half, mean + half, level)


def paired_interval(
    arm: Sequence[float], reference: Sequence[float], level: float = 0.95
) -> Interval:
    """The t-interval of the per-seed differences arm − reference (same seeds, same order)."""
    if len(arm) != len(reference):
        raise ValueError(f"paired values differ in length: {len(arm)} and {len(reference)}")
    return t_interval([a - r for a, r in zip(arm, reference, strict=True)], level)


def within_reference(diff: Interval) -> bool:
    """Is an arm "within the CI of the reference"? Yes when the interval of arm − reference
    contains 0 (no difference shown) or lies entirely below 0 (better): both mean lo <= 0.
    Lower KID is better, so only an interval entirely above 0 says the arm is worse."""
    return diff.lo <= 0.0


def nearest_distances(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Euclidean distance from each query row to its nearest reference row."""
    q = queries.reshape(len(queries), -1).astype(np.float64)
    r = references.reshape(len(references), -1).astype(np.float64)
    squared = (q * q).sum(1)[:, None] - 2 * q @ r.T + (r * r).sum(1)[None, :]
    return np.sqrt(np.maximum(squared.min(1), 0.0))


def memorisation(generated: np.ndarray, train: np.ndarray, held_out: np.ndarray) -> dict:
    """Are generated images closer to the training images than new real images are?

    A model that copies its training set puts its samples nearer to training images than
    real images it never saw: `ratio` (median generated distance ÷ median held-out distance)
    falls well below 1, and `share_closer` (generated samples nearer to a training image
    than the nearest held-out image is) rises towards 1. A model that generalises keeps the
    ratio near or above 1 and the share small."""
    gen = nearest_distances(generated, train)
    real = nearest_distances(held_out, train)
    return {
        "generated_median": float(np.median(gen)),
        "held_out_median": float(np.median(real)),
        "ratio": float(np.median(gen) / np.median(real)),
        "share_closer": float((gen < real.min()).mean()),
    }
