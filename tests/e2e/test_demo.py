"""`ganpool demo` beside another demo, and through a restart of its database."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.store.connection import session_conninfo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


def _demo(out: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "GANPOOL_DEMO_PGDATA"}
    log = (out.parent / f"{out.name}.log").open("w")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "ganpool", "demo", "--workers", "1", "--out", str(out), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    finally:
        log.close()  # the child has its own copy


def _finish(p: subprocess.Popen, timeout: float) -> int:
    try:
        return p.wait(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_two_demos_side_by_side_each_on_its_own_server(tmp_path):
    demos = {name: _demo(tmp_path / name, "--steps", "2") for name in ("a", "b")}
    codes = {name: _finish(p, 300) for name, p in demos.items()}
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in demos}
    assert codes == {"a": 0, "b": 0}, logs
    folders = set()
    for name in demos:
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["steps_completed"] == 2
        folders.add(re.search(r"host=([^&\s]+)", logs[name]).group(1).replace("%2F", "/"))
    assert len(folders) == 2  # two servers, two data folders
    assert not [f for f in folders if Path(f).exists()]  # each removed when its demo ended


def test_a_demo_rides_out_a_restart_of_its_database(tmp_path):
    steps = 8
    with EmbeddedPostgres(tmp_path / "pg") as server:
        demo = _demo(tmp_path / "out", "--steps", str(steps), "--db", server.url())
        try:
            # Restart the server once the run is under way (a step or two in).
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                assert demo.poll() is None, (tmp_path / "out.log").read_text()
                try:
                    with psycopg.connect(session_conninfo(server.url()), connect_timeout=5) as conn:
                        row = conn.execute("SELECT max(current_version) FROM runs").fetchone()
                    if row and row[0] is not None and row[0] >= 2:
                        break
                except psycopg.Error:
                    pass  # not migrated yet
                time.sleep(0.3)
            server.restart()
            code = _finish(demo, 300)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
    log = (tmp_path / "out.log").read_text()
    assert code == 0, log
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps_completed"] == steps
    # The demo's own connection said so once each way, not once a retry.
    assert log.count("lost the database") == 1, log
    assert log.count("the database is back") == 1, log
    coordinator = (tmp_path / "out" / "logs" / "coordinator.log").read_text()
    assert coordinator.count("lost the database") == 1, coordinator
    assert "Traceback" not in log + coordinator
