"""One student's session never stalls the class: a coordinator and two honest workers train
while a student logged in with their own join string attacks, and the run's version must keep
advancing. Each test prints the class's rate (versions per second) before and during the
attack (run with -s to see the lines; docs/security.md quotes them)."""

from __future__ import annotations

import contextlib
import time
import uuid

import psycopg
import pytest

from ganpool.coordinator import Coordinator, sweeper
from ganpool.errors import GanpoolError
from ganpool.store import Store, connect, migrate
from ganpool.store.submission import PAYLOAD_CHUNK_BYTES, submission
from ganpool.students import add_student, remove_student
from ganpool.worker import Worker
from tests.helpers import Threads, make_run

pytestmark = pytest.mark.timeout(240)

WINDOW_S = 8.0  # how long each rate is measured over


class Class:
    """A live run: a coordinator and two honest workers in threads, and one student login."""

    def __init__(self, dsn: str, port: int | None, **run_settings):
        self.dsn = dsn
        settings = {"unit_size": 10, "results_per_step": 2, "max_steps": 100_000, **run_settings}
        self.run = make_run(dsn, "class", **settings)
        self.admin = Store(connect(dsn))
        self.name = f"mallory-{uuid.uuid4().hex[:8]}"
        host = "127.0.0.1"
        self.join = add_student(self.admin, self.name, host=host, port=port or 5432)
        self.student = Store(connect(self.join))
        self.threads = Threads()
        self.coordinator = Coordinator(dsn, self.run, poll_s=0.2)
        self.threads.start(self.coordinator.serve)
        for i in range(2):
            self.threads.start(Worker(dsn, self.run, f"honest{i}", device="cpu", poll_s=0.2).serve)

    def version(self) -> int:
        return self.admin.one("run_state", run_id=self.run.id)["current_version"]

    def wait_for_version(self, v: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.version() < v:
            assert time.monotonic() < deadline, f"version {v} not reached in {timeout}s"
            time.sleep(0.1)

    def rate(self, seconds: float = WINDOW_S) -> tuple[int, float]:
        """Versions published over `seconds`, and per second."""
        start = self.version()
        time.sleep(seconds)
        gained = self.version() - start
        return gained, gained / seconds

    def close(self) -> None:
        self.admin.execute("set_run_status", run_id=self.run.id, status="stopped")
        self.admin.execute("notify_run_status", run_id=self.run.id)
        try:
            self.threads.join(90)
        finally:
            self.student.close()
            with contextlib.suppress(GanpoolError):
                remove_student(self.admin, self.name)
            self.admin.close()


@pytest.fixture
def live_class(db, embedded_server):
    made = []

    def start(**run_settings) -> Class:
        with connect(db) as conn:
            migrate(conn)  # secure the copy of the template (CONNECT, TEMP)
        port = embedded_server.port if "5432" not in db else None
        made.append(Class(db, port, **run_settings))
        return made[-1]

    yield start
    for c in made:
        c.close()


def _report(capsys, attack: str, before: tuple[int, float], during: tuple[int, float], db: str):
    server = "PG 15" if "5432" in db else "PG 18"
    with capsys.disabled():
        print(
            f"\n[attack] {attack} ({server}): {before[1]:.2f} versions/s before, "
            f"{during[1]:.2f} during ({during[0]} versions in {WINDOW_S:.0f} s)"
        )


def test_one_open_transaction_over_every_unit_id_blocks_no_claim(
    live_class, capsys, db, monkeypatch
):
    """The issue's attack: submit_begin over every unit id inside one transaction, left
    open. Before 0006 it locked each unit FOR UPDATE ahead of the ownership check, and the
    honest workers' claims (SKIP LOCKED) found nothing."""
    # The sweeper would end the open transaction: it is kept out of the way here, so that
    # what is measured is the functions' own behaviour.
    monkeypatch.setattr(sweeper, "IDLE_IN_TRANSACTION_S", 600.0)
    c = live_class()
    c.wait_for_version(2)
    before = c.rate()
    me = c.student.one("register_worker", run_id=c.run.id, name="m", hostname="h", device="c")
    mine = me["worker_id"]
    c.student.conn.execute("BEGIN")
    last_unit = c.admin.conn.execute("SELECT max(id) AS n FROM work_units").fetchone()["n"]
    for unit_id in range(1, last_unit + 50):  # every unit there is, and the next ones
        fake = {"unit_id": unit_id, "attempt": 1}
        verdict = c.student.one("submit_begin", **submission(mine, fake))
        assert not verdict["accepted"]
    # The student's transaction stays open, holding whatever those calls locked.
    during = c.rate()
    with c.admin.tx():  # units someone holds a lock on (the honest ones: a few at most)
        units = c.admin.conn.execute("SELECT count(*) AS n FROM work_units").fetchone()["n"]
        free = c.admin.conn.execute(
            "SELECT count(*) AS n FROM (SELECT id FROM work_units FOR UPDATE SKIP LOCKED) AS f"
        ).fetchone()["n"]
    c.student.conn.execute("ROLLBACK")
    _report(capsys, "submit_begin over every unit id, transaction left open", before, during, db)
    assert during[0] >= 3, f"the class stalled: {during[0]} versions in {WINDOW_S}s"
    assert units > 20 and units - free <= 4, (units, free)


def test_a_stalled_upload_is_ended_whatever_timeouts_the_student_set(
    live_class, capsys, db, monkeypatch
):
    """A student's upload that stops half-way keeps its transaction (and its unit's lock)
    open. The role's idle_in_transaction_session_timeout ends that for an honest client; a
    student who SETs it to 0 is ended by the coordinator's sweeper instead."""
    c = live_class(lease_s=3.0)  # the unit comes back soon after the session ends
    c.wait_for_version(2)
    before = c.rate()
    student = c.student
    student.conn.execute("SET idle_in_transaction_session_timeout = 0")
    student.conn.execute("SET statement_timeout = 0")
    me = student.one("register_worker", run_id=c.run.id, name="m", hostname="h", device="c")
    unit = None
    deadline = time.monotonic() + 30
    while unit is None:
        assert time.monotonic() < deadline, "no unit to claim"
        unit = student.one("claim_unit", worker_id=me["worker_id"])
    student.conn.execute("BEGIN")
    verdict = student.one("submit_begin", **submission(me["worker_id"], unit))
    assert verdict["accepted"]
    student.copy_in("copy_payload", ["int8", "bytea"], row=(verdict["result_id"], b"x" * 1000))
    # ... and then the lid closes: the transaction is left open, its unit locked.
    t0, v0 = time.monotonic(), c.version()
    pid = student.conn.info.backend_pid
    alive = "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = %s"
    while c.admin.conn.execute(alive, (pid,)).fetchone()["n"]:
        if time.monotonic() - t0 > 60:
            pytest.fail("the stalled session was not ended within 60 s")
        time.sleep(0.2)
    ended_after = time.monotonic() - t0
    time.sleep(max(0.0, WINDOW_S - ended_after))
    gained = c.version() - v0
    during = (gained, gained / (time.monotonic() - t0))
    _report(capsys, "upload stopped half-way, timeouts SET to 0", before, during, db)
    with capsys.disabled():
        print(f"[attack] the stalled session was ended after {ended_after:.1f} s")
    assert during[0] >= 3


@pytest.fixture(autouse=True)
def quick_sweeper(monkeypatch):
    """The sweeper's thresholds are minutes in a class; seconds here."""
    monkeypatch.setattr(sweeper, "SWEEP_EVERY_S", 1.0)
    monkeypatch.setattr(sweeper, "IDLE_IN_TRANSACTION_S", 5.0)


def test_locks_a_student_can_take_do_not_stop_the_coordinator_or_a_migration(db, embedded_server):
    """Advisory locks are open to every login: the old fixed keys of the coordinator and of
    migrations no longer matter; ownership is a row no student can touch."""
    with connect(db) as conn:
        migrate(conn)
    run = make_run(db, unit_size=10, results_per_step=2)
    admin = Store(connect(db))
    name = f"trudy-{uuid.uuid4().hex[:8]}"
    port = embedded_server.port if "5432" not in db else 5432
    student = Store(connect(add_student(admin, name, host="127.0.0.1", port=port)))
    try:
        student.conn.execute("BEGIN")
        student.conn.execute("SELECT pg_advisory_lock(%s, %s)", (0x67616E70, run.id))
        student.conn.execute("SELECT pg_advisory_xact_lock(1785622639)")
        for sql in (
            "SELECT * FROM owners FOR UPDATE",
            "LOCK TABLE migration_lock IN ACCESS SHARE MODE",
            "SELECT ganpool_take_ownership('coordinator:1')",
        ):
            student.conn.execute("SAVEPOINT s")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                student.conn.execute(sql)
            student.conn.execute("ROLLBACK TO SAVEPOINT s")
        coordinator = Coordinator(db, run)  # takes ownership despite the student's locks
        coordinator.start()
        assert coordinator.version == 0
        with pytest.raises(GanpoolError, match="another coordinator is already running"):
            Coordinator(db, run)
        with connect(db) as conn:
            assert migrate(conn) == []  # not blocked by the student's lock on the old key
        coordinator.close()
        # Its session gone (as after a database restart), the next coordinator takes over.
        Coordinator(db, run).close()
    finally:
        student.close()
        remove_student(admin, name)
        admin.close()


def test_a_coordinator_reconnecting_ends_its_own_lingering_session(db):
    """After a network cut the server may keep the coordinator's old session (and its
    ownership) until TCP gives up: the coordinator's next session ends it and takes over;
    another login's session cannot."""
    run = make_run(db)
    what = f"coordinator:{run.id}"
    old, new, other = (Store(connect(db)) for _ in range(3))
    try:
        first = old.one("take_ownership", what=what, previous_pid=None)
        assert first["taken"]
        assert not other.one("take_ownership", what=what, previous_pid=12345)["taken"]
        second = new.one("take_ownership", what=what, previous_pid=first["holder_pid"])
        assert second["taken"] and second["holder_pid"] != first["holder_pid"]
        with pytest.raises(psycopg.OperationalError):
            old.conn.execute("SELECT 1")
    finally:
        for s in (old, new, other):
            s.close()


def test_an_oversized_upload_is_refused_chunk_by_chunk(db, embedded_server):
    """A payload streams in as rows of at most 1 MiB; the trigger refuses the row that takes
    the running total past the run's limit (the server never holds more than a row of it),
    and a single row over 1 MiB."""
    from tests.helpers import FakeStudent

    run = make_run(db, unit_size=10, results_per_step=2)
    coordinator = Coordinator(db, run)
    coordinator.start()
    s = FakeStudent(db, run, "s")
    try:
        unit = s.claim()
        verdict = s.store.one("submit_begin", **submission(s.id, unit))
        limit = run.config.max_payload_bytes
        chunk = b"\x00" * PAYLOAD_CHUNK_BYTES
        rows = ((verdict["result_id"], chunk) for _ in range(limit // PAYLOAD_CHUNK_BYTES + 2))
        too_many = pytest.raises(psycopg.errors.ProgramLimitExceeded, match="exceeds the limit")
        with too_many, s.store.tx():
            s.store.copy_in("copy_payload", ["int8", "bytea"], rows=rows)
        too_big = pytest.raises(psycopg.errors.ProgramLimitExceeded, match="per row")
        with too_big, s.store.tx():
            row = (verdict["result_id"], chunk + b"x")
            s.store.copy_in("copy_payload", ["int8", "bytea"], row=row)
    finally:
        s.close()
        coordinator.close()


def test_a_listener_left_idle_in_a_transaction_is_ended(db, embedded_server):
    """A session that LISTENs and then sits in an open transaction pins PostgreSQL's
    notification queue (until every NOTIFY, hence every submission, fails). The sweeper
    ends it; a session merely idle (a worker's listener) is left alone."""
    with connect(db) as conn:
        migrate(conn)
    admin = Store(connect(db))
    name = f"lena-{uuid.uuid4().hex[:8]}"
    port = embedded_server.port if "5432" not in db else 5432
    join = add_student(admin, name, host="127.0.0.1", port=port)
    pinning, idle = Store(connect(join)), Store(connect(join))
    sweep = sweeper.StalledSessionSweeper(db)
    try:
        for s in (pinning, idle):
            s.execute("listen_results")
        pinning.conn.execute("SET idle_in_transaction_session_timeout = 0")
        pinning.conn.execute("BEGIN")
        pinning.conn.execute("SELECT 1")
        sweep.start()
        alive = "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = %s"
        deadline = time.monotonic() + 30
        while admin.conn.execute(alive, (pinning.conn.info.backend_pid,)).fetchone()["n"]:
            assert time.monotonic() < deadline, "the pinning session was not ended"
            time.sleep(0.2)
        # The session can be gone before the sweeper's thread has read the server's reply.
        while not sweep.ended and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sweep.ended == 1
        assert idle.conn.execute("SELECT 1 AS one").fetchone()["one"] == 1
    finally:
        sweep.stop()
        sweep.join(10)
        pinning.close(), idle.close()
        remove_student(admin, name)
        admin.close()
