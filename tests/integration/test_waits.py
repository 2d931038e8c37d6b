"""A wait reads as one line, however long it lasts: a paused run, a run whose coordinator is
gone; and pause/resume/stop apply only where they make sense."""

from __future__ import annotations

import logging
import time

import pytest

from ganpool.coordinator import Coordinator
from ganpool.errors import GanpoolError
from ganpool.runs import control_run, coordinator_alive, delete_run, find_run
from ganpool.store import Store, connect
from ganpool.worker import Worker
from tests.helpers import Threads, make_run

pytestmark = pytest.mark.timeout(180)


def _wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _lines(caplog, fragment: str) -> int:
    return sum(fragment in r.getMessage() for r in caplog.records)


def test_a_pause_is_one_line_for_the_worker_and_the_coordinator(embedded_db, caplog):
    caplog.set_level(logging.INFO, logger="ganpool")
    run = make_run(embedded_db, "pausing", max_steps=6, unit_size=5)
    store = Store(connect(embedded_db))
    threads = Threads()
    coordinator = Coordinator(embedded_db, run, poll_s=0.1)
    worker = Worker(embedded_db, run, "w", device="cpu", poll_s=0.1)
    try:
        assert coordinator_alive(store, run.id)  # it holds the run from its first moment
        control_run(store, run, "pause")
        threads.start(coordinator.serve)
        threads.start(worker.serve)
        time.sleep(2.0)  # twenty polls each, at least
        assert _lines(caplog, "the run is paused: waiting for the instructor") == 1
        assert _lines(caplog, "the run is paused: waiting for `ganpool run resume`") == 1
        assert store.one("run_state", run_id=run.id)["current_version"] <= 0
        control_run(store, run, "resume")
        threads.join(120)
    finally:
        if store.one("run_state", run_id=run.id)["status"] != "finished":
            control_run(store, find_run(store, "pausing"), "stop")
        threads.join(60)
        store.close()
    assert _lines(caplog, "the run is running again: back to work") == 1  # the worker
    assert _lines(caplog, "the run is running again") == 2  # and the coordinator
    assert worker.progress.units > 0


def test_a_worker_says_once_that_no_coordinator_is_running(embedded_db, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="ganpool")
    monkeypatch.setattr(Worker, "NO_COORDINATOR_AFTER_S", 0.5)
    run = make_run(embedded_db, "orphan", max_steps=1)
    store = Store(connect(embedded_db))
    store.execute("start_run", run_id=run.id)  # running, and no coordinator holds it
    threads = Threads()
    worker = Worker(embedded_db, run, "w", device="cpu", poll_s=0.1)
    try:
        threads.start(worker.serve)
        _wait_for(lambda: _lines(caplog, "no coordinator is running this run") == 1)
        time.sleep(1.0)
        assert _lines(caplog, "no coordinator is running this run") == 1
    finally:
        control_run(store, run, "stop")
        threads.join(60)
        store.close()


def test_controls_apply_only_where_they_make_sense(embedded_db):
    run = make_run(embedded_db, "ctl", max_steps=1)
    store = Store(connect(embedded_db))
    try:
        with pytest.raises(GanpoolError, match="is created: it cannot be resumed"):
            control_run(store, run, "resume")
        assert control_run(store, run, "pause") == "paused"
        with pytest.raises(GanpoolError, match="already paused"):
            control_run(store, run, "pause")
        assert control_run(store, run, "stop") == "stopped"
        for action in ("pause", "resume"):
            with pytest.raises(GanpoolError, match="is stopped"):
                control_run(store, run, action)
        assert store.one("run_state", run_id=run.id)["status"] == "stopped"
        # A running run is not deleted by accident; a stopped one is, with all its rows.
        busy = make_run(embedded_db, "busy", max_steps=1)
        store.execute("start_run", run_id=busy.id)
        with pytest.raises(GanpoolError, match="--force"):
            delete_run(store, busy)
        delete_run(store, busy, force=True)
        delete_run(store, run)
        assert store.one("run_by_name", name="ctl") is None
        assert store.one("run_by_name", name="busy") is None
    finally:
        store.close()
