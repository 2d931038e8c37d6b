"""The dashboard's JSON API over a live run, read through a viewer login."""

from __future__ import annotations

import time

import httpx
import psycopg
import pytest

from ganpool.store import connect
from tests.dashboard.conftest import PASSWORD

pytestmark = pytest.mark.timeout(120)


def _wait(fn, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_progress_leaderboard_metrics_samples_and_workers(live):
    base = live["url"] + "/api/runs/live"
    p = _wait(lambda: (r := httpx.get(base + "/progress").json())["step"] >= 4 and r)
    assert p["status"] == "running" and p["workers_online"] == 2
    assert p["coordinator_alive"] is True  # the live fixture's coordinator holds the run
    assert 0 <= p["epoch_progress"] < 1 and p["images_per_s"] > 0
    assert p["eta_s"] is not None  # the run has a step target
    board = httpx.get(base + "/leaderboard").json()
    assert {r["name"] for r in board} == {"ada", "<b>grace</b>"}
    assert abs(sum(r["share"] for r in board) - 1.0) < 1e-6
    metrics = httpx.get(base + "/metrics").json()
    assert len(metrics) >= 3 and {"g_loss", "d_loss", "d_real", "d_fake"} <= set(metrics[0])
    versions = httpx.get(base + "/samples").json()
    assert versions[0] == 0 and versions[1] == 3
    png = httpx.get(f"{base}/samples/{versions[-1]}.png")
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    workers = httpx.get(base + "/workers").json()
    assert {w["name"] for w in workers} == {"ada", "<b>grace</b>"}
    assert all(w["device"] == "cpu" and w["last_heartbeat_s"] < 30 for w in workers)
    assert httpx.get(live["url"] + "/api/runs/nope/progress").status_code == 404
    assert httpx.get(base + "/samples/1.png").status_code == 404


def test_series_are_downsampled_for_long_runs(live):
    with connect(live["admin"]) as conn:
        run_id = conn.execute(
            "INSERT INTO runs (name, config, dataset_fingerprint, dataset_size) "
            "SELECT 'long', config, dataset_fingerprint, dataset_size FROM runs "
            "WHERE name = 'live' "
            "RETURNING id"
        ).fetchone()["id"]
        conn.execute(
            "INSERT INTO step_metrics (run_id, version, g_loss, d_loss, d_real, d_fake, workers, "
            "units, images, epoch) SELECT %s, s, 1, 1, 0.5, 0.5, 100, 8, 512, s / 100.0 "
            "FROM generate_series(1, 10000) AS s",
            (run_id,),
        )
        # ... and a class of 100 workers.
        conn.execute(
            "INSERT INTO workers (run_id, name, hostname, device) "
            "SELECT %s, 'student' || w, 'lab', 'cpu' FROM generate_series(1, 100) AS w",
            (run_id,),
        )
    t0 = time.perf_counter()
    points = httpx.get(live["url"] + "/api/runs/long/metrics").json()
    elapsed = time.perf_counter() - t0
    t0 = time.perf_counter()
    board = httpx.get(live["url"] + "/api/runs/long/leaderboard").json()
    workers = httpx.get(live["url"] + "/api/runs/long/workers").json()
    board_ms = (time.perf_counter() - t0) * 1000
    assert len(board) == 100 and len(workers) == 100
    assert 300 <= len(points) <= 400 and points[-1]["step"] == 10000
    assert httpx.get(live["url"] + "/api/runs/long/metrics?points=50").json().__len__() <= 50
    print(
        f"\n[dashboard] 10,000 steps -> {len(points)} points in {elapsed * 1000:.0f} ms; "
        f"leaderboard + workers of 100 in {board_ms:.0f} ms"
    )


def test_controls_need_the_instructor(live):
    base = live["url"] + "/api/runs/live"
    assert httpx.post(base + "/pause").status_code == 401
    assert httpx.post(live["url"] + "/api/students/ada/disable").status_code == 401
    assert httpx.post(live["url"] + "/api/login", json={"password": "guess"}).status_code == 401
    with httpx.Client(base_url=live["url"]) as instructor:
        assert instructor.post("/api/login", json={"password": PASSWORD}).status_code == 200
        assert instructor.post("/api/runs/live/pause").json()["message"] == "run live is now paused"
        assert httpx.get(base + "/progress").json()["status"] == "paused"
        assert instructor.post("/api/runs/live/resume").status_code == 200
        assert httpx.get(base + "/progress").json()["status"] == "running"
        assert instructor.post("/api/students/nobody/disable").status_code == 404
        assert instructor.post("/api/runs/live/explode").status_code in (404, 422)


def test_a_control_the_run_is_not_in_a_state_for_is_refused_with_the_reason(live):
    deadline = time.monotonic() + 30  # the coordinator starts the run
    while httpx.get(live["url"] + "/api/runs/live/progress").json()["status"] != "running":
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.2)
    with httpx.Client(base_url=live["url"]) as instructor:
        assert instructor.post("/api/login", json={"password": PASSWORD}).status_code == 200
        answer = instructor.post("/api/runs/live/resume")  # it is running
    assert answer.status_code == 409
    assert answer.json()["detail"] == "run 'live' is already running"


def test_the_viewer_login_really_is_read_only(live):
    with (
        connect(live["viewer_url"]) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("UPDATE runs SET status = 'stopped'")
    with (
        connect(live["viewer_url"]) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT payload FROM result_payloads")
