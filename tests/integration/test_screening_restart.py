"""A restarted coordinator screens as the one before it: the gradient norms its norm check
judges by are read back from the database, so a result with an absurd norm sent right after
a restart is refused rather than let through while the history builds up again."""

from __future__ import annotations

import statistics

import pytest

from ganpool.coordinator import Coordinator
from ganpool.coordinator.screening import MIN_NORM_COHORT, norm_outliers
from tests.helpers import make_run, train_distributed

pytestmark = pytest.mark.timeout(300)


def _norm_history(coordinator: Coordinator) -> dict[tuple[str, str], list[float]]:
    """(phase, "norm.G" / "norm.D") -> the norms remembered, sorted (the order within a step
    is the order results arrived in; BatchNorm statistics are not stored, so a restart does
    not get them back)."""
    return {
        key: sorted(values)
        for key, values in coordinator.screening.history.items()
        if key[1].startswith("norm.") and values
    }


def test_a_restarted_coordinator_reloads_the_norm_history(embedded_db):
    run = make_run(embedded_db, "restart-norms", unit_size=10, results_per_step=2, max_steps=6)
    first, _ = train_distributed(embedded_db, run, workers=2)
    before = _norm_history(first)
    first.close()
    # Both networks' norms, from more results than the check needs to judge.
    assert {stat for _, stat in before} == {"norm.G", "norm.D"}
    assert all(len(norms) >= MIN_NORM_COHORT for norms in before.values()), before

    second = Coordinator(embedded_db, run)
    try:
        assert _norm_history(second) == {}  # nothing before it resumes
        second.start()
        after = _norm_history(second)
        assert after.keys() == before.keys()
        for key, norms in after.items():  # stored as float4
            assert norms == pytest.approx(before[key], rel=1e-6), key
        # The check that depends on the history: of a step's two results, the one 1e12x the
        # median is refused at once, as it would have been before the restart (with no
        # history, two norms are too few to judge by).
        for (_, stat), norms in after.items():
            median = statistics.median(norms)
            step = {0: median, 1: 1e12 * median}
            assert norm_outliers([], step, second.cfg.norm_z_max) == []
            flagged = norm_outliers(norms, step, second.cfg.norm_z_max)
            assert [fam for fam, _, _ in flagged] == [1], (stat, norms, flagged)
    finally:
        second.close()
