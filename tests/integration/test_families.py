"""The rules of unit families (migration 0008), called one at a time: reporting a unit one
cannot compute, quarantining it only on enough different reports, and backup copies under a
robust rule. The fault drills show these rules in a live class; here each is pinned on its
own, so that a one-line change to the SQL (tools/sql_mutants.py) fails a named test."""

import pytest

from ganpool.coordinator import Coordinator
from tests.helpers import FakeStudent, make_run
from tests.security.classroom import Logins, Student


def _report(student, unit: dict, image_index: int | None = None) -> bool:
    return student.store.one(
        "report_failure",
        worker_id=student.id,
        unit_id=unit["unit_id"],
        attempt=unit["attempt"],
        image_index=image_index,
        reason="cannot decode",
    )["reported"]


def _unit(store, unit_id: int) -> dict:
    return store.conn.execute(
        "SELECT state, worker_id, backup_of FROM work_units WHERE id = %s", (unit_id,)
    ).fetchone()


def _copy_claimed_units(coordinator: Coordinator) -> list[int]:
    """Backup copies of every unit claimed so far (the coordinator's own query, no wait)."""
    rows = coordinator.store.all(
        "issue_backups", run_id=coordinator.run.id, version=0, after_s=0.0, max_copies=1
    )
    return [r["backup_of"] for r in rows]


def _quarantine(coordinator: Coordinator, after: int = 2) -> list[int]:
    rows = coordinator.store.all("quarantine_units", run_id=coordinator.run.id, after=after)
    return [r["id"] for r in rows]


@pytest.fixture
def one_unit(db):
    """A run with one unit per step, its coordinator, and three plain workers."""
    run = make_run(db, unit_size=10, results_per_step=1, units_per_step=1)
    coordinator = Coordinator(db, run)
    coordinator.start()
    workers = [FakeStudent(db, run, name) for name in "abc"]
    yield coordinator, workers
    for w in workers:
        w.close()
    coordinator.close()


def test_only_the_holder_reports_a_unit_which_it_is_never_handed_again(one_unit):
    _, (a, b, _) = one_unit
    unit = a.claim()
    assert not _report(b, unit)  # b does not hold it: nothing recorded, a keeps it
    assert _unit(a.store, unit["unit_id"])["worker_id"] == a.id
    outside = max(unit["indices"]) + 1  # an image that is not in the unit
    assert _report(a, unit, image_index=outside)
    assert _unit(a.store, unit["unit_id"])["state"] == "pending"
    failure = a.store.conn.execute(
        "SELECT worker_id, image_index FROM unit_failures WHERE family_id = %s",
        (unit["unit_id"],),
    ).fetchall()
    assert failure == [{"worker_id": a.id, "image_index": None}]
    assert a.claim() is None  # the only pending unit is the one it cannot compute
    assert b.claim()["unit_id"] == unit["unit_id"]


def test_a_family_is_quarantined_on_enough_reports_over_its_copies(one_unit):
    coordinator, (a, b, _) = one_unit
    unit = a.claim()
    assert _copy_claimed_units(coordinator) == [unit["unit_id"]]
    copy = b.claim()
    assert _unit(b.store, copy["unit_id"])["backup_of"] == unit["unit_id"]
    assert _report(a, unit)
    assert _quarantine(coordinator) == []  # one report of two needed
    assert _report(b, copy)  # on the copy: the same family
    assert _quarantine(coordinator) == [unit["unit_id"]]
    for unit_id in (unit["unit_id"], copy["unit_id"]):
        assert _unit(a.store, unit_id)["state"] == "quarantined"


def test_a_family_a_copy_computed_is_not_quarantined(one_unit):
    coordinator, (a, b, c) = one_unit
    unit = a.claim()
    _copy_claimed_units(coordinator)
    copy = b.claim()
    assert b.submit(copy)["accepted"]
    assert _report(a, unit)
    assert c.claim()["unit_id"] == unit["unit_id"]
    assert _report(c, {**unit, "attempt": unit["attempt"] + 1})
    assert _quarantine(coordinator) == []
    assert _unit(a.store, unit["unit_id"])["state"] == "pending"


def test_a_robust_rule_never_gives_one_worker_a_copy_in_a_step_it_works_on(db):
    run = make_run(db, unit_size=10, results_per_step=3, aggregation="median")
    coordinator = Coordinator(db, run)
    coordinator.start()
    workers = [FakeStudent(db, run, name) for name in "abcd"]
    try:
        for w in workers[:3]:
            assert w.claim() is not None
        assert len(_copy_claimed_units(coordinator)) == 3
        assert workers[0].claim() is None  # it already holds a unit of this step
        copy = workers[3].claim()
        assert _unit(coordinator.store, copy["unit_id"])["backup_of"] is not None
    finally:
        for w in workers:
            w.close()
        coordinator.close()


@pytest.fixture
def logins(embedded_db, embedded_server):
    made = Logins(embedded_db, embedded_server.port)
    yield made
    made.close()


def test_a_students_workers_report_a_unit_once_between_them(embedded_db, logins):
    run = make_run(embedded_db, "report", unit_size=10, results_per_step=1, units_per_step=1)
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    join = logins.add("reporter")
    first, second = Student(join, run, "r1"), Student(join, run, "r2")
    try:
        unit = first.claim()
        assert _report(first, unit)
        assert second.claim() is None  # the same student: never handed it again
        assert _quarantine(coordinator, after=2) == []
    finally:
        first.store.close(), second.store.close(), coordinator.close()


def test_of_a_unit_and_its_copy_the_first_result_is_applied_and_the_step_goes_on(embedded_db):
    """A unit and its backup copy both come back valid in one step: the first result is
    applied, the copy's is superseded (dropped, not refused), and the step's other unit is
    still screened and applied."""
    run = make_run(embedded_db, unit_size=10, results_per_step=2, units_per_step=2)
    coordinator = Coordinator(embedded_db, run)
    a, b, c = (FakeStudent(embedded_db, run, name) for name in "abc")
    try:
        coordinator.start()
        first = a.claim()
        assert _copy_claimed_units(coordinator) == [first["unit_id"]]
        claimed = {b: b.claim(), c: c.claim()}
        (b, copy), (c, other) = sorted(
            claimed.items(), key=lambda sc: _unit(a.store, sc[1]["unit_id"])["backup_of"] is None
        )
        assert _unit(a.store, copy["unit_id"])["backup_of"] == first["unit_id"]
        assert _unit(a.store, other["unit_id"])["backup_of"] is None
        for student, unit in ((a, first), (b, copy), (c, other)):  # the copy's before the other
            assert student.submit(unit)["accepted"]
        coordinator.collect()
        coordinator.tick()
        assert coordinator.version == 1
        rows = a.store.conn.execute(
            "SELECT unit_id, status FROM results WHERE run_id = %s", (run.id,)
        ).fetchall()
        status = {r["unit_id"]: r["status"] for r in rows}
        assert status == {
            first["unit_id"]: "applied",
            copy["unit_id"]: "superseded",
            other["unit_id"]: "applied",
        }
        assert _unit(a.store, copy["unit_id"])["state"] == "cancelled"
        assert b.rejections() == []  # superseded, not refused
    finally:
        for student in (a, b, c):
            student.close()
        coordinator.close()
