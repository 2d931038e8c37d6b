"""The norm check and the payload check, without a database, on numbers worked out by hand.

A norm's robust z is |log norm - median| / max(1.4826 x MAD, 0.25), over the history plus the
step's norms. With a steady history of 1.0 the median and the MAD of the logs are 0, so the
scale is the 0.25 floor and a norm of 1000 lies ln(1000) / 0.25 = 27.6 away."""

import math

import pytest
import torch

from ganpool.coordinator.screening import NORM_HISTORY, Screening, batchnorm_stats, norm_outliers
from ganpool.errors import PayloadError
from ganpool.models.dcgan import build_models
from ganpool.serialization.tensors import pack
from ganpool.settings import load_run_config
from ganpool.training.gradients import unit_gradients

Z_1000 = math.log(1000) / 0.25


def test_a_norm_far_from_a_steady_cohort_is_flagged_with_its_ratio_and_z():
    out = norm_outliers([1.0] * 7, {"a": 1.0, "b": 1000.0}, z_max=12)
    assert len(out) == 1
    key, ratio, z = out[0]
    assert key == "b" and ratio == pytest.approx(1000.0) and z == pytest.approx(Z_1000)
    # The ratio is to the cohort's median norm, not to 1.
    out = norm_outliers([2.0] * 7, {"a": 2.0, "b": 2000.0}, z_max=12)
    assert out[0][1] == pytest.approx(1000.0)


def test_the_limit_is_exclusive_and_the_scale_has_a_floor():
    assert norm_outliers([1.0] * 7, {"a": 1.0, "b": 1000.0}, z_max=27.5)
    assert not norm_outliers([1.0] * 7, {"a": 1.0, "b": 1000.0}, z_max=27.7)
    # At exactly the limit: accepted (2.0 lies ln 2 / 0.25 away).
    assert not norm_outliers([1.0] * 7, {"a": 1.0, "b": 2.0}, z_max=math.log(2.0) / 0.25)
    assert norm_outliers([1.0] * 7, {"a": 1.0, "b": 2.0}, z_max=math.log(2.0) / 0.25 - 1e-9)
    # 1.1 is 0.095 in logs: 0.38 scales of 0.25, nothing (with no floor it would be huge).
    assert not norm_outliers([1.0] * 8, {"a": 1.1}, z_max=1.0)


def test_a_zero_norm_is_an_outlier():
    out = norm_outliers([1.0] * 8, {"a": 1.0, "b": 0.0, "c": 1.0}, z_max=12)
    assert [(k, z) for k, _, z in out] == [("b", math.inf)]


def test_too_small_a_cohort_judges_nothing():
    # Seven positive norms in all: one short of the minimum. Zeros do not count.
    assert not norm_outliers([1.0] * 5 + [0.0] * 5, {"a": 1.0, "b": 1000.0}, z_max=12)
    assert norm_outliers([1.0] * 6, {"a": 1.0, "b": 1000.0}, z_max=12)


def test_only_a_minority_of_a_step_can_be_refused():
    history = [1.0] * 8
    assert not norm_outliers(history, {"a": 1000.0, "b": 1000.0, "c": 1.0}, z_max=12)
    half = norm_outliers(history, {"a": 1000.0, "b": 1.0}, z_max=12)
    assert [k for k, _, _ in half] == ["a"]  # exactly half is still a minority's refusal


def test_payload_check_refuses_a_missing_or_non_finite_payload():
    cfg = load_run_config(overrides={"nz": 16, "ngf": 8, "ndf": 8})
    g, d = build_models(cfg.model, 0)
    screening = Screening(1, cfg, g, d)
    tensors = unit_gradients(g, d, torch.zeros(2, 1, 32, 32), 1, cfg.nz).tensors
    assert set(screening.check(pack(tensors), "both")) == set(tensors)
    with pytest.raises(PayloadError, match="no payload"):
        screening.check(None, "both")
    for bad in (float("nan"), float("inf")):
        broken = dict(tensors)
        broken["buf.D.main.3.running_var"] = broken["buf.D.main.3.running_var"].clone()
        broken["buf.D.main.3.running_var"][0] = bad
        with pytest.raises(PayloadError, match="NaN or infinite"):
            screening.check(pack(broken), "both")


def test_buffers_that_never_moved_are_judged_far_below_the_cohort():
    """Running means left at version 0's zeros imply batches whose mean is exactly 0. The
    summary is then a tiny positive number, so the cohort check weighs it on its log scale
    (far below, with a finite z) and counts it in the cohort, as any other value."""
    prior = {"buf.D.main.3.running_mean": torch.zeros(4)}
    value = batchnorm_stats({"buf.D.main.3.running_mean": torch.zeros(4)}, prior)[
        "bn.D.main.3.running_mean"
    ]
    assert 0 < value < 1e-11
    out = norm_outliers([0.1] * 6, {"a": 0.1, "b": value}, z_max=12)
    assert [k for k, _, z in out if math.isfinite(z)] == ["b"]


def test_a_payload_over_the_runs_limit_is_refused_before_it_is_read():
    """The database refuses an oversized upload at the door; the coordinator checks the
    size again before parsing a header it did not write. The limit itself is allowed."""
    cfg = load_run_config(overrides={"nz": 16, "ngf": 8, "ndf": 8})
    g, d = build_models(cfg.model, 0)
    blob = pack(unit_gradients(g, d, torch.zeros(2, 1, 32, 32), 1, cfg.nz).tensors)
    tight = Screening(1, cfg.replace(max_payload_bytes=len(blob) - 1), g, d)
    with pytest.raises(PayloadError, match=rf"exceeds the limit of {len(blob) - 1}$"):
        tight.check(blob, "both")
    assert Screening(1, cfg.replace(max_payload_bytes=len(blob)), g, d).check(blob, "both")


def test_the_norm_history_judges_by_the_recent_norms_only():
    """Gradient norms drift over a run. The history keeps the last NORM_HISTORY norms of each
    (phase, statistic), so that after the norms of honest results have grown 1000x, they are
    judged against one another, not against the norms of the run's first steps."""
    cfg = load_run_config(overrides={"nz": 16, "ngf": 8, "ndf": 8})
    g, d = build_models(cfg.model, 0)
    screening = Screening(1, cfg, g, d)
    history = screening._history("both", "norm.D")
    history.extend([1.0] * 200)
    history.extend([1000.0] * NORM_HISTORY)
    assert list(history) == [1000.0] * NORM_HISTORY
    assert screening._history("both", "norm.D") is history  # one history, kept
    assert not norm_outliers(history, {"a": 1000.0, "b": 1000.0}, z_max=12)
    # Against every norm seen since the start, a result of today's size would be refused:
    unbounded = [1.0] * 200 + [1000.0] * NORM_HISTORY
    assert [k for k, _, _ in norm_outliers(unbounded, {"a": 1000.0, "b": 1.0}, z_max=12)] == ["a"]


@pytest.mark.parametrize("prior", [{}, {"buf.D.main.3.running_var": torch.ones(2)}])
def test_a_variance_of_zero_is_refused_like_a_negative_one(prior):
    """A running variance mixes the version's (positive) with the batches' (never negative),
    so it is never exactly 0, and BatchNorm divides by it: 0 is refused like a negative
    variance, with or without the version's statistics to judge by (the local rule has
    none)."""
    for bad in (0.0, -1.0):
        # the student is told which statistic
        with pytest.raises(
            PayloadError, match=r"^BatchNorm statistic D\.main\.3\.running_var holds"
        ):
            batchnorm_stats(
                {
                    # not in either prior: the checks must go on to the next statistic
                    "buf.D.main.3.running_mean": torch.zeros(2),
                    "buf.D.main.3.running_var": torch.tensor([1.0, bad]),
                },
                prior,
            )
    assert batchnorm_stats({"buf.D.main.3.running_var": torch.tensor([1.0, 1e-30])}, {}) == {}


@pytest.mark.parametrize(
    "key, passes", [("buf.G.main.1.running_var", 1), ("buf.D.main.3.running_var", 2)]
)
def test_a_variance_no_batch_could_give_is_refused_beyond_rounding_only(key, passes):
    """r = k x prior + (1 - k) x b with k = 0.9 ** passes (G's statistics see one forward
    pass, D's two): b is recovered exactly, and a batch variance b below zero by more than
    1e-4 x (prior + 1) is refused; within that margin (float32 rounding: under 1e-6 here) it
    is taken. A prior of 1 makes the margin 2e-4."""
    k = 0.9**passes
    prior = {key: torch.ones(2)}

    def running(b: float) -> dict[str, torch.Tensor]:
        return {key: torch.tensor([k + (1 - k) * b, k + (1 - k) * 0.5])}

    reason = (
        rf"^BatchNorm statistic {key[4:]} cannot come from any batch of this version "
        r"\(it implies a negative batch variance\)$"
    )
    with pytest.raises(PayloadError, match=reason):
        batchnorm_stats(running(-2.5e-4), prior)
    stats = batchnorm_stats(running(-1.5e-4), prior)
    assert stats[f"bn.{key[4:]}"] == pytest.approx(math.sqrt((1.5e-4**2 + 0.25) / 2), rel=1e-5)
