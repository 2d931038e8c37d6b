"""A step's reported losses: the sample-weighted mean over the results that computed them."""

import math

import pytest

from ganpool.coordinator.round import weighted


def test_step_metrics_are_weighted_by_samples_and_skip_what_was_not_computed():
    results = [
        {"g_loss": 1.0, "samples": 30},
        {"g_loss": 4.0, "samples": 10},
        {"g_loss": None, "samples": 50},  # a D phase: no G loss
        {"g_loss": math.nan, "samples": 5},
        {"g_loss": math.inf, "samples": 5},
    ]
    assert _weighted(results, "g_loss") == pytest.approx((30 * 1.0 + 10 * 4.0) / 40)
    assert _weighted(results[2:4], "g_loss") is None
    assert _weighted([], "g_loss") is None


def _weighted(results: list[dict], key: str) -> float | None:
    return weighted((r[key], r["samples"]) for r in results)
