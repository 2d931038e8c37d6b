"""The sweeper of stalled sessions, on its own: it ends a student's statement that runs past
its limit, and never a session of the instructor's login (which the coordinator and the CLI
use), however long that one runs or sits in a transaction. test_student_stalls.py shows the
class surviving the attacks; these tests pin the two rules it rests on. The sweeper runs as
a class's instructor does: a login that is no superuser, a member of the instructor group."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from ganpool.coordinator import sweeper
from ganpool.store import Store, connect, migrate
from ganpool.students import add_student, remove_student

pytestmark = pytest.mark.timeout(120)

ALIVE = "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = %s"


class Statement(threading.Thread):
    """One statement run in a thread; `error` is what ended it, if anything did."""

    def __init__(self, store: Store, sql: str):
        super().__init__(daemon=True)
        self.store, self.sql = store, sql
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.row = None

    def run(self) -> None:
        self.started.set()
        try:
            self.row = self.store.conn.execute(self.sql).fetchone()
        except psycopg.Error as e:
            self.error = e


@pytest.fixture
def klass(db, embedded_server):
    """The instructor's login (a dsn) and a function that logs a new student in."""
    with connect(db) as conn:
        migrate(conn)  # secure the copy of the template (CONNECT, TEMP)
    admin = Store(connect(db))
    teacher = f"teacher_{uuid.uuid4().hex[:8]}"
    group = admin.one("class_roles")["instructor"]
    admin.conn.execute(f"CREATE ROLE {teacher} LOGIN PASSWORD 'teach' IN ROLE {group}")
    info = psycopg.conninfo.conninfo_to_dict(db)
    info.update(user=teacher, password="teach")
    if info.get("host", "").startswith("/"):
        info["host"] = "127.0.0.1"
    port = embedded_server.port if "5432" not in db else 5432
    names, stores = [], []

    def student() -> Store:
        names.append(f"stan-{uuid.uuid4().hex[:8]}")
        stores.append(Store(connect(add_student(admin, names[-1], host="127.0.0.1", port=port))))
        return stores[-1]

    yield psycopg.conninfo.make_conninfo(**info), student
    for s in stores:
        s.close()
    for n in names:
        remove_student(admin, n)
    admin.conn.execute(f"DROP ROLE {teacher}")
    admin.close()


def quick_sweeper(db: str, idle_s: float, active_s: float) -> sweeper.StalledSessionSweeper:
    sweep = sweeper.StalledSessionSweeper(db)
    sweep.every_s, sweep.idle_s, sweep.active_s = 0.2, idle_s, active_s
    return sweep


def test_a_student_statement_running_past_its_limit_is_ended(klass):
    """A student who SETs statement_timeout to 0 and then runs for ever (a stalled upload
    is one statement, a COPY) is ended once the statement is older than active_s, not
    before."""
    instructor, student = klass
    admin = Store(connect(instructor))
    stalled = student()
    stalled.conn.execute("SET statement_timeout = 0")
    pid = stalled.conn.info.backend_pid
    active_s = 2.0
    sweep = quick_sweeper(instructor, idle_s=600.0, active_s=active_s)
    statement = Statement(stalled, "SELECT pg_sleep(60)")
    t0 = time.monotonic()
    statement.start()
    sweep.start()
    try:
        statement.join(45)
        ended_after = time.monotonic() - t0
        assert not statement.is_alive(), "the stalled statement was not ended within 45 s"
        assert isinstance(statement.error, psycopg.OperationalError), statement.error
        assert ended_after >= active_s - 0.1, f"ended after {ended_after:.1f} s"
        assert admin.conn.execute(ALIVE, (pid,)).fetchone()["n"] == 0
        deadline = time.monotonic() + 10
        while not sweep.ended and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sweep.ended == 1
    finally:
        sweep.stop()
        sweep.join(10)
        admin.close()


def test_the_instructors_long_sessions_are_spared(klass):
    """The coordinator's and the instructor's sessions log in as the instructor: one idle
    in a transaction and one in a long statement, both far past the sweeper's limits, are
    left alone while a student's idle transaction beside them is ended. (The function runs
    as the class's owner, which sees the state of, and may end, only the sessions of roles
    it is a member of: the students'. So this holds even without the function's join on
    `students`; the test pins the outcome whichever line keeps it.)"""
    instructor, student = klass
    admin, in_transaction, busy = (Store(connect(instructor)) for _ in range(3))
    idle_student = student()
    sweep = quick_sweeper(instructor, idle_s=0.5, active_s=1.0)
    try:
        in_transaction.conn.execute("BEGIN")
        in_transaction.conn.execute("SELECT 1")
        idle_student.conn.execute("SET idle_in_transaction_session_timeout = 0")
        idle_student.conn.execute("BEGIN")
        idle_student.conn.execute("SELECT 1")
        statement = Statement(busy, "SELECT 1 AS slept FROM pg_sleep(4)")
        statement.start()
        statement.started.wait(5)
        sweep.start()
        # The student's transaction is ended first (a sign the sweeper is sweeping) ...
        deadline = time.monotonic() + 30
        student_pid = idle_student.conn.info.backend_pid
        while admin.conn.execute(ALIVE, (student_pid,)).fetchone()["n"]:
            assert time.monotonic() < deadline, "the student's idle transaction was not ended"
            time.sleep(0.2)
        # ... and the instructor's long statement runs to its end, past many sweeps.
        statement.join(30)
        assert statement.error is None, statement.error
        assert statement.row == {"slept": 1}
        assert in_transaction.conn.execute("SELECT 2 AS two").fetchone()["two"] == 2
        in_transaction.conn.execute("COMMIT")
        assert sweep.ended == 1
    finally:
        sweep.stop()
        sweep.join(10)
        for s in (admin, in_transaction, busy):
            s.close()
