"""Stragglers and dropouts with the default settings: a unit held too long gets a backup
copy (MapReduce's backup tasks) that an idle worker computes, so the class never waits for
its slowest laptop, nor for a lease to run out. Exactly once still holds: of a unit and its
copies, one result is applied."""

from __future__ import annotations

import time

import pytest

from ganpool.worker import Worker
from ganpool.worker.unit import compute_by_rule
from tests.helpers import make_run
from tests.security.classroom import LiveClass, Student

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]


def _defaults_run(dsn: str, name: str, **overrides):
    # The class defaults (60 s lease, N = 2, the alternating rule), on the CPU preset.
    return make_run(dsn, name, update_rule="alternating", **overrides)


def test_a_dropout_mid_step_completes_through_a_backup_unit(embedded_db, capsys):
    run = _defaults_run(embedded_db, "dropout")
    assert run.config.lease_s == 60 and run.config.backup_after > 0
    live = LiveClass(embedded_db, run, honest=2)
    laptop = Student(embedded_db, run, "laptop")
    try:
        live.wait_version(6)
        unit = laptop.claim(timeout=60)
        assert unit is not None
        t0 = time.monotonic()
        # The lid closes: no heartbeat, no result, the connection just sits there.
        live.wait_version(unit["version"] + 1, timeout=run.config.lease_s)
        took = time.monotonic() - t0
        assert took < run.config.lease_s / 4, took
        rows = live.query(
            "SELECT id, state, reissued, backup_of FROM work_units WHERE id = %s OR backup_of = %s",
            unit["unit_id"],
            unit["unit_id"],
        )
        original = next(r for r in rows if r["id"] == unit["unit_id"])
        applied = [r for r in rows if r["state"] == "applied"]
        assert [r["backup_of"] for r in applied] == [unit["unit_id"]]  # the copy, once
        assert original["reissued"] == 0  # not by lease expiry: the lease still ran
        assert original["state"] == "cancelled"
        with capsys.disabled():
            print(
                f"\n[straggler] dropout mid-step, default settings: the step completed "
                f"{took:.1f} s after the claim, through a backup copy "
                f"(lease {run.config.lease_s:.0f} s)"
            )
    finally:
        laptop.close()
        live.close()


def slow_laptop(*args):
    """An honest worker's computation, five seconds slower per unit than the rest of the
    class's."""
    time.sleep(5.0)
    return compute_by_rule(*args)


def _rate_with_a_slow_laptop(dsn: str, name: str, backup_after: float) -> float:
    run = _defaults_run(dsn, name, backup_after=backup_after, unit_size=10)
    live = LiveClass(dsn, run, honest=2)
    slow = Worker(dsn, run, "slow", device="cpu", poll_s=0.1, compute_unit=slow_laptop)
    live.workers.append(slow)
    live.threads.start(slow.serve)
    try:
        live.wait_version(2, timeout=60)
        return live.rate(12.0)
    finally:
        live.close()


def test_the_class_does_not_wait_for_its_slowest_laptop(embedded_db, capsys):
    with_backups = _rate_with_a_slow_laptop(embedded_db, "backups", backup_after=3.0)
    without = _rate_with_a_slow_laptop(embedded_db, "no-backups", backup_after=0.0)
    with capsys.disabled():
        print(
            f"\n[straggler] one laptop 5 s slower per unit among 2 workers: "
            f"{with_backups:.2f} versions/s with backup units, {without:.2f} without"
        )
    assert with_backups > 2 * without, (with_backups, without)
