"""Combining results: the sample-weighted mean, and robust rules for untrusted workers.

Rules act on the gradients ("grad.*"); BatchNorm statistics ("buf.*") use the weighted mean
under "mean" and the coordinate-wise median under every robust rule.

* mean: sum_i w_i g_i / sum_i w_i (w_i = the unit's sample count).
* clip: each g_i scaled down to norm <= clip_factor x the cohort's median norm, then the
  weighted mean. One worker can move the mean by at most clip_factor x median / n.
* trimmed_mean: per coordinate, drop the trim_fraction largest and smallest values (at least
  one each when there are three or more results), average the rest.
* median: per coordinate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch

from ganpool.training.state import WeightedMean

Tensors = dict[str, torch.Tensor]


def grad_norm(tensors: Tensors) -> float:
    return math.sqrt(
        sum(
            float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2
            for k, t in tensors.items()
            if k.startswith("grad.")
        )
    )


def flat_grads(tensors: Tensors) -> torch.Tensor:
    return torch.cat([tensors[k].reshape(-1) for k in sorted(tensors) if k.startswith("grad.")])


def compare(a: Tensors, b: Tensors) -> tuple[float, float]:
    """(cosine similarity, relative norm difference) of two results' gradients."""
    fa, fb = flat_grads(a).double(), flat_grads(b).double()
    na, nb = float(fa.norm()), float(fb.norm())
    if na == 0 or nb == 0:
        return (1.0 if na == nb else 0.0), (0.0 if na == nb else 1.0)
    return float(fa @ fb) / (na * nb), abs(na - nb) / max(na, nb)


def robust_z(value: float, reference: Sequence[float], min_scale: float = 1e-12) -> float:
    """How far `value` lies from the reference's median, in robust standard deviations
    (1.4826 x MAD, but at least `min_scale`)."""
    med = statistics.median(reference)
    mad = statistics.median(abs(x - med) for x in reference)
    return abs(value - med) / max(1.4826 * mad, min_scale)


def aggregate(
    results: Sequence[tuple[Tensors, float]],
    rule: str = "mean",
    trim_fraction: float = 0.25,
    clip_factor: float = 2.0,
) -> Tensors:
    if rule == "mean":
        mean = WeightedMean()
        for tensors, weight in results:
            mean.add(tensors, weight)
        return mean.mean()
    keys = results[0][0].keys()
    out: Tensors = {}
    for key in keys:
        if key.startswith("grad.") and rule in ("clip",):
            continue
        stacked = torch.stack([t[key].float() for t, _ in results])
        if key.startswith("buf.") or rule == "median":
            out[key] = stacked.median(dim=0).values if len(results) > 2 else stacked.mean(dim=0)
        elif rule == "trimmed_mean":
            out[key] = _trimmed_mean(stacked, trim_fraction)
    if rule == "clip":
        norms = [grad_norm(t) for t, _ in results]
        cap = clip_factor * statistics.median(norms)
        mean = WeightedMean()
        for (tensors, weight), norm in zip(results, norms, strict=True):
            scale = min(1.0, cap / norm) if norm > 0 else 1.0
            mean.add({k: v * scale for k, v in tensors.items() if k.startswith("grad.")}, weight)
        out |= mean.mean()
    return out


def _trimmed_mean(stacked: torch.Tensor, fraction: float) -> torch.Tensor:
    n = stacked.shape[0]
    k = int(n * fraction)
    if n >= 3:
        k = max(k, 1)
    k = min(k, (n - 1) // 2)
    if k == 0:
        return stacked.mean(dim=0)
    ordered = stacked.sort(dim=0).values
    return ordered[k : n - k].mean(dim=0)
