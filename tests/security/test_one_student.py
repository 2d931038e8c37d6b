"""One student never stalls the class: attacks by a student logged in over SCRAM against a
live run (coordinator and honest workers in threads, real PostgreSQL). Each measures the
class's rate before and during the attack, and asserts the run keeps stepping while the
attack holds and that nothing of the attacker's is applied."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from ganpool.store import Store, connect
from ganpool.store.queries import named_queries
from ganpool.store.submission import submission
from ganpool.worker import Worker
from tests.helpers import make_run
from tests.security.classroom import LiveClass, Logins, Student, report

pytestmark = pytest.mark.timeout(180)

BASELINE_S = 3.0
ATTACK_S = 5.0


@pytest.fixture
def logins(embedded_db, embedded_server):
    made = Logins(embedded_db, embedded_server.port)
    yield made
    made.close()


def _live_run(dsn: str, name: str, **overrides):
    return make_run(
        dsn, name, unit_size=10, results_per_step=2, update_rule="alternating", **overrides
    )


def _student_applied(live: LiveClass, worker_id: int) -> int:
    return live.query(
        "SELECT count(*) AS n FROM version_contributions WHERE worker_id = %s", worker_id
    )[0]["n"]


def test_a_stalled_upload_does_not_stop_the_class(embedded_db, logins, capsys):
    """A submission whose COPY stops half-way keeps its transaction (and row locks) open past
    its lease: the coordinator skips the locked rows, the unit gets a backup copy, and the
    class keeps stepping."""
    run = _live_run(embedded_db, "stall", lease_s=2.0)
    live = LiveClass(embedded_db, run, honest=2)
    join = logins.add("mallory")
    mallory = Student(join, run, "mallory")
    conn = connect(join, autocommit=False)  # the upload's own connection, as a worker's
    try:
        live.wait_version(4)
        before = live.rate(BASELINE_S)
        unit = mallory.claim(timeout=20)
        assert unit is not None
        # One transaction, left half-way through the COPY of the payload.
        verdict = Store(conn).one("submit_begin", **submission(mallory.id, unit))
        assert verdict["accepted"], verdict
        cursor = conn.cursor()
        copying = cursor.copy(named_queries()["copy_payload"])  # kept: it holds the COPY open
        copy = copying.__enter__()
        row = (2).to_bytes(2, "big") + (8).to_bytes(4, "big")
        row += verdict["result_id"].to_bytes(8, "big") + (1 << 20).to_bytes(4, "big")
        copy.write(b"PGCOPY\n\xff\r\n\x00" + bytes(8) + row + bytes(4096))  # 4 KB of 1 MB
        stalled_at = live.version()
        during = live.rate(ATTACK_S)  # past the 2 s lease: expiry would have waited on it
        advanced = live.version() - stalled_at
        assert advanced >= 3, f"the class advanced {advanced} version(s) during the stall"
        # The stalled unit was served by a backup copy; nothing of the student's applied.
        copies = live.query(
            "SELECT count(*) AS n FROM work_units WHERE backup_of = %s AND state = 'applied'",
            unit["unit_id"],
        )[0]["n"]
        assert copies == 1
        assert _student_applied(live, mallory.id) == 0
        report(capsys, "upload stalled mid-COPY, transaction open", before, during)
    finally:
        conn.close()  # the server aborts the half-done upload
        mallory.close()
        live.close()


def test_an_open_transaction_of_foreign_calls_locks_nothing(embedded_db, logins, capsys):
    """A student calling claim / heartbeat / release for every worker and every unit inside
    one open transaction: each foreign call fails before it locks anything, their own touch
    only their own rows, and the class keeps stepping."""
    run = _live_run(embedded_db, "calls", lease_s=5.0)
    live = LiveClass(embedded_db, run, honest=2)
    join = logins.add("eve")
    eve = Student(join, run, "eve")
    conn = connect(join, autocommit=False)
    try:
        live.wait_version(4)
        before = live.rate(BASELINE_S)
        store = Store(conn)
        workers = [w["id"] for w in live.query("SELECT id FROM workers WHERE run_id = %s", run.id)]
        units = [u["id"] for u in live.query("SELECT id FROM work_units WHERE run_id = %s", run.id)]
        refused = 0
        for worker in workers:
            for unit in units[-20:]:
                for query, args in (
                    ("claim_unit", {}),
                    ("heartbeat", {"unit_id": unit, "attempt": 1}),
                    ("release_unit", {"unit_id": unit, "attempt": 1}),
                ):
                    try:
                        with conn.transaction():  # a savepoint: carry on after a refusal
                            store.one(query, worker_id=worker, **args)
                    except psycopg.errors.InsufficientPrivilege:
                        refused += 1
        assert refused > 0  # the honest workers' ids were refused
        # The transaction stays open. The instructor can still lock every honest worker's
        # row (a disable does): the refused calls left no lock behind.
        with connect(embedded_db) as admin, admin.transaction():
            admin.execute("SET LOCAL lock_timeout = '3s'")
            for worker in workers:
                if worker != eve.id:
                    admin.execute("SELECT id FROM workers WHERE id = %s FOR UPDATE", (worker,))
        during = live.rate(ATTACK_S)
        assert during > 0.3 * before and during > 0, (before, during)
        assert _student_applied(live, eve.id) == 0
        report(capsys, "open transaction of foreign claim/heartbeat/release", before, during)
    finally:
        conn.close()
        eve.close()
        live.close()


def test_a_notify_flood_does_not_drive_claims_or_stop_the_class(embedded_db, logins, capsys):
    run = _live_run(embedded_db, "flood", lease_s=5.0)
    live = LiveClass(embedded_db, run, honest=2)
    # A worker with nothing to do (its run is not started): every claim it makes is empty.
    idle = Worker(embedded_db, _live_run(embedded_db, "idle"), "idle", device="cpu", poll_s=0.1)
    live.workers.append(idle)
    live.threads.start(idle.serve)
    stop = threading.Event()
    sent = [0]
    join = logins.add("flood")

    def flood(channel: str) -> None:
        with connect(join) as conn:
            while not stop.is_set():
                conn.execute("SELECT pg_notify(%s, 'x') FROM generate_series(1, 50)", (channel,))
                sent[0] += 50

    try:
        live.wait_version(4)
        before = live.rate(BASELINE_S)
        counts = [(w.claims, w.empty_claims) for w in live.workers]
        flooders = [
            threading.Thread(target=flood, args=(ch,), daemon=True)
            for ch in ("ganpool_version", "ganpool_results")
        ]
        for t in flooders:
            t.start()
        t0 = time.monotonic()
        during = live.rate(ATTACK_S)
        elapsed = time.monotonic() - t0
        rates = [
            ((w.claims - c) / elapsed, (w.empty_claims - e) / elapsed)
            for w, (c, e) in zip(live.workers, counts, strict=True)
        ]
        stop.set()
        for t in flooders:
            t.join(10)
        rate_sent = sent[0] / elapsed
        assert rate_sent > 500, rate_sent  # the flood was a flood
        # The idle worker: at most 10 claims a second (and a burst of 3), where the flood
        # used to drive it to hundreds. The working ones: 3 empty claims at once after each
        # unit they found, then 10 a second.
        idle_rate = rates[-1][0]
        assert 0 < idle_rate <= 10 + 3 / elapsed, idle_rate
        for total, empty in rates[:-1]:
            assert empty <= 10 + 3 * (total - empty) + 3 / elapsed, (total, empty)
        assert during > 0, "the class stopped under the flood"
        report(
            capsys,
            f"NOTIFY flood ({rate_sent:.0f}/s on both channels), idle worker {idle_rate:.1f} "
            f"claims/s, working ones {rates[0][0]:.1f} and {rates[1][0]:.1f}",
            before,
            during,
        )
    finally:
        stop.set()
        live.close()


def test_a_student_holds_at_most_the_cap_and_cannot_stretch_a_lease(embedded_db, logins):
    """max_units_per_student counts every worker of a login; a heartbeat extends a lease only
    up to the worker's hold limit (here, with no history: the lease itself)."""
    run = make_run(
        embedded_db,
        "cap",
        unit_size=10,
        results_per_step=2,
        units_per_step=6,
        max_units_per_student=2,
        lease_s=1.0,
        hold_factor=1.0,
    )
    live_coordinator = None
    from ganpool.coordinator import Coordinator

    live_coordinator = Coordinator(embedded_db, run)
    live_coordinator.start()
    join = logins.add("hoarder")
    a, b, c = (Student(join, run, f"h{i}") for i in range(3))
    try:
        assert a.claim() is not None
        held = b.claim()
        assert held is not None
        assert c.claim() is None  # two held by this login: the third worker gets nothing
        honest = Student(embedded_db, run, "honest")
        assert honest.claim() is not None  # units are left, for others
        # Heartbeats every 0.3 s: the lease is not extended past claim + 1 s.
        deadline = time.monotonic() + 3
        holds = True
        while holds and time.monotonic() < deadline:
            time.sleep(0.3)
            holds = b.store.one(
                "heartbeat", worker_id=b.id, unit_id=held["unit_id"], attempt=held["attempt"]
            )["holds"]
        assert not holds, "heartbeats stretched the lease past its bound"
        honest.close()
    finally:
        for s in (a, b, c):
            s.close()
        live_coordinator.close()


def test_spot_check_twins_go_to_different_students(embedded_db, logins):
    from ganpool.coordinator import Coordinator

    run = make_run(embedded_db, "twins", unit_size=10, results_per_step=1, spot_check_rate=1.0)
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    join = logins.add("twinner")
    first, second = Student(join, run, "t1"), Student(join, run, "t2")
    other = Student(logins.add("other"), run, "o")
    try:
        unit = first.claim()
        assert unit is not None
        # The only pending unit is its twin: not for the same student's other worker.
        assert second.claim() is None
        twin = other.claim()
        assert twin is not None
        row = coordinator.store.one("run_state", run_id=run.id)  # keep the session warm
        assert row["status"] == "running"
        twin_of = coordinator.store.conn.execute(
            "SELECT twin_of FROM work_units WHERE id = %s", (twin["unit_id"],)
        ).fetchone()["twin_of"]
        assert twin_of == unit["unit_id"]
    finally:
        for s in (first, second, other):
            s.close()
        coordinator.close()
