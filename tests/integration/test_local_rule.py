"""The local update rule through a real PostgreSQL server, against `train-local`.

local_steps 3 x unit_size 10 = units of 30 images on 100 faces: 30, 30, 30, then 10 closes
the epoch (one short batch of a possible three), so units weigh 30 and 10 and a unit's
local steps differ in number. Rounds of 2 units: [30, 30], [30, 10], [30, 30]."""

import threading

import pytest
import torch

from ganpool.coordinator import Coordinator
from ganpool.data.datasets import builtin_faces
from ganpool.serialization.tensors import manifest_of, unpack
from ganpool.store import Store, connect
from ganpool.training.local import train_local
from ganpool.training.state import TrainingState
from ganpool.worker import Worker
from tests.helpers import Threads, make_run, train_distributed

LOCAL = {"update_rule": "local", "local_steps": 3, "unit_size": 10, "results_per_step": 2}


def _weights_at(dsn, run, version):
    with connect(dsn) as conn:
        blob = Store(conn).blob("weights_at", "weights", run_id=run.id, version=version)
    return unpack(blob, manifest_of(TrainingState(run.config).weights()))


def _assert_same(distributed: dict, reference: dict) -> None:
    assert set(distributed) == set(reference)
    for name, want in reference.items():
        # The same computation on the same CPU, the same codec, the same float64 sum and
        # outer step: nothing may differ at all.
        assert torch.equal(distributed[name], want), name


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("delta_dtype", "outer_delay"),
    [("float32", 0), ("int8", 1)],
    ids=["fp32-synchronous", "int8-delayed"],
)
def test_local_rule_distributed_equals_train_local(embedded_db, delta_dtype, outer_delay):
    run = make_run(
        embedded_db, max_steps=3, **LOCAL, delta_dtype=delta_dtype, outer_delay=outer_delay
    )
    coordinator, workers = train_distributed(embedded_db, run, workers=2, timeout=240)
    assert coordinator.version == 3
    dataset = builtin_faces(run.config.image_size, run.config.channels)
    reports = []
    state = train_local(run.config, dataset, 3, on_step=lambda r, _: reports.append(r))
    _assert_same(_weights_at(embedded_db, run, 3), state.weights())
    # The outer step moved both networks away from version 0 (a run that applied nothing
    # would also "agree" with a reference that applied nothing).
    initial = TrainingState(run.config).weights()
    for net in ("G", "D"):
        moved = [
            k
            for k in initial
            if k.startswith(net) and not torch.equal(initial[k], state.weights()[k])
        ]
        assert moved, net
    # Each image is counted once: 30 + 30, 30 + 10, 30 + 30 per round, as train-local says.
    assert [r.images for r in reports] == [60, 40, 60]
    with connect(embedded_db) as conn:
        q = conn.execute
        applied = q(
            "SELECT c.version, cardinality(u.indices) AS n, c.samples, u.epoch, u.indices "
            "FROM version_contributions AS c JOIN work_units AS u ON u.id = c.unit_id "
            "ORDER BY c.version, u.seq"
        ).fetchall()
        assert [(a["version"], a["n"]) for a in applied] == [
            (1, 30), (1, 30), (2, 30), (2, 10), (3, 30), (3, 30)
        ]  # fmt: skip
        assert all(a["samples"] == a["n"] for a in applied)  # credit: the unit's images
        first_epoch = sorted(i for a in applied if a["epoch"] == 0 for i in a["indices"])
        assert first_epoch == list(range(100))  # every image of epoch 0 exactly once
        assert q("SELECT images_applied FROM runs").fetchone()["images_applied"] == 160
        board = q(
            "SELECT sum(samples) AS images FROM version_contributions GROUP BY worker_id"
        ).fetchall()
        assert sum(b["images"] for b in board) == 160
        # The step's losses are the units' means over their local steps, weighted by images.
        metrics = q("SELECT images FROM step_metrics ORDER BY step").fetchall()
        assert [m["images"] for m in metrics] == [60, 40, 60]
    assert sum(w.progress.images for w in workers) >= 160


@pytest.mark.timeout(300)
def test_local_rule_resumes_after_a_coordinator_crash(embedded_db):
    """A coordinator that dies between checkpoints is replaced by one that replays the rounds
    after its checkpoint, outer momentum included, and the run ends where train-local does."""
    run = make_run(embedded_db, max_steps=4, **LOCAL, delta_dtype="bfloat16", outer_delay=1)
    first = Coordinator(embedded_db, run, poll_s=0.1, checkpoint_s=1e9)  # only version 0's
    thread = threading.Thread(target=first.serve, args=(lambda: first.version >= 2,))
    thread.start()
    threads = Threads()
    for i in range(2):
        threads.start(Worker(embedded_db, run, f"w{i}", poll_s=0.1).serve)
    thread.join(180)
    assert not thread.is_alive() and first.version >= 2
    momentum = first.state.optimizer_tensors()
    assert any(bool(t.abs().sum() > 0) for t in momentum.values())  # there is state to lose
    with connect(embedded_db) as conn:
        assert Store(conn).one("coordinator_state", run_id=run.id)["version"] == 0
    second = Coordinator(embedded_db, run, poll_s=0.1, checkpoint_s=0)
    second.start()
    assert second.version == first.version
    for name, t in momentum.items():
        assert torch.equal(second.state.optimizer_tensors()[name], t), name
    threads.start(second.serve)
    threads.join(240)
    assert second.version == 4
    reference = train_local(run.config, builtin_faces(32, 1), steps=4).weights()
    _assert_same(_weights_at(embedded_db, run, 4), reference)
