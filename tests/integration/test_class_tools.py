"""The instructor's tools: a class from a roster, a lost join string, and a run's curves as
CSV and as TensorBoard event files (read back here, record by record)."""

from __future__ import annotations

import csv
import os
import struct
import uuid
from pathlib import Path

import psycopg
import pytest

from ganpool.cli import main
from ganpool.export.metrics import metric_rows, write_tensorboard
from ganpool.store import Store, connect
from ganpool.store.connection import session_conninfo
from ganpool.students import list_students, read_roster, remove_student
from tests.helpers import make_run, train_distributed

pytestmark = pytest.mark.timeout(300)


def _cli(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def class_names():
    """Unique student names (roles are cluster-wide), removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    return [f"ada-{tag}", f"grace-{tag}", f"alan-{tag}"]


def _cleanup(db: str, names: list[str]) -> None:
    store = Store(connect(db))
    try:
        for s in list_students(store):
            if s.name in names:
                remove_student(store, s.name)
    finally:
        store.close()


def test_a_class_from_a_csv_roster_for_a_mail_merge(
    embedded_db, embedded_server, tmp_path, capsys, class_names
):
    roster = tmp_path / "class.csv"
    roster.write_text(
        "Name,Email\n" + "".join(f"{n},{n}@school.example\n" for n in class_names),
        encoding="utf-8",
    )
    out = tmp_path / "joins.csv"
    where = ("--host", "127.0.0.1", "--port", embedded_server.port)
    try:
        status, said, err = _cli(
            capsys, "student", "add", "--roster", roster, "--out", out, *where, "--db", embedded_db
        )
        assert status == 0, err
        assert "added 3 students" in said and "postgresql://" not in said  # secrets in the file
        assert os.stat(out).st_mode & 0o777 == 0o600
        rows = list(csv.DictReader(out.read_text().splitlines()))
        assert [r["Name"] for r in rows] == class_names
        assert rows[0]["Email"] == f"{class_names[0]}@school.example"
        assert rows[0]["command"] == f"ganpool worker --join '{rows[0]['join']}'"
        with psycopg.connect(
            session_conninfo(rows[1]["join"])
        ) as conn:  # each join string is a working login
            assert conn.execute("SELECT ganpool_whoami()").fetchone()[0] == class_names[1]
        for call in (  # ... and no more: the new login functions are the instructor's
            "SELECT ganpool_student_reissue(%s, 'x')",
            "SELECT ganpool_viewer_add(%s, 'x')",
            "SELECT ganpool_viewer_remove(%s)",
        ):
            with (
                psycopg.connect(session_conninfo(rows[1]["join"])) as conn,
                pytest.raises(psycopg.errors.InsufficientPrivilege),
            ):
                conn.execute(call, (class_names[0],))
        # The file is never overwritten, and a second roster with a known name adds nobody.
        status, _, err = _cli(
            capsys, "student", "add", "--roster", roster, "--out", out, "--db", embedded_db
        )
        assert status == 2 and "already exists" in err
        again = tmp_path / "again.txt"
        again.write_text(f"newcomer-{uuid.uuid4().hex[:6]}\n{class_names[0]}\n")
        status, _, err = _cli(capsys, "student", "add", "--roster", again, "--db", embedded_db)
        assert status == 2 and "nobody was added" in err
        store = Store(connect(embedded_db))
        try:
            assert len(list_students(store)) == 3
        finally:
            store.close()
        # A lost join string: a new one works, the old one no longer does.
        status, said, _ = _cli(capsys, "student", "reissue", class_names[1], *where,
                               "--db", embedded_db)  # fmt: skip
        assert status == 0
        new = said.split("--join ", 1)[1].split("'")[1]
        with psycopg.connect(session_conninfo(new)) as conn:
            assert conn.execute("SELECT ganpool_whoami()").fetchone()[0] == class_names[1]
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(session_conninfo(rows[1]["join"])).close()
    finally:
        _cleanup(embedded_db, class_names)


def test_a_roster_with_a_bad_name_adds_nobody(embedded_db, tmp_path, capsys, class_names):
    roster = tmp_path / "class.txt"
    roster.write_text(f"{class_names[0]}\nRobert'); DROP TABLE students;--\n")
    status, _, err = _cli(capsys, "student", "add", "--roster", roster, "--db", embedded_db)
    assert status == 2 and "student 2" in err and "invalid" in err
    dup = tmp_path / "dup.txt"
    dup.write_text(f"{class_names[0]}\n{class_names[0]}\n")
    with pytest.raises(Exception, match="listed twice"):
        read_roster(dup)
    store = Store(connect(embedded_db))
    try:
        assert list_students(store) == []
    finally:
        store.close()


def _tfrecords(path: Path):
    """The records of a TFRecord file: u64 length, u32 CRC, data, u32 CRC (CRCs not checked:
    the protobuf parse fails on a torn record anyway)."""
    data = path.read_bytes()
    at = 0
    while at < len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        yield data[at + 12 : at + 12 + length]
        at += 12 + length + 4


@pytest.mark.parametrize("rule", ["alternating", "simultaneous"])
def test_metrics_as_csv_and_tensorboard_events_by_paper_step(embedded_db, tmp_path, rule):
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto.event_pb2 import Event

    run = make_run(embedded_db, rule, update_rule=rule, max_steps=3, unit_size=10)
    train_distributed(embedded_db, run, workers=1)
    store = Store(connect(embedded_db))
    try:
        rows = metric_rows(store, run)
    finally:
        store.close()
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["g_loss"] is not None and r["d_real"] is not None for r in rows)
    logdir = write_tensorboard(rows, tmp_path, run.name)
    [events_file] = logdir.glob("events.out.tfevents.*")
    scalars: dict[str, dict[int, float]] = {}
    for record in _tfrecords(events_file):
        event = Event.FromString(record)
        for value in event.summary.value:
            scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    assert set(scalars["losses/G"]) == {1, 2, 3}
    assert scalars["losses/G"][2] == pytest.approx(rows[1]["g_loss"], rel=1e-6)
    assert scalars["discriminator/D_x"][3] == pytest.approx(rows[2]["d_real"], rel=1e-6)
    assert "quality/KID" not in scalars  # never measured in this run: not invented
