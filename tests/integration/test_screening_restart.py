"""A restarted coordinator screens as the one before it: the gradient norms its norm check
judges by are read back from the database, so a result with an absurd norm sent right after
a restart is refused rather than let through while the history builds up again."""

from __future__ import annotations

import statistics

import pytest

from ganpool.coordinator import Coordinator
from ganpool.coordinator.screening import MIN_NORM_COHORT, norm_outliers
from ganpool.protocol.vocabulary import Phase
from tests.helpers import make_run, train_distributed
from tests.security.classroom import Student

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


def test_after_a_restart_each_phase_is_judged_by_its_own_reloaded_norms(embedded_db):
    """Under the alternating rule a step has a D phase and a G phase, each judged against its
    own history. A restarted coordinator screens each phase against the norms reloaded for
    that phase: a D gradient 10^6 times too large, sent right after the restart, is refused
    (judged against no history, two norms are too few to tell)."""
    run = make_run(
        embedded_db, "restart-alt", unit_size=10, results_per_step=2, update_rule="alternating"
    )
    first, second = Coordinator(embedded_db, run), None
    honest, mallory = Student(embedded_db, run, "honest"), Student(embedded_db, run, "mallory")
    try:
        first.start()
        assert MIN_NORM_COHORT <= 10
        while first.version < 10:  # five steps: ten norms of each phase
            for student in (honest, mallory):
                assert student.submit(student.claim())["accepted"]
            first.collect()
            first.tick()
        first.close()

        second = Coordinator(embedded_db, run)
        second.start()
        assert run.config.phase_of(second.version) == Phase.D
        mine, theirs = mallory.claim(), honest.claim()
        assert honest.submit(theirs)["accepted"]
        mallory.submit(mine, tamper=lambda t: {k: v * 1e6 if k.startswith("grad.") else v
                                               for k, v in t.items()})  # fmt: skip
        second.collect()
        second.tick()
        refused = mallory.rejections()
        assert refused and "D's gradient norm" in refused[-1], refused
    finally:
        honest.close()
        mallory.close()
        (second or first).close()
