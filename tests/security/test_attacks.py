"""Malicious workers in a live run (coordinator and workers in threads, real PostgreSQL)."""

from __future__ import annotations

import psycopg
import pytest
import torch

from ganpool.coordinator import Coordinator
from ganpool.training.gradients import UnitResult
from ganpool.worker import Worker
from ganpool.worker.unit import ComputeUnit, compute_by_rule
from tests.helpers import Threads, make_run

STEPS = 6


def _scaled(factor: float) -> ComputeUnit:
    """A cheat: the honest unit's gradients, times `factor`."""

    def compute(*args) -> UnitResult:
        r = compute_by_rule(*args)
        r.tensors = {k: v * factor if k.startswith("grad.") else v for k, v in r.tensors.items()}
        return r

    return compute


scaled_1000 = _scaled(1000.0)
sign_flipper = _scaled(-1.0)


def _train(dsn, run, honest: int, cheat: ComputeUnit | None, cheat_may_be_refused=False):
    threads = Threads()
    coordinator = Coordinator(dsn, run, poll_s=0.1)
    threads.start(coordinator.serve)
    workers = [Worker(dsn, run, f"honest{i}", device="cpu", poll_s=0.1) for i in range(honest)]
    for w in workers:
        # The bounds below are for one bad result per step of four: no worker claims a
        # second unit of a step while it computes its first.
        w.claim_ahead = False
        threads.start(w.serve)
    cheater = None
    if cheat is not None:
        cheater = Worker(dsn, run, "cheat", device="cpu", poll_s=0.1, compute_unit=cheat)
        cheater.claim_ahead = False

        def serve_cheat() -> None:
            try:
                cheater.serve()
            except psycopg.errors.InsufficientPrivilege:
                if not cheat_may_be_refused:
                    raise

        threads.start(serve_cheat)
    threads.join(180)
    return coordinator, workers, cheater


def _adam_second_moment(coordinator) -> torch.Tensor:
    t = coordinator.state.optimizer_tensors()
    return torch.cat([v.reshape(-1) for k, v in sorted(t.items()) if k.endswith("exp_avg_sq")])


@pytest.mark.parametrize("rule", ["trimmed_mean", "clip"])
def test_one_1000x_worker_among_three_honest_ones(embedded_db, servers, rule):
    common = {"unit_size": 10, "results_per_step": 4, "max_steps": STEPS, "norm_z_max": 0.0}
    honest_run = make_run(embedded_db, "honest", **common)
    baseline, _, _ = _train(embedded_db, honest_run, honest=4, cheat=None)
    attacked_run = make_run(embedded_db, "attacked", aggregation=rule, **common)
    attacked, _, cheater = _train(embedded_db, attacked_run, honest=3, cheat=scaled_1000)
    assert attacked.version == STEPS  # training went on
    assert cheater.progress.units > 0  # and the attacker's results were part of it

    # The weights follow the honest run's. Adam bounds every single weight's move whatever
    # the gradients (by ~1.4 lr a step here), so the largest difference tells nothing: a
    # plain mean under this attack and a robust rule both reach ~2 lr x steps. The typical
    # weight does: measured (median |difference| / (lr x steps)) 0.06-0.09 under clip and
    # trimmed mean, 0.24 under the plain mean.
    lr = attacked_run.config.lr_g
    w_attacked, w_honest = attacked.state.weights(), baseline.state.weights()
    moved = torch.cat(
        [
            (w_attacked[k] - v).abs().reshape(-1)
            for k, v in w_honest.items()
            if v.is_floating_point() and "running" not in k
        ]
    )
    assert moved.median() <= 0.15 * lr * STEPS, moved.median().item() / (lr * STEPS)
    # Adam's memory is not poisoned: its second moments stay within 25x of the honest run's,
    # where a plain mean would multiply them by about a million (1000^2 / 4^2 ~ 6e4 at least).
    ratio = (_adam_second_moment(attacked).max() / _adam_second_moment(baseline).max()).item()
    assert ratio < 25, ratio


def test_the_plain_mean_is_poisoned_by_the_same_attack(embedded_db):
    """The control for the test above: without a robust rule, the attack does its damage."""
    common = {"unit_size": 10, "results_per_step": 4, "max_steps": 2, "norm_z_max": 0.0}
    baseline, _, _ = _train(embedded_db, make_run(embedded_db, "h", **common), honest=4, cheat=None)
    attacked, _, _ = _train(
        embedded_db, make_run(embedded_db, "a", **common), honest=3, cheat=scaled_1000
    )
    ratio = (_adam_second_moment(attacked).max() / _adam_second_moment(baseline).max()).item()
    assert ratio > 1e3, ratio


def test_a_sign_flipper_is_caught_by_spot_checks_held_out_and_disabled(embedded_db):
    run = make_run(
        embedded_db,
        "spot",
        unit_size=10,
        results_per_step=2,
        max_steps=10,
        spot_check_rate=1.0,
        disable_below_trust=0.3,
    )
    coordinator, _, flipper = _train(
        embedded_db, run, honest=2, cheat=sign_flipper, cheat_may_be_refused=True
    )
    assert coordinator.version == 10
    from ganpool.store import connect

    with connect(embedded_db) as conn:
        q = conn.execute
        ids = {r["name"]: r for r in q("SELECT id, name, trust, disabled FROM workers")}
        cheat = ids["cheat"]
        assert cheat["disabled"], "the flipper was not disabled"
        assert not ids["honest0"]["disabled"] and not ids["honest1"]["disabled"]
        # Bounded: caught within its first few units.
        cheat_results = q(
            "SELECT count(*) AS n FROM results WHERE worker_id = %s", (cheat["id"],)
        ).fetchone()["n"]
        assert cheat_results <= 10, cheat_results
        disagreements = q(
            "SELECT count(*) AS n FROM spot_checks WHERE NOT agreed AND %s IN (worker_a, worker_b)",
            (cheat["id"],),
        ).fetchone()["n"]
        assert disagreements >= 1
        # Every flipped result that was compared was held out, never applied.
        applied_checked = q(
            "SELECT count(*) AS n FROM version_contributions AS c JOIN spot_checks AS s "
            "ON s.unit_id = c.unit_id WHERE NOT s.agreed",
        ).fetchone()["n"]
        assert applied_checked == 0
        agreed = q("SELECT count(*) AS n FROM spot_checks WHERE agreed").fetchone()["n"]
        assert agreed >= 1  # honest twins agree (CPU results are bit-identical here)
        reasons = q("SELECT reason FROM rejections WHERE worker_id = %s", (cheat["id"],))
        assert any("spot check failed" in r["reason"] for r in reasons)
        distinct_peers = q(
            "SELECT count(DISTINCT worker_a + worker_b - %s) AS n FROM spot_checks "
            "WHERE NOT agreed AND %s IN (worker_a, worker_b)",
            (cheat["id"], cheat["id"]),
        ).fetchone()["n"]
        assert distinct_peers == 2
    assert flipper.progress.units <= 10
