"""Logged in as a student (SCRAM password over TCP), every forbidden action is refused by
PostgreSQL itself: permission denied, a row-level-security filter, or a function's check."""

from __future__ import annotations

import contextlib
import uuid

import psycopg
import pytest

from ganpool.coordinator import Coordinator
from ganpool.errors import GanpoolError, LoginRefused
from ganpool.store import Store, connect
from ganpool.store.submission import submission
from ganpool.store.worker import Submission, WorkerStore
from ganpool.students import add_student, disable_student, enable_student, remove_student
from tests.helpers import make_run

Denied = psycopg.errors.InsufficientPrivilege


@pytest.fixture
def klass(embedded_db, embedded_server):
    """A run with version 0 published, and two students logged in with their join strings."""
    run = make_run(embedded_db, unit_size=10, results_per_step=2)
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    instructor = Store(connect(embedded_db))
    suffix = uuid.uuid4().hex[:8]  # roles are cluster-wide: one set per test
    names = [f"alice-{suffix}", f"bob-{suffix}"]
    joins = [add_student(instructor, n, host="127.0.0.1", port=embedded_server.port) for n in names]
    students = [Store(connect(j)) for j in joins]
    yield {
        "run": run,
        "coordinator": coordinator,
        "instructor": instructor,
        "names": names,
        "joins": joins,
        "students": students,
        "dsn": embedded_db,
    }
    for s in students:
        s.close()
    for n in names:
        with contextlib.suppress(GanpoolError):  # a test may have removed it already
            remove_student(instructor, n)
    instructor.close()
    coordinator.close()


def _register(store: Store, run_id: int, name: str = "x") -> int:
    return store.one("register_worker", run_id=run_id, name=name, hostname="h", device="cpu")[
        "worker_id"
    ]


def test_join_string_logs_in_with_a_password_and_a_student_only_works(klass):
    alice, _ = klass["students"]
    run = klass["run"]
    assert alice.conn.info.user.endswith("_s_" + klass["names"][0].replace("-", "_"))
    assert "127.0.0.1" in klass["joins"][0] and "password" not in klass["joins"][0]
    me = _register(alice, run.id, name="mallory")
    # Registered under the student's own name, whatever name was asked for.
    row = (
        klass["instructor"]
        .conn.execute("SELECT name, role_name FROM workers WHERE id = %s", (me,))
        .fetchone()
    )
    assert row["name"] == klass["names"][0]
    unit = alice.one("claim_unit", worker_id=me)
    assert unit is not None
    assert alice.one("heartbeat", worker_id=me, unit_id=unit["unit_id"], attempt=unit["attempt"])[
        "holds"
    ]
    assert alice.blob("weights_at", "weights", run_id=run.id, version=0)
    assert alice.one("run_state", run_id=run.id)["status"] == "running"
    assert alice.one("whoami")["name"] == klass["names"][0]


def test_wrong_password_is_refused(klass, embedded_server):
    bad = klass["joins"][0].replace("@127.0.0.1", "x@127.0.0.1")
    with pytest.raises(LoginRefused, match="password authentication failed"):
        connect(bad)


def _submit_junk(store: Store, worker_id: int, unit: dict) -> dict:
    """Submit a non-result for `unit`: only the database's answer matters here."""
    return store.execute_binary(
        "submit_result",
        worker_id=worker_id,
        unit_id=unit["unit_id"],
        attempt=unit["attempt"],
        payload=b"x",
        g_loss=0.0,
        d_loss=0.0,
        d_real=0.0,
        d_fake=0.0,
        compute_seconds=0.0,
    )


FORBIDDEN = [
    ("UPDATE version_weights SET weights = '\\x00'", "weights"),
    ("DELETE FROM version_weights", "weights"),
    ("SELECT * FROM coordinator_state", "optimizer state"),
    ("UPDATE coordinator_state SET optimizer = '\\x00'", "optimizer state"),
    ("UPDATE runs SET status = 'stopped'", "stop the run"),
    ("UPDATE runs SET status = 'paused'", "pause the run"),
    ("DELETE FROM runs", "runs"),
    ("DELETE FROM step_metrics", "metrics"),
    (
        "INSERT INTO step_metrics (run_id, version, workers, units, images, epoch) "
        "VALUES (1, 99, 1, 1, 1, 0)",
        "metrics",
    ),
    ("UPDATE workers SET trust = 1", "workers' rows"),
    ("DELETE FROM workers", "workers' rows"),
    ("SELECT * FROM students", "the student list"),
    ("SELECT rolpassword FROM pg_authid", "credentials"),
    (
        "INSERT INTO version_contributions "
        "(run_id, version, unit_id, result_id, worker_id, samples, weight) "
        "VALUES (1, 0, 1, 1, 1, 999, 1)",
        "leaderboard credit",
    ),
    ("UPDATE results SET samples = 999", "sample counts"),
    ("SELECT payload FROM result_payloads", "others' gradients"),
    ("UPDATE work_units SET state = 'pending'", "the queue"),
    ("INSERT INTO rejections (run_id, worker_id, reason) VALUES (1, 1, 'x')", "rejections"),
    ("SELECT ganpool_student_add('eve', 'x')", "creating logins"),
    ("SELECT ganpool_hold_limit(1, 1)", "internal functions"),
    ("SELECT ganpool_student_disable('bob')", "disabling others"),
]


@pytest.mark.parametrize(
    ("sql", "what"), FORBIDDEN, ids=[f"{i}-{w}" for i, (_, w) in enumerate(FORBIDDEN)]
)
def test_a_student_cannot(klass, sql, what):
    alice = klass["students"][0]
    with pytest.raises(Denied):
        alice.conn.execute(sql)


def test_a_student_cannot_act_for_another_students_worker(klass):
    alice, bob = klass["students"]
    run = klass["run"]
    bobs = _register(bob, run.id)
    unit = bob.one("claim_unit", worker_id=bobs)
    for query, params in [
        ("heartbeat", {"worker_id": bobs, "unit_id": unit["unit_id"], "attempt": unit["attempt"]}),
        ("claim_unit", {"worker_id": bobs}),
        (
            "release_unit",
            {"worker_id": bobs, "unit_id": unit["unit_id"], "attempt": unit["attempt"]},
        ),
        ("leave_run", {"worker_id": bobs}),
    ]:
        with pytest.raises(Denied, match="belongs to another login"):
            alice.one(query, **params)
    with pytest.raises(Denied):
        _submit_junk(alice, bobs, unit)


def test_a_student_cannot_submit_for_a_unit_someone_else_holds(klass):
    alice, bob = klass["students"]
    run = klass["run"]
    mine, bobs = _register(alice, run.id), _register(bob, run.id)
    unit = bob.one("claim_unit", worker_id=bobs)
    verdict = _submit_junk(alice, mine, unit)
    assert not verdict["accepted"] and "lease lost" in verdict["reason"]
    assert (
        klass["instructor"].conn.execute("SELECT count(*) AS n FROM results").fetchone()["n"] == 0
    )


def test_a_student_reads_only_their_own_rejections(klass):
    alice, bob = klass["students"]
    run = klass["run"]
    mine, bobs = _register(alice, run.id), _register(bob, run.id)
    for store, me in ((alice, mine), (bob, bobs)):
        unit = store.one("claim_unit", worker_id=me)
        store.one("release_unit", worker_id=me, unit_id=unit["unit_id"], attempt=unit["attempt"])
        _submit_junk(store, me, unit)  # no longer held: refused, and the reason recorded
    total = klass["instructor"].conn.execute("SELECT count(*) AS n FROM rejections").fetchone()["n"]
    assert total == 2
    seen = alice.conn.execute("SELECT worker_id FROM rejections").fetchall()
    assert [r["worker_id"] for r in seen] == [mine]


def test_disabled_student_is_refused_on_the_next_call_and_removed_cannot_log_in(klass):
    alice = klass["students"][0]
    run = klass["run"]
    me = _register(alice, run.id)
    assert alice.one("claim_unit", worker_id=me) is not None
    # The database refuses the very next call of a session that is still open ...
    klass["instructor"].one("disable_student", name=klass["names"][0])
    with pytest.raises(Denied, match="disabled by the instructor"):
        alice.one("claim_unit", worker_id=me)
    # ... and `disable` also ends open sessions (as a superuser) and refuses new logins.
    disable_student(klass["instructor"], klass["names"][0])
    with pytest.raises(psycopg.OperationalError):
        alice.one("run_state", run_id=run.id)
    with pytest.raises(LoginRefused, match="not permitted to log in"):
        connect(klass["joins"][0])
    enable_student(klass["instructor"], klass["names"][0])
    again = Store(connect(klass["joins"][0]))
    assert again.one("whoami")["name"] == klass["names"][0]
    again.close()
    remove_student(klass["instructor"], klass["names"][1])
    with pytest.raises(LoginRefused):
        connect(klass["joins"][1])


def test_a_payload_by_copy_goes_only_to_the_students_own_waiting_result(klass):
    """Large payloads stream in by COPY: a trigger checks every row, COPY included."""
    alice, bob = klass["students"]
    run = klass["run"]
    mine, bobs = _register(alice, run.id), _register(bob, run.id)
    limit = run.config.max_payload_bytes
    # Bob records a result and commits without its payload (only COPY could add it later).
    bob_unit = bob.one("claim_unit", worker_id=bobs)
    bob_result = bob.one("submit_begin", **submission(bobs, bob_unit))["result_id"]
    row = (bob_result, b"\x00" * (2 << 20))
    with pytest.raises(Denied, match="belongs to another login"):
        alice.copy_in("copy_payload", types=["int8", "bytea"], row=row)
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="exceeds the limit"):
        bob.copy_in(
            "copy_payload", types=["int8", "bytea"], row=(bob_result, b"\x00" * (limit + 1))
        )
    # A result that is not awaiting its step takes no payload, not even from its owner.
    klass["instructor"].conn.execute(
        "UPDATE results SET status = 'rejected' WHERE id = %s", (bob_result,)
    )
    with pytest.raises(Denied, match="not awaiting a payload"):
        bob.copy_in("copy_payload", types=["int8", "bytea"], row=row)
    # Alice's own upload, the worker's way: result and payload in one transaction.
    worker = WorkerStore.of(alice)
    unit = worker.claim_unit(mine)
    payload = b"\x07" * (2 << 20)  # over COPY_FROM_BYTES: it streams in by COPY
    assert worker.submit_result(Submission(mine, unit.unit_id, unit.attempt), payload).accepted
    stored = klass["instructor"].copy_out_blob(
        "copy_result_payload",
        result_id=klass["instructor"].one("arrived_results", run_id=run.id, version=0)["id"],
    )
    assert stored == payload


def test_a_result_sent_without_its_payload_is_refused_with_a_reason(klass):
    alice, _ = klass["students"]
    run, coordinator = klass["run"], klass["coordinator"]
    mine = _register(alice, run.id)
    units = [alice.one("claim_unit", worker_id=mine) for _ in range(2)]
    for u in units:
        assert alice.one("submit_begin", **submission(mine, u))["accepted"]  # no COPY follows
    coordinator.tick()
    assert coordinator.version == 0  # nothing applicable: the step did not happen
    reasons = alice.all("worker_rejections", worker_id=mine, after_id=0)
    assert [r["reason"] for r in reasons] == ["no payload was uploaded with this result"] * 2
