"""The rules of the game, step by step: leases, staleness, validation, dataset checks."""

import time

import pytest
import torch
from safetensors.torch import load

from ganpool.coordinator import Coordinator
from ganpool.errors import DatasetMismatch
from ganpool.protocol.vocabulary import RejectionReason
from ganpool.runs import control_run
from ganpool.serialization.tensors import pack
from ganpool.store import Store, connect
from ganpool.worker import Worker
from tests.helpers import FakeStudent, make_run


def _q(dsn, sql, *args):
    with connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def _result_statuses(dsn, unit: dict) -> list[str]:
    return [
        r["status"]
        for r in _q(dsn, "SELECT status FROM results WHERE unit_id = %s", unit["unit_id"])
    ]


def _with_nan(student: FakeStudent, unit: dict) -> bytes:
    """The student's genuine payload for `unit`, one gradient entry made NaN."""
    tensors = load(student.payload(unit)["payload"])
    tensors["grad.D.main.0.weight"][0, 0, 0, 0] = float("nan")
    return pack(tensors)


def test_claims_are_exclusive_and_leases_use_the_servers_clock(db):
    run = make_run(db, unit_size=10, results_per_step=3)
    coordinator = Coordinator(db, run)
    coordinator.start()
    a, b = FakeStudent(db, run, "a"), FakeStudent(db, run, "b")
    units = [a.claim(), b.claim(), a.claim()]
    assert len({u["unit_id"] for u in units}) == 3
    assert a.claim() is None  # only N = 3 units per version are issued
    rows = _q(
        db, "SELECT lease_expires_at - claimed_at AS lease FROM work_units WHERE state = 'claimed'"
    )
    assert all(r["lease"].total_seconds() == pytest.approx(60.0) for r in rows)
    a.close(), b.close(), coordinator.close()


def test_a_silent_worker_loses_its_unit_which_is_reissued_and_applied_once(db):
    run = make_run(db, unit_size=10, results_per_step=1, lease_s=1.0)
    coordinator = Coordinator(db, run)
    coordinator.start()
    silent, healthy = FakeStudent(db, run, "silent"), FakeStudent(db, run, "healthy")
    lost = silent.claim()
    assert healthy.claim() is None
    time.sleep(1.3)  # no heartbeat: the lease runs out on the server's clock
    coordinator.tick()  # sweeps expired leases
    again = healthy.claim()
    assert again["unit_id"] == lost["unit_id"] and again["attempt"] == lost["attempt"] + 1
    assert healthy.submit(again)["accepted"]

    late = silent.submit(lost)
    assert not late["accepted"]
    assert "lease lost" in late["reason"]
    coordinator.tick()
    assert coordinator.version == 1
    applied = _q(db, "SELECT unit_id FROM version_contributions")
    assert [r["unit_id"] for r in applied] == [lost["unit_id"]]
    assert (
        _q(db, "SELECT reissued FROM work_units WHERE id = %s", lost["unit_id"])[0]["reissued"] == 1
    )
    assert any("lease lost" in r for r in silent.rejections())
    silent.close(), healthy.close(), coordinator.close()


def test_heartbeats_keep_the_lease(db):
    run = make_run(db, unit_size=10, results_per_step=1, lease_s=1.0)
    coordinator = Coordinator(db, run)
    coordinator.start()
    a = FakeStudent(db, run, "a")
    unit = a.claim()
    for _ in range(4):
        time.sleep(0.4)
        assert a.store.one(
            "heartbeat", worker_id=a.id, unit_id=unit["unit_id"], attempt=unit["attempt"]
        )["holds"]
        coordinator.tick()
    assert a.submit(unit)["accepted"]
    a.close(), coordinator.close()


def test_a_late_result_is_rejected_with_its_reason_and_its_images_go_back(db):
    run = make_run(db, unit_size=10, results_per_step=2, units_per_step=3)
    coordinator = Coordinator(db, run)
    coordinator.start()
    students = [FakeStudent(db, run, n) for n in ("a", "b", "slow")]
    units = [s.claim() for s in students]
    for s, u in zip(students[:2], units[:2], strict=True):
        assert s.submit(u)["accepted"]
    coordinator.tick()  # N = 2 results in: step to version 1
    assert coordinator.version == 1

    late = students[2].submit(units[2])
    assert not late["accepted"]
    assert "stale: computed on version 0" in late["reason"]
    assert "version 1" in late["reason"]
    assert students[2].rejections() == [late["reason"]]
    # The images went back to epoch 0 and the next version's first unit reissues them.
    nxt = students[0].claim()
    assert nxt["version"] == 1 and nxt["indices"] == units[2]["indices"]
    for s in students:
        s.close()
    coordinator.close()


def test_a_result_that_lands_during_the_step_is_rejected_as_stale_at_the_next_tick(db):
    """A submission still open while the coordinator steps holds its unit, so the step
    cannot cancel it: the result commits on a version the run has left. The next tick
    rejects it with its reason, and its images go back to the epoch."""
    run = make_run(db, unit_size=10, results_per_step=2, units_per_step=3)
    coordinator = Coordinator(db, run)
    students = [FakeStudent(db, run, n) for n in ("a", "b", "slow")]
    try:
        coordinator.start()
        units = [s.claim() for s in students]
        slow, late = students[2], units[2]
        with slow.store.tx():
            assert slow.submit(late)["accepted"]  # not committed: its unit stays locked
            for s, u in zip(students[:2], units[:2], strict=True):
                assert s.submit(u)["accepted"]
            coordinator.collect()
            coordinator.tick()
            assert coordinator.version == 1
        assert _result_statuses(db, late) == ["submitted"]

        coordinator.tick()
        assert coordinator.version == 1
        reason = (
            "stale: computed on version 0 but the run moved on to version 1; "
            "its images went back to the epoch"
        )
        assert slow.rejections() == [reason]
        assert _result_statuses(db, late) == ["rejected"]
        unit = "SELECT state, images_returned FROM work_units WHERE id = %s"
        assert _q(db, unit, late["unit_id"]) == [{"state": "rejected", "images_returned": True}]
        assert not students[0].rejections() and not students[1].rejections()
    finally:
        for s in students:
            s.close()
        coordinator.close()


def test_a_result_waiting_when_the_run_ends_is_rejected_with_that_reason(db):
    """A run that ends on its time limit between steps: the result waiting for the next step
    is never applied, and its student is told so, not left with a result forever waiting; a
    student still computing is told the run has finished."""
    run = make_run(db, unit_size=10, results_per_step=2, max_seconds=600.0)
    coordinator = Coordinator(db, run)
    a, b = FakeStudent(db, run, "a"), FakeStudent(db, run, "b")
    try:
        coordinator.start()
        waiting, unfinished = a.claim(), b.claim()
        assert a.submit(waiting)["accepted"]
        coordinator.collect()
        assert coordinator.tick() is False  # one result of the two: no step yet
        _q(db, "UPDATE runs SET started_at = started_at - interval '11 minutes' RETURNING id")
        assert coordinator.tick() is True  # the run's ten minutes are up
        assert coordinator.version == 0
        assert a.rejections() == [RejectionReason.RUN_ENDED]
        assert _result_statuses(db, waiting) == ["rejected"]
        assert not b.rejections()  # nothing submitted, nothing to tell
        # A unit the end cancelled: its late result is refused as the run's end, not as stale
        # ("moved on to version 0" would say the run went on without it).
        late = b.submit(unfinished)
        assert (late["accepted"], late["reason"]) == (False, "the run has finished")
        assert b.rejections() == ["the run has finished"]
    finally:
        a.close(), b.close(), coordinator.close()


def test_a_tick_says_the_run_is_over_once_the_instructor_stops_it(db):
    """serve() ends when a tick says the run is over: a stopped run must say so, or the
    coordinator would go on ticking a run no one can resume."""
    run = make_run(db, unit_size=10, results_per_step=2)
    coordinator = Coordinator(db, run)
    store = Store(connect(db))
    try:
        coordinator.start()
        assert coordinator.tick() is False  # running, and waiting for results
        control_run(store, run, "stop")
        assert coordinator.tick() is True
    finally:
        store.close()
        coordinator.close()


def test_the_last_version_of_a_run_is_checkpointed_whatever_the_interval(db):
    """At the end of a run the optimiser state is saved even when the checkpoint interval has
    not come round: the run's last version must not depend on replaying payloads."""
    run = make_run(db, unit_size=10, results_per_step=2, max_steps=1)
    coordinator = Coordinator(db, run, checkpoint_s=3600)
    students = [FakeStudent(db, run, name) for name in ("a", "b")]
    try:
        coordinator.start()
        for student in students:
            assert student.submit(student.claim())["accepted"]
        assert coordinator.tick() is True  # the only step, and the end of the run
        saved = _q(db, "SELECT version FROM coordinator_state WHERE run_id = %s", run.id)
        assert saved == [{"version": 1}]
    finally:
        for student in students:
            student.close()
        coordinator.close()


def test_a_run_with_an_epoch_limit_ends_when_its_images_are_in(db):
    """`max_epochs` alone ends a run: 100 faces in units of 50, one result a step; the
    second step completes the epoch and is the last."""
    run = make_run(db, unit_size=50, results_per_step=1, max_steps=0, max_epochs=1)
    coordinator = Coordinator(db, run)
    students = [FakeStudent(db, run, name) for name in ("a", "b")]
    try:
        coordinator.start()
        assert coordinator.tick() is False
        for version, student in enumerate(students, start=1):
            unit = student.claim()
            assert len(unit["indices"]) == 50
            assert student.submit(unit)["accepted"]
            over = coordinator.tick()
            assert coordinator.version == version
            assert over is (version == 2)  # half an epoch in, it goes on
        status = _q(db, "SELECT status FROM runs WHERE id = %s", run.id)
        assert status == [{"status": "finished"}]
    finally:
        for student in students:
            student.close()
        coordinator.close()


def test_a_run_out_of_time_ends_at_the_next_tick_even_without_a_step(db):
    """`max_seconds` ends a run whether or not results come in: the tick after the time is
    up finishes it, and no unit stays open for a student to compute in vain."""
    run = make_run(db, unit_size=50, results_per_step=2, max_steps=0, max_seconds=1)
    coordinator = Coordinator(db, run)
    student = FakeStudent(db, run, "a")
    try:
        coordinator.start()
        assert coordinator.tick() is False
        unit = student.claim()
        assert unit is not None
        time.sleep(1.2)
        assert coordinator.tick() is True
        assert coordinator.version == 0
        status = _q(db, "SELECT status FROM runs WHERE id = %s", run.id)
        assert status == [{"status": "finished"}]
        states = _q(db, "SELECT DISTINCT state FROM work_units WHERE run_id = %s", run.id)
        assert states == [{"state": "cancelled"}]
    finally:
        student.close()
        coordinator.close()


def test_a_step_waits_for_the_spot_check_twins_being_computed(db):
    """With every unit twinned, both originals in is not enough: the step waits while the
    twins are being computed (within the patience), then takes them in."""
    run = make_run(db, unit_size=10, results_per_step=2, spot_check_rate=1.0)
    coordinator = Coordinator(db, run)
    a, b = FakeStudent(db, run, "a"), FakeStudent(db, run, "b")
    try:
        coordinator.start()
        first, second, second_twin, first_twin = a.claim(), b.claim(), a.claim(), b.claim()
        assert a.submit(first)["accepted"] and b.submit(second)["accepted"]
        coordinator.collect()
        coordinator.tick()
        assert coordinator.version == 0, "the step did not wait for the twins"
        assert a.submit(second_twin)["accepted"] and b.submit(first_twin)["accepted"]
        coordinator.collect()
        coordinator.tick()
        assert coordinator.version == 1
        checks = _q(db, "SELECT agreed FROM spot_checks WHERE run_id = %s", run.id)
        assert checks == [{"agreed": True}] * 2
    finally:
        a.close()
        b.close()
        coordinator.close()


def test_bad_payloads_are_rejected_with_reasons_never_applied(db):
    run = make_run(db, unit_size=10, results_per_step=2)
    coordinator = Coordinator(db, run, checkpoint_s=0)  # a checkpoint after every step
    coordinator.start()
    good, bad = FakeStudent(db, run, "good"), FakeStudent(db, run, "bad")
    u1, u2 = good.claim(), bad.claim()
    assert bad.submit(u2, payload=_with_nan(bad, u2))["accepted"]  # accepted at the door...
    assert good.submit(u1)["accepted"]
    coordinator.tick()
    # ...but never applied: the step used the good result only.
    assert coordinator.version == 1
    contributions = _q(db, "SELECT unit_id, weight FROM version_contributions")
    assert contributions == [{"unit_id": u1["unit_id"], "weight": 1.0}]
    assert "NaN or infinite" in bad.rejections()[0]
    assert _q(db, "SELECT count(*) AS n FROM result_payloads")[0]["n"] == 0
    reissued = good.claim()
    assert reissued["version"] == 1 and reissued["indices"] == u2["indices"]
    assert torch.isfinite(coordinator.state.weights()["D.main.0.weight"]).all()
    good.close(), bad.close(), coordinator.close()


def test_a_second_coordinator_is_refused(db):
    from ganpool.errors import GanpoolError

    run = make_run(db)
    first = Coordinator(db, run)
    with pytest.raises(GanpoolError, match="another coordinator is already running"):
        Coordinator(db, run)
    first.close()
    Coordinator(db, run).close()  # free again once the first has gone


def _folder(path, n, seed):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (path / "img_align_celeba").mkdir(parents=True)
    for i in range(n):
        arr = rng.integers(0, 255, size=(218, 178, 3), dtype=np.uint8)  # CelebA's aligned size
        Image.fromarray(arr).save(path / "img_align_celeba" / f"{i + 1:06d}.jpg")
    return path


def test_a_worker_with_a_mismatched_dataset_refuses_to_start(db, tmp_path):
    from ganpool.data.datasets import ImageFolder
    from ganpool.runs import create_run
    from ganpool.settings import load_run_config

    mine = _folder(tmp_path / "instructor", 6, seed=1)
    other = _folder(tmp_path / "student", 7, seed=2)
    cfg = load_run_config(preset="dcgan64", overrides={"unit_size": 2, "ngf": 8, "ndf": 8})
    store = Store(connect(db))
    run = create_run(store, "celeba", cfg, ImageFolder(mine, 64, 3))
    store.close()
    with pytest.raises(DatasetMismatch, match="does not match the run's"):
        Worker(db, run, "student", data_path=other)
    w = Worker(db, run, "instructor-copy", data_path=mine)  # the same files are fine
    assert len(w.dataset) == 6
    assert w.dataset.batch([0, 5]).shape == (2, 3, 64, 64)


def test_a_unit_refused_everywhere_gives_its_images_back_before_the_next_step(db):
    """Between steps, once a refused unit's copies have run out, its images go back to the
    epoch at once: the next unit of the same version reissues them, not fresh images."""
    from ganpool.coordinator.issuing import MAX_COPIES

    # No backup copies of the unit held meanwhile (the patience is then the lease).
    run = make_run(db, unit_size=10, results_per_step=1, backup_after=0)
    coordinator = Coordinator(db, run)
    bad = FakeStudent(db, run, "bad")

    def submit_nan(unit):
        assert bad.submit(unit, payload=_with_nan(bad, unit))["accepted"]

    def originals():
        rows = _q(
            db,
            "SELECT id, indices FROM work_units WHERE version = 0 AND backup_of IS NULL"
            " AND twin_of IS NULL ORDER BY id",
        )
        return [(r["id"], sorted(r["indices"])) for r in rows]

    try:
        coordinator.start()
        refused = bad.claim()
        submit_nan(refused)
        coordinator.collect()
        coordinator.tick()  # its only result refused: no step, a fresh unit tops up
        assert coordinator.version == 0
        held = bad.claim()
        assert held["unit_id"] != refused["unit_id"]
        # The refused unit's copies: no other student can claim them, so each is dropped
        # once it has waited past the patience (aged here), until none is left to make.
        for _ in range(MAX_COPIES + 1):
            _q(
                db,
                "UPDATE work_units SET created_at = created_at - interval '1 hour'"
                " WHERE backup_of IS NOT NULL RETURNING id",
            )
            coordinator.tick()
        copies = _q(db, "SELECT state FROM work_units WHERE backup_of = %s", refused["unit_id"])
        assert [c["state"] for c in copies] == ["cancelled"] * MAX_COPIES
        submit_nan(held)  # the fresh unit is refused too: the version needs another unit
        coordinator.collect()
        coordinator.tick()
        assert coordinator.version == 0
        units = originals()
        assert [u for u, _ in units[:2]] == [refused["unit_id"], held["unit_id"]]
        assert len(units) == 3
        assert units[2][1] == sorted(refused["indices"]), "fresh images before given-back ones"
        assert not set(held["indices"]) & set(refused["indices"])
        assert torch.isfinite(coordinator.state.weights()["D.main.0.weight"]).all()
    finally:
        bad.close()
        coordinator.close()
