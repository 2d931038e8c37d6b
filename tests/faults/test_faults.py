"""Fault drills with real processes: kill, stop and restart things mid-run, then check that
training reached its target with every unit applied at most once, every image of each
completed epoch exactly once, the reference trainer's exact weights, and nothing left over."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.store import connect, migrate
from tests.faults.harness import Cluster, assert_trained_exactly_once, no_process_left
from tests.helpers import make_run

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

TARGET = 16  # steps: 8 epochs of the 100 built-in faces at 2 units of 25 per step


@pytest.fixture
def cluster(embedded_db, tmp_path):
    def make(**overrides) -> Cluster:
        run = make_run(
            embedded_db,
            "drill",
            max_steps=TARGET,
            lease_s=overrides.pop("lease_s", 2.0),
            **overrides,
        )
        c = Cluster(embedded_db, run, tmp_path / "logs")
        made.append(c)
        return c

    made: list[Cluster] = []
    yield make
    for c in made:
        c.kill_all()


def report(capsys, name: str, cluster: Cluster, restarts: int = 0) -> None:
    f = cluster.figures()
    with capsys.disabled():
        print(
            f"\n[fault] {name}: steps {cluster.version()}/{TARGET}, "
            f"units reissued {f['reissued']}, backup copies {f['copies']}, "
            f"rejected stale {f['stale']}, "
            f"lease lost {f['lease_lost']}, restarts survived {restarts}"
        )


def test_coordinator_sigkill_mid_step_then_resume(cluster, capsys):
    c = cluster()
    coordinator = c.coordinator()
    c.worker("w1"), c.worker("w2")
    c.wait_for(lambda: c.version() >= 5)
    coordinator.send_signal(signal.SIGKILL)
    coordinator.wait()
    killed_at = c.version()
    time.sleep(0.5)  # workers keep submitting for the version they have
    c.coordinator("coordinator-2")
    c.wait_finished()
    c.wait_exit()
    assert killed_at < TARGET
    assert "resumed" in c.log("coordinator-2") or c.version() == TARGET
    assert_trained_exactly_once(c, TARGET)
    no_process_left(c)
    report(capsys, "coordinator SIGKILL + restart", c, restarts=1)


def test_worker_sigkill_mid_unit(cluster, capsys):
    c = cluster()
    c.coordinator()
    w1 = c.worker("w1")
    c.worker("w2")
    c.wait_for(lambda: c.version() >= 3)
    held = c.wait_for(lambda: c.claim_of("w1"), every=0.002)
    w1.send_signal(signal.SIGKILL)
    w1.wait()
    c.wait_finished()
    c.wait_exit()
    assert_trained_exactly_once(c, TARGET)
    unit = c.query("SELECT state, reissued FROM work_units WHERE id = %s", held["id"])[0]
    # The unit, or one backup copy of it, was applied: exactly one of them.
    copies = c.query(
        "SELECT id, state FROM work_units WHERE backup_of = %s AND state = 'applied'", held["id"]
    )
    assert (unit["state"] == "applied") + len(copies) == 1, (unit, copies)
    # Killed holding the claim, the unit came back by lease expiry or through a backup copy
    # (unless w1 had submitted).
    submitted_by_w1 = c.query(
        "SELECT count(*) AS n FROM results AS r JOIN workers AS w ON w.id = r.worker_id "
        "WHERE r.unit_id = %s AND w.name = 'w1'",
        held["id"],
    )[0]["n"]
    assert unit["reissued"] >= 1 or copies or submitted_by_w1 == 1
    no_process_left(c)
    report(capsys, "worker SIGKILL mid-unit", c)


def test_worker_sigstop_past_its_lease_then_submits_late(cluster, capsys):
    c = cluster()
    c.coordinator()
    w1 = c.worker("w1")
    c.worker("w2")
    c.wait_for(lambda: c.version() >= 3)
    for _ in range(20):  # stop w1 while it holds a claim (it may submit first: try again)
        held = c.wait_for(lambda: c.claim_of("w1"), every=0.001)
        w1.send_signal(signal.SIGSTOP)
        if c.claim_of("w1") == held:
            break
        w1.send_signal(signal.SIGCONT)
    else:
        pytest.fail("never caught w1 holding a claim")
    # Past the backup threshold (or the 2 s lease) on the server's clock: the unit, or a
    # backup copy of it, goes to w2 and is applied.
    c.wait_for(
        lambda: c.query(
            "SELECT 1 FROM work_units WHERE (id = %s OR backup_of = %s) AND state = 'applied'",
            held["id"],
            held["id"],
        ),
        timeout=30,
    )
    w1.send_signal(signal.SIGCONT)
    c.wait_finished()
    c.wait_exit()
    assert_trained_exactly_once(c, TARGET)
    f = c.figures()
    assert f["reissued"] >= 1 or f["copies"] >= 1
    # w1's late result is refused: its lease was lost, or a copy's result formed the step.
    assert f["lease_lost"] + f["stale"] >= 1, c.log("w1")
    assert "lease lost" in c.log("w1") or "stale" in c.log("w1")  # the student is told why
    no_process_left(c)
    report(capsys, "worker SIGSTOP past lease + late submit", c)


def test_database_restart_mid_run(tmp_path, capsys):
    server = EmbeddedPostgres(tmp_path / "pg")
    dsn = server.start()
    try:
        with connect(dsn) as conn:
            migrate(conn)
        run = make_run(dsn, "drill", max_steps=TARGET, lease_s=2.0)
        c = Cluster(dsn, run, tmp_path / "logs")
        try:
            c.coordinator()
            c.worker("w1"), c.worker("w2")
            c.wait_for(lambda: c.version() >= 4)
            server.stop(mode="fast")  # every connection is cut
            time.sleep(1.0)
            server.start(fresh=False)
            c.wait_finished(timeout=120)
            c.wait_exit()
            assert_trained_exactly_once(c, TARGET)
            # One line when the database went and one when it came back, not one a retry.
            # (A connection cut again while the server comes up is a second outage: each
            # outage is still one "lost" followed by one "back".)
            for name in ("coordinator", "w1", "w2"):
                said = re.findall(r"lost the database|the database is back", c.log(name))
                outages = len(said) // 2
                assert outages >= 1, c.log(name)
                assert said == ["lost the database", "the database is back"] * outages, c.log(name)
            no_process_left(c)
            report(capsys, "database restart", c, restarts=1)
        finally:
            c.kill_all()
    finally:
        server.destroy()


def test_a_second_coordinator_is_refused(cluster, capsys):
    c = cluster()
    c.coordinator()
    c.worker("w1")
    c.wait_for(lambda: c.version() >= 1)
    # Paused, so the run cannot finish (and free the lock) before the second one starts.
    c.query("UPDATE runs SET status = 'paused' WHERE id = %s RETURNING id", c.run.id)
    second = subprocess.run(
        [sys.executable, "-m", "ganpool", "coordinator", "--db", c.dsn, "--run", c.run.name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        "ganpool: error: another coordinator is already running run 'drill'; "
        "stop it first (only one coordinator per run)"
    ]
    c.query("UPDATE runs SET status = 'running' WHERE id = %s RETURNING id", c.run.id)
    c.wait_finished()
    c.wait_exit()
    assert_trained_exactly_once(c, TARGET)
    no_process_left(c)
    report(capsys, "second coordinator refused", c)


def test_sigint_and_sigterm_leave_no_unit_claimed_and_no_process(cluster, capsys):
    c = cluster(lease_s=120.0)  # a long lease: a unit freed now was released, not expired
    coordinator = c.coordinator()
    w1 = c.worker("w1")
    w2 = c.worker("w2")
    c.wait_for(lambda: c.version() >= 2)
    held = c.wait_for(lambda: c.claim_of("w1"), every=0.001)
    w1.send_signal(signal.SIGINT)
    assert w1.wait(timeout=30) in (0, 130)
    assert c.claim_of("w1") is None
    unit = c.query("SELECT state FROM work_units WHERE id = %s", held["id"])[0]
    assert unit["state"] in ("pending", "claimed", "submitted", "applied")  # never stuck on w1
    w2.send_signal(signal.SIGTERM)
    coordinator.send_signal(signal.SIGTERM)
    c.wait_exit()
    assert c.query("SELECT count(*) AS n FROM work_units WHERE state = 'claimed'")[0]["n"] == 0
    left = c.query("SELECT count(*) AS n FROM workers WHERE left_at IS NULL")[0]["n"]
    assert left == 0
    no_process_left(c)
    report(capsys, "SIGINT worker, SIGTERM worker and coordinator", c)


def test_a_killed_demo_stops_its_server_and_the_next_demo_recovers(tmp_path, capsys):
    pgdata = tmp_path / "demo-pg"
    env = {"GANPOOL_DEMO_PGDATA": str(pgdata)}
    import os

    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ganpool",
            "demo",
            "--workers",
            "2",
            "--steps",
            "100000",
            "--out",
            str(tmp_path / "out1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )
    try:
        for line in demo.stdout:
            if line.startswith("step ") and not line.startswith("step 0/"):
                break
        children = psutil.Process(demo.pid).children(recursive=True)
        assert (pgdata / "postmaster.pid").exists()
        demo.send_signal(signal.SIGKILL)
        demo.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            (pgdata / "postmaster.pid").exists()
            or any(p.is_running() and p.status() != "zombie" for p in children)
        ):
            time.sleep(0.2)
        assert not (pgdata / "postmaster.pid").exists(), "the embedded server outlived the demo"
        assert not [p for p in children if p.is_running() and p.status() != "zombie"]
    finally:
        if demo.poll() is None:
            demo.kill()
        demo.stdout.close()
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "ganpool",
            "demo",
            "--workers",
            "1",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "out2"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["steps_completed"] == 2
    assert not (pgdata / "postmaster.pid").exists()
    with capsys.disabled():
        print(
            "\n[fault] demo SIGKILL: server and children stopped; next demo recovered the data dir"
        )
