"""Weighting by samples, end to end, where the weights really differ; and the database's
exactly-once constraints, each one on its own.

unit_size 30 on 100 faces gives units of 30, 30, 30 and 10 images: a result that is weighted
by 1 instead of its sample count, or a buffer that is never adopted, moves the weights."""

import psycopg
import pytest
import torch
from safetensors.torch import load

from ganpool.coordinator import Coordinator
from ganpool.data.datasets import builtin_faces
from ganpool.serialization.tensors import manifest_of, unpack
from ganpool.store import Store, connect
from ganpool.training.state import TrainingState
from tests.helpers import FakeStudent, make_run, train_distributed
from tests.plain_dcgan import train_plain


def _weights_at(dsn, run, version):
    with connect(dsn) as conn:
        blob = Store(conn).blob("weights_at", "weights", run_id=run.id, version=version)
    return unpack(blob, manifest_of(TrainingState(run.config).weights()))


def test_distributed_with_uneven_units_equals_a_plain_pytorch_loop(embedded_db):
    run = make_run(embedded_db, max_steps=3, unit_size=30, results_per_step=2)
    coordinator, _ = train_distributed(embedded_db, run, workers=2)
    assert coordinator.version == 3
    # The units each version applied, as the database recorded them; the reference below
    # shares neither the unit plan nor any training code with the coordinator.
    with connect(embedded_db) as conn:
        rows = conn.execute(
            "SELECT c.version, u.indices, u.noise_seed FROM version_contributions AS c "
            "JOIN work_units AS u ON u.id = c.unit_id WHERE c.run_id = %s "
            "ORDER BY c.version, u.seq",
            (run.id,),
        ).fetchall()
    steps = [
        [(r["indices"], r["noise_seed"]) for r in rows if r["version"] == v] for v in (1, 2, 3)
    ]
    sizes = [sorted(len(indices) for indices, _ in units) for units in steps]
    assert sizes == [[30, 30], [10, 30], [30, 30]]

    dataset = builtin_faces(run.config.image_size, run.config.channels)
    reference = train_plain(run.config, dataset, steps)
    distributed = _weights_at(embedded_db, run, 3)
    assert set(distributed) == set(reference)
    for name, want in reference.items():
        torch.testing.assert_close(distributed[name], want, rtol=1e-5, atol=1e-6, msg=name)


def _submit(student: FakeStudent, unit: dict) -> dict[str, torch.Tensor]:
    """Submit a genuine result for `unit`; returns the tensors that were sent."""
    fields = student.payload(unit)
    reply = student.store.execute_binary(
        "submit_result",
        worker_id=student.id,
        unit_id=unit["unit_id"],
        attempt=unit["attempt"],
        **fields,
    )
    assert reply["accepted"], reply["reason"]
    return load(fields["payload"])


@pytest.mark.parametrize("as_they_land", [True, False], ids=["running-sum", "at-the-step"])
def test_the_coordinator_adopts_the_weighted_mean_of_the_results_batchnorm_statistics(
    embedded_db, as_they_land
):
    # 70 + 30 images: weights 0.7 and 0.3.
    run = make_run(embedded_db, unit_size=70, results_per_step=2)
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    a, b = FakeStudent(embedded_db, run, "a"), FakeStudent(embedded_db, run, "b")
    try:
        units = [a.claim(), b.claim()]
        assert sorted(len(u["indices"]) for u in units) == [30, 70]
        sent = [_submit(s, u) for s, u in zip((a, b), units, strict=True)]
        if as_they_land:
            coordinator.collect()  # what serve() does before each tick
        coordinator.tick()
        assert coordinator.version == 1

        n = [len(u["indices"]) for u in units]
        published = _weights_at(embedded_db, run, 1)
        held = {f"D.{k}": v for k, v in coordinator.state.d.named_buffers()}
        held |= {f"G.{k}": v for k, v in coordinator.state.g.named_buffers()}
        keys = [k[4:] for k in sent[0] if k.startswith("buf.")]
        unweighted = set()
        for key in keys:
            x, y = (t[f"buf.{key}"].double() for t in sent)
            want = ((n[0] * x + n[1] * y) / (n[0] + n[1])).float()
            torch.testing.assert_close(held[key], want, rtol=1e-6, atol=1e-7, msg=key)
            torch.testing.assert_close(published[key], want, rtol=1e-6, atol=1e-7, msg=key)
            if not torch.allclose(want, ((x + y) / 2).float(), rtol=1e-5, atol=1e-6):
                unweighted.add(key[0])
        # In both networks the plain mean is measurably elsewhere: the test tells them apart.
        assert unweighted == {"D", "G"}
    finally:
        a.close(), b.close(), coordinator.close()


# The database's exactly-once promises: (table, column) with a single-column UNIQUE.
EXACTLY_ONCE = [
    ("results", "unit_id"),  # one accepted submission per unit
    ("version_contributions", "unit_id"),  # a unit contributes to one version, once
    ("version_contributions", "result_id"),  # a result is counted once
]


def _unique_constraint(conn, table: str, column: str) -> str | None:
    row = conn.execute(
        "SELECT c.conname FROM pg_constraint AS c "
        "JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) "
        "WHERE c.conrelid = %s::regclass AND c.contype IN ('u', 'p') "
        "AND cardinality(c.conkey) = 1 AND a.attname = %s",
        (table, column),
    ).fetchone()
    return row and row["conname"]


@pytest.mark.parametrize(("table", "column"), EXACTLY_ONCE)
def test_each_exactly_once_constraint_exists(db, table, column):
    with connect(db) as conn:
        assert _unique_constraint(conn, table, column), f"{table}.{column} is not UNIQUE"


@pytest.fixture
def applied(db):
    """A run at version 1 whose two results were applied, and a third result, for a unit of
    version 1, submitted and not yet applied. Yields (connection, first applied unit's
    contribution, the waiting result)."""
    run = make_run(db, unit_size=10, results_per_step=2)
    coordinator = Coordinator(db, run)
    coordinator.start()
    student = FakeStudent(db, run, "s")
    conn = connect(db)
    try:
        for unit in (student.claim(), student.claim()):
            assert student.submit(unit)["accepted"]
        coordinator.tick()
        assert coordinator.version == 1
        later = student.claim()
        assert student.submit(later)["accepted"]
        first = conn.execute(
            "SELECT * FROM version_contributions ORDER BY unit_id LIMIT 1"
        ).fetchone()
        waiting = conn.execute(
            "SELECT * FROM results WHERE unit_id = %s", (later["unit_id"],)
        ).fetchone()
        assert waiting["status"] == "submitted" and waiting["id"] != first["result_id"]
        yield conn, first, waiting
    finally:
        conn.close(), student.close(), coordinator.close()


def _refused_by(conn, sql: str, params: tuple) -> str:
    with pytest.raises(psycopg.errors.UniqueViolation) as e:
        conn.execute(sql, params)
    return e.value.diag.constraint_name


# family_id: a unit and its backup copies (migration 0008); a family no row has yet is
# negative here, so that only the constraint under test can refuse the row.
CONTRIBUTION = (
    "INSERT INTO version_contributions "
    "(run_id, version, unit_id, result_id, worker_id, samples, weight, family_id) "
    "VALUES (%s, 1, %s, %s, %s, %s, 0.5, %s)"
)


def test_an_applied_unit_refuses_a_different_second_result(applied):
    conn, first, waiting = applied
    name = _refused_by(
        conn,
        CONTRIBUTION,
        (first["run_id"], first["unit_id"], waiting["id"], waiting["worker_id"], 10, -1),
    )
    assert name == _unique_constraint(conn, "version_contributions", "unit_id")


def test_an_applied_result_cannot_be_counted_for_another_unit(applied):
    conn, first, waiting = applied
    name = _refused_by(
        conn,
        CONTRIBUTION,
        (first["run_id"], waiting["unit_id"], first["result_id"], first["worker_id"], 10, -1),
    )
    assert name == _unique_constraint(conn, "version_contributions", "result_id")


def test_an_applied_family_refuses_a_copy_s_result(applied):
    """A backup copy's result is a new unit and a new result: only the family's UNIQUE index
    keeps the unit it copies from being applied twice."""
    conn, first, waiting = applied
    name = _refused_by(
        conn,
        CONTRIBUTION,
        (
            first["run_id"],
            waiting["unit_id"],
            waiting["id"],
            waiting["worker_id"],
            10,
            first["family_id"],
        ),
    )
    unique = conn.execute(
        "SELECT i.indisunique FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s",
        (name,),
    ).fetchone()
    assert name == "version_contributions_family" and unique["indisunique"]


def test_an_applied_unit_refuses_a_second_submission_row(applied):
    conn, first, waiting = applied
    name = _refused_by(
        conn,
        "INSERT INTO results (run_id, unit_id, worker_id, version, samples) "
        "VALUES (%s, %s, %s, 0, 10)",
        (first["run_id"], first["unit_id"], waiting["worker_id"]),
    )
    assert name == _unique_constraint(conn, "results", "unit_id")


def test_only_a_waiting_result_can_be_applied(applied):
    """apply_result is a no-op for a result already decided: a refused result is never
    applied later, and applying one twice adds nothing (no error either)."""
    conn, first, waiting = applied
    store = Store(conn)
    store.execute("reject_result", run_id=first["run_id"], result_id=waiting["id"], reason="x")
    for result_id in (waiting["id"], first["result_id"]):
        store.execute(
            "apply_result", run_id=first["run_id"], version=1, result_id=result_id, weight=1.0
        )
    rows = conn.execute("SELECT result_id FROM version_contributions ORDER BY result_id")
    assert waiting["id"] not in [r["result_id"] for r in rows.fetchall()]
    count = conn.execute("SELECT count(*) AS n FROM version_contributions").fetchone()["n"]
    assert count == 2  # the two applied at the step, once each
    status = conn.execute("SELECT status FROM results WHERE id = %s", (waiting["id"],))
    assert status.fetchone()["status"] == "rejected"


def test_each_version_records_its_results_shares_of_its_images(embedded_db):
    """version_contributions.weight is a result's share of its step's images: the shares of
    a version add up to 1, also for a step of one result of one image (units of 33 on 100
    faces: the epoch ends with a unit of one)."""
    run = make_run(embedded_db, unit_size=33, results_per_step=1)
    coordinator = Coordinator(embedded_db, run)
    student = FakeStudent(embedded_db, run, "s")
    try:
        coordinator.start()
        for _ in range(4):
            assert student.submit(student.claim())["accepted"]
            coordinator.collect()
            coordinator.tick()
        with connect(embedded_db) as conn:
            rows = conn.execute(
                "SELECT c.version, c.weight, r.samples FROM version_contributions AS c "
                "JOIN results AS r ON r.id = c.result_id ORDER BY c.version"
            ).fetchall()
    finally:
        student.close()
        coordinator.close()
    assert sorted(r["samples"] for r in rows) == [1, 33, 33, 33]
    assert [r["version"] for r in rows] == [1, 2, 3, 4]
    assert [r["weight"] for r in rows] == pytest.approx([1.0] * 4)
