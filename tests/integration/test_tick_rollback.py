"""A tick is one transaction, but the optimiser step it takes happens in memory, before the
commit. When the transaction rolls back after the step (here: a lock some session holds on
a row the step must update, so the tick gives way), the coordinator must drop that step and
be back at the committed version; otherwise the next tick steps again on top of it, and
every later version is trained from weights no version ever published."""

import pytest
import torch

from ganpool.coordinator import Coordinator
from ganpool.store import connect
from tests.helpers import FakeStudent, make_run


def _snapshot(coordinator: Coordinator) -> dict[str, torch.Tensor]:
    state = coordinator.round.state
    tensors = state.weights() | {f"opt.{k}": v for k, v in state.optimizer_tensors().items()}
    return {k: v.detach().clone() for k, v in tensors.items()}


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
        with connect(embedded_db) as conn:
            version = conn.execute(
                "SELECT current_version FROM runs WHERE id = %s", (run.id,)
            ).fetchone()["current_version"]
        assert version == 0, "the rolled-back step was committed"
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
        with connect(embedded_db) as conn:
            version = conn.execute(
                "SELECT current_version FROM runs WHERE id = %s", (run.id,)
            ).fetchone()["current_version"]
        assert version == 1
    finally:
        for student in students:
            student.close()
        coordinator.close()
