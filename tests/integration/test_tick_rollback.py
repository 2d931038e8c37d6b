"""A tick is one transaction, but the optimiser step it takes happens in memory, before the
commit. When the transaction rolls back after the step (here: a lock some session holds on
a row the step must update, so the tick gives way), the coordinator must drop that step and
be back at the committed version; otherwise the next tick steps again on top of it, and
every later version is trained from weights no version ever published."""

import logging
import time

import pytest
import torch

from ganpool.coordinator import Coordinator
from ganpool.store import Store, connect
from tests.helpers import FakeStudent, make_run
from tests.security.classroom import Student


def _snapshot(coordinator: Coordinator) -> dict[str, torch.Tensor]:
    state = coordinator.round.state
    tensors = state.weights() | {f"opt.{k}": v for k, v in state.optimizer_tensors().items()}
    return {k: v.detach().clone() for k, v in tensors.items()}


def _committed_version(dsn: str, run_id: int) -> int:
    store = Store(connect(dsn))
    try:
        return store.one("run_state", run_id=run_id)["current_version"]
    finally:
        store.close()


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), f"{name} moved"


def test_a_step_rolled_back_after_it_was_taken_leaves_the_committed_state(embedded_db):
    run = make_run(embedded_db, unit_size=50, results_per_step=2)
    coordinator = Coordinator(embedded_db, run)
    students, holder = [], None
    try:
        coordinator.start()
        committed = _snapshot(coordinator)
        students = [FakeStudent(embedded_db, run, name) for name in ("a", "b")]
        holder = connect(embedded_db, autocommit=False)
        for student in students:
            assert student.submit(student.claim())["accepted"]
        # Counting the step's images into its epoch comes after the optimiser step.
        held = holder.execute(
            "SELECT epoch FROM epochs WHERE run_id = %s FOR UPDATE", (run.id,)
        ).fetchall()
        assert held, "no epoch row to hold"
        coordinator.collect()
        assert coordinator.tick() is False  # gave way to the lock after a second
        assert coordinator.round.dirty, "the lock stopped the tick before its step was taken"
        assert coordinator.version == 0
        assert _committed_version(embedded_db, run.id) == 0, "the rolled-back step was committed"
        _assert_same(_snapshot(coordinator), committed)

        holder.rollback()  # the lock goes: the next tick takes the step, once
        coordinator.collect()
        coordinator.tick()
        assert coordinator.version == 1
        stepped = _snapshot(coordinator)
        assert any(not torch.equal(stepped[k], v) for k, v in committed.items())
    finally:
        if holder is not None:
            holder.close()
        for student in students:
            student.close()
        coordinator.close()


def test_a_tick_that_fails_after_its_step_leaves_the_committed_state(embedded_db, monkeypatch):
    """Any error after the step rolls the tick back (here: writing the step's metrics fails);
    the connection is sound, so the coordinator reloads the committed state at once."""
    run = make_run(embedded_db, unit_size=50, results_per_step=2)
    coordinator = Coordinator(embedded_db, run)
    students = []
    try:
        coordinator.start()
        committed = _snapshot(coordinator)
        students = [FakeStudent(embedded_db, run, name) for name in ("a", "b")]
        for student in students:
            assert student.submit(student.claim())["accepted"]

        def fail(*args, **kwargs):
            raise RuntimeError("the step's metrics could not be written")

        monkeypatch.setattr(coordinator.store, "insert_step_metrics", fail)
        coordinator.collect()
        with pytest.raises(RuntimeError, match="metrics"):
            coordinator.tick()
        assert not coordinator.store.broken and not coordinator.store.closed
        assert coordinator.version == 0
        _assert_same(_snapshot(coordinator), committed)

        monkeypatch.undo()
        coordinator.collect()
        coordinator.tick()
        assert coordinator.version == 1
        assert _committed_version(embedded_db, run.id) == 1
    finally:
        for student in students:
            student.close()
        coordinator.close()


def _age_pending_units(dsn: str, run_id: int) -> None:
    """As if the pending units had waited past the patience for their copies."""
    with connect(dsn) as conn:
        conn.execute(
            "UPDATE work_units SET created_at = now() - interval '1 hour' "
            "WHERE run_id = %s AND state = 'pending'",
            (run_id,),
        )


def _skipped(caplog) -> bool:
    return any("skipping G's step" in r.getMessage() for r in caplog.records)


def test_a_skipped_g_step_rolled_back_after_it_was_published_leaves_the_committed_version(
    embedded_db, caplog
):
    """A G phase refused by every student is published as it is, without a step: the weights
    do not move, but the version does. When that tick then gives way (here: to a lock on the
    epoch row, which only the next D version's units update), the coordinator must be back
    at the committed version, and the skip must then happen once."""
    caplog.set_level(logging.WARNING, logger="ganpool")
    run = make_run(embedded_db, unit_size=10, results_per_step=1, update_rule="alternating")
    coordinator = Coordinator(embedded_db, run)
    student, holder = None, None
    try:
        coordinator.start()
        student = Student(embedded_db, run, "only")  # computes each phase's own result
        while (unit := student.claim()) is not None:  # D
            assert student.submit(unit)["accepted"]
        coordinator.collect()
        coordinator.tick()
        assert coordinator.version == 1
        assert student.submit(student.claim(), payload=b"not safetensors")["accepted"]  # G
        coordinator.collect()
        coordinator.tick()
        assert coordinator.version == 1  # refused; its copies may not go back to this student
        # NO KEY UPDATE: the copies' inserts (a foreign key check) pass, an UPDATE waits.
        holder = connect(embedded_db, autocommit=False)
        held = holder.execute(
            "SELECT epoch FROM epochs WHERE run_id = %s FOR NO KEY UPDATE", (run.id,)
        ).fetchall()
        assert held, "no epoch row to hold"
        for _ in range(12):
            _age_pending_units(embedded_db, run.id)
            assert coordinator.tick() is False
            if _skipped(caplog):
                break
        assert _skipped(caplog), "the G phase was never skipped"
        assert coordinator.version == 1, "the rolled-back skip is still in memory"
        assert _committed_version(embedded_db, run.id) == 1, "the rolled-back skip was committed"

        holder.rollback()  # the lock goes: the skip happens, once
        for _ in range(12):
            _age_pending_units(embedded_db, run.id)
            coordinator.tick()
            if coordinator.version != 1:
                break
        assert coordinator.version == 2
    finally:
        if holder is not None:
            holder.close()
        if student is not None:
            student.close()
        coordinator.close()


def test_a_unit_a_student_held_locked_through_a_step_is_cancelled_at_a_later_tick(
    embedded_db,
):
    """A step cancels its version's other units, but skips a row some session holds locked
    (never wait on a student). A later tick catches up on it, so no unit of a past version
    stays claimed until its lease runs out."""
    run = make_run(embedded_db, unit_size=50, results_per_step=2, step_deadline_s=1)
    coordinator = Coordinator(embedded_db, run)
    students, holder = [], None
    try:
        coordinator.start()
        students = [FakeStudent(embedded_db, run, name) for name in ("a", "b")]
        first, second = (s.claim() for s in students)
        holder = connect(embedded_db, autocommit=False)
        holder.execute(
            "SELECT id FROM work_units WHERE id = %s FOR NO KEY UPDATE", (second["unit_id"],)
        )
        assert students[0].submit(first)["accepted"]
        time.sleep(1.2)  # past the deadline: the step goes ahead with one result
        coordinator.collect()
        coordinator.tick()
        assert coordinator.version == 1

        def state() -> str:
            with connect(embedded_db) as conn:
                return conn.execute(
                    "SELECT state FROM work_units WHERE id = %s", (second["unit_id"],)
                ).fetchone()["state"]

        assert state() == "claimed"  # skipped while locked
        holder.rollback()
        coordinator.tick()
        assert state() == "cancelled"
    finally:
        if holder is not None:
            holder.close()
        for student in students:
            student.close()
        coordinator.close()
