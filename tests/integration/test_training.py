"""Training through a real PostgreSQL server, against the single-process reference."""

import threading

import pytest
import torch

from ganpool.data.datasets import builtin_faces
from ganpool.serialization.tensors import manifest_of, unpack
from ganpool.store import Store, connect
from ganpool.training.local import train_local
from ganpool.training.state import TrainingState
from tests.helpers import make_run, train_distributed


def _weights_at(dsn, run, version):
    store = Store(connect(dsn))
    blob = store.blob("weights_at", "weights", run_id=run.id, version=version)
    store.close()
    return unpack(blob, manifest_of(TrainingState(run.config).weights()))


def test_distributed_equals_train_local(db):
    run = make_run(db, max_steps=3, unit_size=20, results_per_step=2)
    coordinator, workers = train_distributed(db, run, workers=2)
    assert coordinator.version == 3
    assert sum(w.progress.units for w in workers) == 6

    dataset = builtin_faces(run.config.image_size, run.config.channels)
    reference = train_local(run.config, dataset, steps=3).weights()
    distributed = _weights_at(db, run, 3)
    assert set(distributed) == set(reference)
    for name, want in reference.items():
        torch.testing.assert_close(distributed[name], want, rtol=1e-5, atol=1e-6, msg=name)
    # BatchNorm buffers moved from their initial values, and identically in both.
    initial = TrainingState(run.config).weights()
    moved = [
        k for k in reference if "running_mean" in k and not torch.equal(reference[k], initial[k])
    ]
    assert moved, "BatchNorm running statistics never reached the coordinator"


def test_eight_workers_apply_every_unit_exactly_once(db):
    # 200 units of 4 images on 100 faces: 8 epochs, 8 results per step.
    run = make_run(db, max_steps=25, unit_size=4, results_per_step=8)
    coordinator, workers = train_distributed(db, run, workers=8, timeout=240)
    assert coordinator.version == 25
    store = Store(connect(db))
    q = store.conn.execute
    units = q(
        "SELECT state, count(*) AS n FROM work_units WHERE run_id = %s GROUP BY state", (run.id,)
    ).fetchall()
    assert {r["state"]: r["n"] for r in units} == {"applied": 200}
    contrib = q(
        "SELECT count(*) AS n, count(DISTINCT unit_id) AS d FROM version_contributions"
    ).fetchone()
    assert contrib == {"n": 200, "d": 200}
    assert sum(w.progress.units for w in workers) == 200
    # Every completed epoch applied each image exactly once.
    epochs = q(
        "SELECT u.epoch, array_agg(i ORDER BY i) AS images "
        "FROM work_units AS u, unnest(u.indices) AS i "
        "WHERE u.run_id = %s AND u.state = 'applied' GROUP BY u.epoch ORDER BY u.epoch",
        (run.id,),
    ).fetchall()
    assert len(epochs) == 8
    for e in epochs:
        assert e["images"] == list(range(100)), f"epoch {e['epoch']}"
    done = q(
        "SELECT count(*) AS n FROM epochs WHERE run_id = %s AND completed_at IS NOT NULL", (run.id,)
    ).fetchone()
    assert done["n"] == 8
    # Applied payloads were deleted; old weights pruned to the kept window.
    assert q("SELECT count(*) AS n FROM result_payloads").fetchone()["n"] == 0
    kept = q("SELECT array_agg(version ORDER BY version) AS v FROM version_weights").fetchone()["v"]
    assert kept == [23, 24, 25]
    store.close()


def test_samples_are_stored_and_written(db, tmp_path):
    run = make_run(db, max_steps=4, sample_every=2, unit_size=10)
    train_distributed(db, run, workers=1, out=tmp_path)
    store = Store(connect(db))
    versions = [
        r["version"] for r in store.conn.execute("SELECT version FROM samples ORDER BY version")
    ]
    assert versions == [0, 2, 4]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "step_000000.png",
        "step_000002.png",
        "step_000004.png",
    ]
    png = store.conn.execute("SELECT png FROM samples WHERE version = 4").fetchone()["png"]
    assert bytes(png[:8]) == b"\x89PNG\r\n\x1a\n"
    metrics = store.conn.execute(
        "SELECT count(*) AS n, min(images) AS i FROM step_metrics"
    ).fetchone()
    assert metrics == {"n": 4, "i": 20}
    store.close()


def test_alternating_rule_distributed_equals_the_papers_loop(db):
    run = make_run(db, max_steps=3, unit_size=20, results_per_step=2, update_rule="alternating")
    coordinator, workers = train_distributed(db, run, workers=2)
    assert coordinator.version == 6  # a D version and a G version per step
    assert sum(w.progress.units for w in workers) == 12
    dataset = builtin_faces(run.config.image_size, run.config.channels)
    reports = []
    reference = train_local(
        run.config, dataset, steps=3, on_step=lambda r, _: reports.append(r)
    ).weights()
    distributed = _weights_at(db, run, 6)
    for name, want in reference.items():
        torch.testing.assert_close(distributed[name], want, rtol=1e-5, atol=1e-6, msg=name)
    simultaneous = train_local(run.config.replace(update_rule="simultaneous"), dataset, 3)
    differs = [k for k, v in simultaneous.weights().items() if not torch.equal(v, reference[k])]
    assert differs, "the two rules must not give the same weights"
    store = Store(connect(db))
    q = store.conn.execute
    phases = q(
        "SELECT phase, count(*) AS n, sum(cardinality(indices)) AS images FROM work_units "
        "WHERE state = 'applied' GROUP BY phase ORDER BY phase"
    ).fetchall()
    assert phases == [{"phase": "D", "n": 6, "images": 120}, {"phase": "G", "n": 6, "images": 120}]
    # Images count once per step (in the D phase): 3 steps x 40 images.
    assert q("SELECT images_applied FROM runs").fetchone()["images_applied"] == 120
    metrics = q(
        "SELECT version, g_loss IS NULL AS no_g, d_loss IS NULL AS no_d FROM step_metrics "
        "ORDER BY version"
    ).fetchall()
    assert [(m["no_g"], m["no_d"]) for m in metrics] == [(True, False), (False, True)] * 3
    # train-local reports a step's losses from the phase that computed each, as the
    # coordinator records them: D's loss and outputs with the D version, G's loss with the G's.
    recorded = q(
        "SELECT g_loss, d_loss, d_real, d_fake FROM step_metrics ORDER BY version"
    ).fetchall()
    assert len(reports) == 3
    for report, d_phase, g_phase in zip(reports, recorded[::2], recorded[1::2], strict=True):
        got = {k: getattr(report, k) for k in ("g_loss", "d_loss", "d_real", "d_fake")}
        want = {"g_loss": g_phase["g_loss"]} | {
            k: d_phase[k] for k in ("d_loss", "d_real", "d_fake")
        }
        assert got == pytest.approx(want, rel=1e-4), report.step
    store.close()


def test_a_restart_replays_the_steps_after_its_checkpoint_exactly(db):
    """Applied payloads stay until a checkpoint holds their effect: a coordinator that dies
    between checkpoints is replaced by one that replays those steps, bit for bit."""
    from ganpool.coordinator import Coordinator
    from ganpool.worker import Worker
    from tests.helpers import Threads

    run = make_run(db, max_steps=6, unit_size=20, results_per_step=2, transport="bfloat16")
    first = Coordinator(db, run, poll_s=0.1, checkpoint_s=1e9)  # none after version 0's
    coordinator_thread = threading.Thread(target=first.serve, args=(lambda: first.version >= 4,))
    coordinator_thread.start()
    threads = Threads()
    for i in range(2):
        threads.start(Worker(db, run, f"w{i}", poll_s=0.1).serve)
    coordinator_thread.join(60)
    assert not coordinator_thread.is_alive() and first.version >= 4
    store = Store(connect(db))
    assert store.one("coordinator_state", run_id=run.id)["version"] == 0
    kept = store.conn.execute(
        "SELECT count(*) AS n FROM result_payloads AS p JOIN results AS r ON r.id = p.result_id "
        "WHERE r.status = 'applied'"
    ).fetchone()["n"]
    store.close()
    assert kept == 2 * first.version  # every applied result, kept for a replay
    # A second coordinator (the first has let go) replays versions 1.. from their results.
    second = Coordinator(db, run, poll_s=0.1, checkpoint_s=0)
    second.start()
    assert second.version == first.version
    for name, t in first.state.optimizer_tensors().items():
        assert torch.equal(second.state.optimizer_tensors()[name], t), name
    threads.start(second.serve)
    threads.join(90)
    assert second.version == 6
    reference = train_local(run.config, builtin_faces(32, 1), steps=6).weights()
    distributed = _weights_at(db, run, 6)
    for name, want in reference.items():
        torch.testing.assert_close(distributed[name], want, rtol=1e-5, atol=1e-6, msg=name)
