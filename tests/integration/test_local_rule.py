"""The local update rule through a real PostgreSQL server, against `train-local`.

local_steps 3 x unit_size 10 = units of 30 images on 100 faces: 30, 30, 30, then 10 closes
the epoch (one short batch of a possible three), so units weigh 30 and 10 and a unit's
local steps differ in number. Rounds of 2 units: [30, 30], [30, 10], [30, 30]."""

import threading

import pytest
import torch

from ganpool.coordinator import Coordinator
from ganpool.data.datasets import builtin_faces
from ganpool.events import Timeline
from ganpool.serialization.tensors import Packer, manifest_of, unpack
from ganpool.store import Store, connect
from ganpool.training.local import train_local
from ganpool.training.local_steps import local_unit, payload_manifest, payload_tensors
from ganpool.training.stand_in import stand_in
from ganpool.training.state import TrainingState, load_weights, weights_of
from ganpool.worker import Worker
from tests.helpers import FakeStudent, Threads, make_run, train_distributed

LOCAL = {"update_rule": "local", "local_steps": 3, "unit_size": 10, "results_per_step": 2}
# DiLoCo's outer step: momentum state to checkpoint, replay and compare.
NESTEROV = {"outer_lr": 0.7, "outer_momentum": 0.9, "outer_nesterov": True}


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
    ("delta_dtype", "outer_delay", "outer"),
    [("float32", 0, NESTEROV), ("int8", 1, {})],  # {}: the default, plain averaging
    ids=["fp32-synchronous-nesterov", "int8-delayed-averaging"],
)
def test_local_rule_distributed_equals_train_local(embedded_db, delta_dtype, outer_delay, outer):
    run = make_run(
        embedded_db,
        max_steps=3,
        **LOCAL | outer,
        delta_dtype=delta_dtype,
        outer_delay=outer_delay,
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
        metrics = q("SELECT images FROM step_metrics ORDER BY version").fetchall()
        assert [m["images"] for m in metrics] == [60, 40, 60]
    assert sum(w.progress.images for w in workers) >= 160


@pytest.mark.timeout(300)
def test_local_rule_resumes_after_a_coordinator_crash(embedded_db):
    """A coordinator that dies between checkpoints is replaced by one that replays the rounds
    after its checkpoint, outer momentum included, and the run ends where train-local does."""
    run = make_run(
        embedded_db, max_steps=4, **LOCAL | NESTEROV, delta_dtype="bfloat16", outer_delay=1
    )
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


def _stand_in_class(dsn, run, images_per_s: float):
    """A coordinator and two workers whose compute is the benchmark's stand-in."""
    threads = Threads()
    coordinator = Coordinator(dsn, run, poll_s=0.1)
    threads.start(coordinator.serve)
    workers = [
        Worker(
            dsn, run, f"w{i}", poll_s=0.1, compute_unit=stand_in(images_per_s), on_event=Timeline()
        )
        for i in range(2)
    ]
    for w in workers:
        threads.start(w.serve)
    threads.join(120)
    return coordinator, workers


@pytest.mark.timeout(200)
@pytest.mark.parametrize("outer_delay", [0, 1], ids=["synchronous", "delayed"])
def test_the_delayed_outer_step_computes_the_next_round_while_one_is_applied(
    embedded_db, outer_delay
):
    """With outer_delay 1 a worker starts a unit of round r + 1 before round r is applied
    (before the step that publishes version r + 1 begins): its compute overlaps the
    round's uploads and outer step. Without the delay no unit of a round exists before
    the previous round is applied.
    The stand-in's payloads (int8, real size) pass the screening: nothing is refused."""
    run = make_run(embedded_db, max_steps=4, **LOCAL, delta_dtype="int8", outer_delay=outer_delay)
    coordinator, workers = _stand_in_class(embedded_db, run, images_per_s=60)
    assert coordinator.version == 4
    assert sum(w.progress.rejected for w in workers) == 0
    # When each step's transaction began (the server's clock, this machine's): the units of
    # a round without the delay are inserted by it, so no worker can start one before.
    with connect(embedded_db) as conn:
        rows = conn.execute("SELECT version, extract(epoch FROM created_at) AS t FROM versions")
        published = {r["version"]: float(r["t"]) for r in rows.fetchall()}
    started = {}  # round -> first compute start, over both workers
    for w in workers:
        for t, event, version, _ in w.on_event:
            if event == "compute_start":
                started[version] = min(t, started.get(version, t))
    early = [r for r in range(1, 4) if started[r] < published[r]]
    if outer_delay:
        assert early, (started, published)
    else:
        assert early == []


@pytest.mark.timeout(200)
def test_the_stand_in_serves_the_synchronous_rules_too(embedded_db):
    """The benchmark's baseline: the alternating rule's D and G payloads from the stand-in
    pass the screening (gradient norms, BatchNorm statistics of the version) every step."""
    run = make_run(
        embedded_db, "alt", max_steps=3, unit_size=10, results_per_step=2,
        update_rule="alternating",
    )  # fmt: skip
    coordinator, workers = _stand_in_class(embedded_db, run, images_per_s=200)
    assert coordinator.version == 6
    assert sum(w.progress.rejected for w in workers) == 0
    assert sum(w.progress.units for w in workers) == 12


def _local_payload(student: FakeStudent, unit: dict, tamper=None) -> bytes:
    """A genuine local-rule result for `unit` (trained on its base version), as sent."""
    cfg, g, d = student.run.config, student.g, student.d
    base = cfg.base_version(unit["version"])
    blob = student.store.blob("weights_at", "weights", run_id=student.run.id, version=base)
    load_weights(g, d, unpack(blob, manifest_of(weights_of(g, d))))
    real = student.faces.batch(unit["indices"])
    tensors = local_unit(g, d, real, unit["noise_seed"], cfg).tensors
    if tamper:
        tensors = tamper(tensors)
    return bytes(Packer(payload_manifest(cfg, g, d)).pack(payload_tensors(cfg, tensors)))


def huge(t: dict) -> dict:
    """D's weight change 10,000x: int8 carries it in the scales."""
    return {k: v * 1e4 if k.startswith("grad.D") else v for k, v in t.items()}


def nan(t: dict) -> dict:
    """One BatchNorm statistic of G not a number."""
    key = next(k for k in t if k.startswith("buf.G.") and k.endswith("running_mean"))
    return t | {key: t[key] * torch.nan}


def _submit(student: FakeStudent, unit: dict, payload: bytes) -> dict:
    return student.store.execute_binary(
        "submit_result",
        worker_id=student.id,
        unit_id=unit["unit_id"],
        attempt=unit["attempt"],
        payload=payload,
        g_loss=0.5,
        d_loss=0.5,
        d_real=0.5,
        d_fake=0.5,
        compute_seconds=0.01,
    )


@pytest.mark.timeout(200)
def test_the_screening_judges_weight_changes(embedded_db):
    """Among honest local results, a weight change 10,000x too large (sent as int8, so the
    scales carry it) is refused as a norm outlier, and a non-finite one as such; neither is
    applied, and their images go back to the epoch."""
    run = make_run(
        embedded_db, **(LOCAL | {"local_steps": 2}), delta_dtype="int8", units_per_step=2
    )
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    honest, mallory = FakeStudent(embedded_db, run, "honest"), FakeStudent(embedded_db, run, "m")
    try:
        for _ in range(5):  # a cohort of 10 honest norms per network
            for _ in range(2):
                unit = honest.claim()
                assert _submit(honest, unit, _local_payload(honest, unit))["accepted"]
            coordinator.collect()
            coordinator.tick()
        for tamper, reason in ((huge, "D's weight change norm"), (nan, "NaN or infinite")):
            v = coordinator.version
            mine, theirs = mallory.claim(), honest.claim()
            assert _submit(honest, theirs, _local_payload(honest, theirs))["accepted"]
            _submit(mallory, mine, _local_payload(mallory, mine, tamper))
            coordinator.collect()
            coordinator.tick()
            assert coordinator.version == v + 1
            reasons = [r["reason"] for r in mallory.store.all(
                "worker_rejections", worker_id=mallory.id, after_id=0
            )]  # fmt: skip
            assert reason in reasons[-1], reasons
        with connect(embedded_db) as conn:
            q = conn.execute
            applied = q("SELECT worker_id FROM version_contributions").fetchall()
            assert {r["worker_id"] for r in applied} == {honest.id}
            returned = q(
                "SELECT bool_and(images_returned) AS all FROM work_units WHERE worker_id = %s",
                (mallory.id,),
            ).fetchone()
            assert returned["all"]
    finally:
        honest.close(), mallory.close(), coordinator.close()
