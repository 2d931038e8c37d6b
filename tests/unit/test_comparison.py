"""The quality protocol's statistics against values worked out by hand (t table: t(0.975, 4)
= 2.7764, t(0.975, 2) = 4.3027)."""

import math

import numpy as np
import pytest

from ganpool.evaluation.comparison import (
    Interval,
    memorisation,
    nearest_distances,
    paired_interval,
    t_interval,
    t_quantile,
    within_reference,
)


def test_t_quantiles_match_the_table():
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(0.975, 1000) == pytest.approx(1.962339, abs=1e-6)  # towards 1.96


def test_t_interval_of_one_to_five():
    # mean 3; sd = sqrt(10 / 4) = 1.5811; se = sd / sqrt(5) = 0.70711;
    # half width = 2.776445 * 0.707107 = 1.963243.
    ci = t_interval([1, 2, 3, 4, 5])
    assert ci.mean == 3.0 and ci.n == 5 and ci.level == 0.95
    assert ci.sd == pytest.approx(math.sqrt(2.5), rel=1e-12)
    assert (ci.lo, ci.hi) == pytest.approx((1.036757, 4.963243), abs=1e-6)
    wider = t_interval([1, 2, 3, 4, 5], level=0.99)  # t(0.995, 4) = 4.604095
    assert wider.hi - 3 == pytest.approx(4.604095 * math.sqrt(0.5), abs=1e-6)


def test_paired_interval_uses_the_per_seed_differences():
    # differences -0.01, +0.02, -0.01: mean 0, sd = sqrt(6e-4 / 2) = 0.017321, se = 0.01,
    # half width = 4.302653 * 0.01.
    ci = paired_interval([0.30, 0.32, 0.35], [0.31, 0.30, 0.36])
    assert ci.mean == pytest.approx(0.0, abs=1e-15)
    assert ci.sd == pytest.approx(0.017320508, abs=1e-9)
    assert (ci.lo, ci.hi) == pytest.approx((-0.04302653, 0.04302653), abs=1e-8)
    # A constant offset between arms has no spread: the interval is the offset itself,
    # where two unpaired means with these spreads would overlap entirely.
    shifted = paired_interval([0.40, 0.52, 0.61], [0.30, 0.42, 0.51])
    assert (shifted.lo, shifted.hi) == pytest.approx((0.1, 0.1), abs=1e-12)


def test_paired_interval_refuses_unequal_or_single_values():
    with pytest.raises(ValueError, match="differ in length"):
        paired_interval([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="at least 2 values"):
        t_interval([0.3])


@pytest.mark.parametrize(
    ("lo", "hi", "within"),
    [(-0.02, 0.01, True), (-0.03, -0.01, True), (0.0, 0.02, True), (0.001, 0.02, False)],
)
def test_within_reference_means_not_shown_worse(lo, hi, within):
    assert within_reference(Interval((lo + hi) / 2, 0.01, 5, lo, hi, 0.95)) is within


def test_nearest_distances():
    train = np.array([[0.0, 0.0], [10.0, 0.0]])
    queries = np.array([[3.0, 4.0], [10.0, 1.0], [0.0, 0.0]])
    assert nearest_distances(queries, train) == pytest.approx([5.0, 1.0, 0.0])
    images = np.zeros((2, 1, 2, 2))  # images are flattened: N x C x H x W
    images[1] += 1.0
    assert nearest_distances(images[1:], images[:1]) == pytest.approx([2.0])


def test_memorisation_flags_copies_and_not_new_samples():
    rng = np.random.default_rng(0)
    train, held_out = rng.normal(size=(60, 8)), rng.normal(size=(20, 8))
    copies = memorisation(train[:30] + 1e-3, train, held_out)
    assert copies["ratio"] < 0.01 and copies["share_closer"] == 1.0
    fresh = memorisation(rng.normal(size=(200, 8)), train, held_out)
    assert 0.7 < fresh["ratio"] < 1.4 and fresh["share_closer"] < 0.2
    # By hand: generated at distances 1 and 3 from train, held out at 2 and 4.
    by_hand = memorisation(
        np.array([[1.0], [13.0]]), np.array([[0.0], [10.0]]), np.array([[-2.0], [14.0]])
    )
    assert by_hand == {
        "generated_median": 2.0,
        "held_out_median": 3.0,
        "ratio": 2.0 / 3.0,
        "share_closer": 0.5,
    }


def _records(kids: list[float]) -> list[dict]:
    """Per-seed records as the protocol writes them, one checkpoint each."""
    mem = {"generated_median": 1.0, "held_out_median": 1.0, "ratio": 1.0, "share_closer": 0.0}
    point = {"memorisation_pixels": mem, "memorisation_inception": mem}
    return [
        {"seed": s, "train_seconds": 1.0, "checkpoints": [point | {"kid": k}]}
        for s, k in enumerate(kids)
    ]


def test_the_verdict_takes_the_best_local_arm_and_its_paired_interval():
    from benchmarks.quality_protocol import Protocol, summarise, verdict

    proto = Protocol(50, 1, 10, 30, 5, 1, 1)
    runs = {
        "alternating": _records([0.30, 0.32, 0.35]),
        "simultaneous": _records([0.50, 0.52, 0.55]),
        # differences +0.01, -0.02, +0.01: the interval above, around 0.
        "local-h8-bf16": _records([0.31, 0.30, 0.36]),
        # 0.1 worse on every seed: an interval of zero width at +0.1.
        "local-h32-int8": _records([0.40, 0.42, 0.45]),
    }
    summary = summarise(runs, proto)
    h8 = summary["local-h8-bf16"]["checkpoints"][0]
    assert (h8["diff_vs_reference"]["lo"], h8["diff_vs_reference"]["hi"]) == pytest.approx(
        (-0.04302653, 0.04302653), abs=1e-8
    )
    assert h8["within_reference"] is True
    assert summary["local-h32-int8"]["checkpoints"][0]["within_reference"] is False
    assert summary["simultaneous"]["checkpoints"][0]["within_reference"] is False
    within, best, how = verdict(summary)
    assert (within, best) == (True, "local-h8-bf16") and "+0.0000" in how
    del runs["local-h8-bf16"]
    assert verdict(summarise(runs, proto))[:2] == (False, "local-h32-int8")
    assert verdict(summarise({"alternating": runs["alternating"]}, proto))[:2] == (False, None)
    # A seed the reference lacks does not count; an arm left with one seed is left out.
    runs["local-h32-int8"] = _records([0.40])
    assert "local-h32-int8" not in summarise(runs, proto)
