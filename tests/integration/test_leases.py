"""The worker functions' edges that the protocol tests do not reach: an expired attempt
against its own successor, releasing someone else's unit, a paused or stopped run, and a
result sent again after it was refused."""

import time

from safetensors.torch import load

from ganpool.coordinator import Coordinator
from ganpool.serialization.tensors import pack
from tests.helpers import FakeStudent, make_run


def _state(student: FakeStudent, unit_id: int) -> dict:
    return student.store.conn.execute(
        "SELECT state, worker_id, attempt FROM work_units WHERE id = %s", (unit_id,)
    ).fetchone()


def test_an_expired_attempt_can_neither_heartbeat_nor_submit_over_the_next_one(db):
    run = make_run(db, unit_size=10, results_per_step=1, lease_s=1.0)
    coordinator = Coordinator(db, run)
    coordinator.start()
    a = FakeStudent(db, run, "a")
    try:
        first = a.claim()
        time.sleep(1.3)  # the lease runs out on the server's clock
        coordinator.tick()
        second = a.claim()  # the same unit, to the same worker, as a new attempt
        assert second["unit_id"] == first["unit_id"]
        assert second["attempt"] == first["attempt"] + 1

        def beat(unit):
            return a.store.one(
                "heartbeat", worker_id=a.id, unit_id=unit["unit_id"], attempt=unit["attempt"]
            )["holds"]

        assert not beat(first) and beat(second)
        assert a.submit(second)["accepted"]
        late = a.submit(first)
        assert not late["accepted"] and "lease lost" in late["reason"]
    finally:
        a.close(), coordinator.close()


def test_a_worker_cannot_release_a_unit_another_worker_holds(db):
    run = make_run(db, unit_size=10, results_per_step=2)
    coordinator = Coordinator(db, run)
    coordinator.start()
    a, b = FakeStudent(db, run, "a"), FakeStudent(db, run, "b")
    try:
        unit = a.claim()
        args = {"unit_id": unit["unit_id"], "attempt": unit["attempt"]}
        assert not b.store.one("release_unit", worker_id=b.id, **args)["released"]
        assert _state(a, unit["unit_id"]) == {
            "state": "claimed",
            "worker_id": a.id,
            "attempt": unit["attempt"],
        }
        assert a.store.one("release_unit", worker_id=a.id, **args)["released"]
        assert _state(a, unit["unit_id"])["state"] == "pending"
    finally:
        a.close(), b.close(), coordinator.close()


def test_a_paused_run_hands_out_nothing_and_a_stopped_run_takes_no_result(db):
    run = make_run(db, unit_size=10, results_per_step=2)
    coordinator = Coordinator(db, run)
    coordinator.start()
    a = FakeStudent(db, run, "a")
    try:
        held = a.claim()
        a.store.execute("set_run_status", run_id=run.id, status="paused")
        assert a.claim() is None
        a.store.execute("set_run_status", run_id=run.id, status="running")
        assert a.claim() is not None
        a.store.execute("set_run_status", run_id=run.id, status="stopped")
        reply = a.submit(held)
        assert not reply["accepted"] and reply["reason"] == "the run has stopped"
    finally:
        a.close(), coordinator.close()


def test_a_refused_result_cannot_be_sent_again(db):
    run = make_run(db, unit_size=10, results_per_step=2)
    coordinator = Coordinator(db, run)
    coordinator.start()
    good, bad = FakeStudent(db, run, "good"), FakeStudent(db, run, "bad")
    try:
        u1, u2 = good.claim(), bad.claim()
        fields = bad.payload(u2)
        tensors = load(fields["payload"])
        tensors["grad.D.main.0.weight"][0, 0, 0, 0] = float("nan")
        assert bad.submit(u2, payload=pack(tensors))["accepted"]
        assert good.submit(u1)["accepted"]
        coordinator.tick()  # the NaN result is refused at the step
        assert _state(bad, u2["unit_id"])["state"] == "rejected"
        again = bad.submit(u2)  # the same attempt, a clean payload this time
        assert not again["accepted"]
        assert again["reason"] == f"unit {u2['unit_id']} is already rejected"
    finally:
        good.close(), bad.close(), coordinator.close()


def test_a_worker_is_never_handed_the_spot_check_twin_of_its_own_unit(db):
    # Every unit is spot-checked: its twin, the same work, must go to someone else.
    run = make_run(db, unit_size=10, results_per_step=2, spot_check_rate=1.0)
    coordinator = Coordinator(db, run)
    coordinator.start()
    a, b = FakeStudent(db, run, "a"), FakeStudent(db, run, "b")
    try:
        mine = [a.claim(), a.claim()]
        assert a.claim() is None  # only the twins of its own two units are left
        twin = b.claim()
        twin_of = b.store.conn.execute(
            "SELECT twin_of FROM work_units WHERE id = %s", (twin["unit_id"],)
        ).fetchone()["twin_of"]
        assert twin_of in {u["unit_id"] for u in mine}
    finally:
        a.close(), b.close(), coordinator.close()


def test_a_heartbeat_after_the_lease_ran_out_does_not_revive_it(db):
    # Between the lease running out and the coordinator's next tick, the unit is still
    # marked claimed: a late heartbeat must not take it back.
    run = make_run(db, unit_size=10, results_per_step=1, lease_s=1.0)
    coordinator = Coordinator(db, run)
    coordinator.start()
    a = FakeStudent(db, run, "a")
    try:
        unit = a.claim()
        time.sleep(1.3)  # no tick: the unit's row still says claimed, by a
        assert _state(a, unit["unit_id"])["state"] == "claimed"
        holds = a.store.one(
            "heartbeat", worker_id=a.id, unit_id=unit["unit_id"], attempt=unit["attempt"]
        )["holds"]
        assert not holds
        coordinator.tick()
        assert _state(a, unit["unit_id"])["state"] == "pending"
    finally:
        a.close(), coordinator.close()
