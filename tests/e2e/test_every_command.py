"""Every command and subcommand of `ganpool`: its help, and a real call on runs of each
update rule. Whatever happens, a person reads one line, never a traceback.

Most calls go through `main()` in this process (a subprocess costs seconds of imports
each); the bad inputs that once printed tracebacks run as real processes too.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import time
import uuid

import httpx
import psycopg
import pytest

from ganpool.cli import build_parser, main
from ganpool.store.connection import session_conninfo
from tests.helpers import make_run, train_distributed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

RULES = ("alternating", "simultaneous", "local")
LOCAL_STEPS = 2  # the local rule's units: 2 batches of unit_size
STEPS = 3


def leaf_commands(parser: argparse.ArgumentParser, path=()) -> list[tuple[str, ...]]:
    """Every runnable command path, found in the parser itself: a new command can't hide."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [path]
    return [
        leaf
        for name, child in subs[0].choices.items()
        for leaf in leaf_commands(child, (*path, name))
    ]


@pytest.fixture(scope="module")
def trained(servers):
    """One database with a finished run of each update rule (STEPS steps, one worker)."""
    server = servers["embedded"]
    dbname, url = server.fresh_database()
    try:
        for rule in RULES:
            local = {"local_steps": LOCAL_STEPS} if rule == "local" else {}
            run = make_run(url, rule, update_rule=rule, max_steps=STEPS, unit_size=10, **local)
            train_distributed(url, run, workers=1)
        yield url
    finally:
        server.drop(dbname)


def call(capsys, *argv) -> tuple[int, str, str]:
    """`ganpool ARGV` in this process: (status, stdout, stderr); never a traceback."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: --help, --version, usage errors
        status = e.code or 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return status, out, err


def ok(capsys, *argv) -> str:
    status, out, err = call(capsys, *argv)
    assert status == 0, f"ganpool {' '.join(map(str, argv))}: {err}"
    return out


def refused(capsys, *argv, says: str) -> None:
    status, _, err = call(capsys, *argv)
    assert status != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], err


def test_every_command_has_help_showing_its_defaults(capsys):
    commands = leaf_commands(build_parser())
    assert len(commands) >= 25
    for path in commands:
        out = ok(capsys, *path, "--help")
        assert out.startswith(f"usage: ganpool {' '.join(path)}"), path
        assert "-v, --verbose" in out  # -v after the subcommand is accepted
    assert "(default: 500)" in ok(capsys, "evaluate", "--help")
    assert "(default: auto)" in ok(capsys, "worker", "--help")
    assert ok(capsys, "--version").startswith("ganpool ")


def _join_of(out: str) -> str:
    return next(line.split("--join ", 1)[1].strip().strip("'") for line in out.splitlines()
                if "--join" in line)  # fmt: skip


def test_every_command_on_runs_of_both_update_rules(trained, capsys, tmp_path, monkeypatch):
    db = trained
    covered: set[tuple[str, ...]] = set()

    def run_cmd(*argv) -> str:
        path = tuple(a for a in argv[:2] if not a.startswith("-"))
        covered.update(p for p in leaf_commands(build_parser()) if p == path[: len(p)])
        return ok(capsys, *argv)

    assert run_cmd("db", "migrate", "--db", db).splitlines()[0] == "schema is up to date"
    listing = run_cmd("run", "list", "--db", db)
    for rule in RULES:
        assert any(line.startswith(rule) and "finished" in line for line in listing.splitlines())
        tmp = tmp_path / rule
        tmp.mkdir()
        # status: the paper's steps under both rules, the metrics table without a crash.
        status = run_cmd("status", "--db", db, "--run", rule)
        assert f"step {STEPS}/{STEPS}," in status and "img/s" in status
        assert "coordinator not running" in status
        # An image counts once on the leaderboard too (a G phase reuses its D phase's).
        board = {line.split()[0]: line.split()[1:] for line in status.splitlines()[3:6] if line}
        batches = LOCAL_STEPS if rule == "local" else 1  # a local unit is LOCAL_STEPS batches
        assert board["w0"][0] == str(STEPS * 10 * 2 * batches), status  # steps x images x N
        table = status.split("D(G(z))", 1)[1].strip().splitlines()
        assert [int(line.split()[0]) for line in table] == list(range(1, STEPS + 1))
        assert "–" not in "".join(table)  # each step has its G and its D figures
        # metrics: one row per paper step, under both rules.
        run_cmd("metrics", "--db", db, "--run", rule, "--csv", tmp / "m.csv")
        rows = list(csv.DictReader((tmp / "m.csv").read_text().splitlines()))
        assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
        assert all(r["g_loss"] and r["d_loss"] for r in rows)
        run_cmd("metrics", "--db", db, "--run", rule, "--tensorboard", tmp / "tb")
        assert list((tmp / "tb" / rule).glob("events.out.tfevents.*"))
        # export: the model card counts steps, not versions.
        run_cmd("export", "--db", db, "--run", rule, "--out", tmp / "model")
        card = json.loads((tmp / "model" / "config.json").read_text())
        assert card["steps"] == STEPS and card["update_rule"] == rule
        assert f"Training: {STEPS} steps" in (tmp / "model" / "README.md").read_text()
        run_cmd("sample", "--model", tmp / "model", "--n", "4", "--out", tmp / "g.png")
        run_cmd("sample", "--model", tmp / "model", "--n", "4", "--out", tmp / "g.png", "--force")
        if rule == "alternating":  # loading Inception takes a minute here: once is enough
            out = run_cmd(
                "evaluate", "--db", db, "--run", rule, "--n", "2", "--real", "2", "--threads", "1"
            )
            assert "KID" in out
        # A coordinator and a worker on a finished run: both end at once, cleanly.
        assert f"ended at step {STEPS}" in run_cmd("coordinator", "--db", db, "--run", rule)
        out = run_cmd("worker", "--db", db, "--run", rule, "--name", "late", "--device", "cpu")
        assert "done: 0 units" in out
        # A fresh run of this rule: pause, resume, stop, delete; the refusals are one line.
        name = f"x-{rule}"
        run_cmd("run", "create", "--db", db, "--run", name, "--set", f"update_rule={rule}")
        assert "now paused" in run_cmd("run", "pause", "--db", db, "--run", name)
        assert "now running" in run_cmd("run", "resume", "--db", db, "--run", name)
        assert "now stopped" in run_cmd("run", "stop", "--db", db, "--run", name)
        refused(capsys, "run", "resume", "--db", db, "--run", name, says="cannot be resumed")
        refused(capsys, "run", "pause", "--db", db, "--run", rule, says="is finished")
        refused(capsys, "run", "stop", "--db", db, "--run", name, says="already stopped")
        run_cmd("run", "delete", "--db", db, "--run", name)
        refused(capsys, "status", "--db", db, "--run", name, says="does not exist")
        # Student and viewer logins (cluster-wide roles: made unique, and removed).
        who = f"s{uuid.uuid4().hex[:8]}"
        first = _join_of(run_cmd("student", "add", who, "--db", db))
        second = _join_of(run_cmd("student", "reissue", who, "--db", db))
        assert first != second
        assert who in run_cmd("student", "list", "--db", db)
        run_cmd("student", "disable", who, "--db", db)
        run_cmd("student", "enable", who, "--db", db)
        run_cmd("student", "remove", who, "--db", db)
        roster = tmp / "class.txt"
        roster.write_text(f"# period 2\n{who}-a\n\n{who}-b\n")
        run_cmd("student", "add", "--roster", roster, "--out", tmp / "joins.tsv", "--db", db)
        lines = (tmp / "joins.tsv").read_text().splitlines()
        assert [line.split("\t")[0] for line in lines] == [f"{who}-a", f"{who}-b"]
        for suffix in ("a", "b"):
            run_cmd("student", "remove", f"{who}-{suffix}", "--db", db)
        assert "ganpool dashboard --db" in run_cmd("viewer", "add", who, "--db", db)
        run_cmd("viewer", "remove", who, "--db", db)
        run_cmd("train-local", "--steps", "1", "--threads", "1", "--out", tmp / "local",
                "--set", f"update_rule={rule}")  # fmt: skip
        run_cmd("data", "load", "--db", db)
    # The two that reach outside: the Hub (offline here), and a web server (below).
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = _ganpool("data", "download", "--repo", "nobody/nothing", "--out", tmp_path, env=env)
    _one_line(r, "cannot download")
    covered.add(("data", "download"))
    _serve_dashboard_and_read_both_runs(db)
    covered.add(("dashboard",))
    covered.add(("demo",))  # tests/e2e/test_cli.py and test_demo.py run real demos
    assert covered == set(leaf_commands(build_parser())), (
        set(leaf_commands(build_parser())) - covered
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_dashboard_and_read_both_runs(db: str) -> None:
    port = _free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "ganpool", "dashboard", "--db", db, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as web:
        try:
            _read_both_runs(web, port)
        finally:
            web.terminate()
            web.wait(timeout=20)


def _read_both_runs(web: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            runs = httpx.get(f"http://127.0.0.1:{port}/api/runs", timeout=2).json()
            break
        except httpx.HTTPError:
            assert web.poll() is None and time.monotonic() < deadline, web.stdout.read()
            time.sleep(0.3)
    assert {r["name"]: r["step"] for r in runs} == {rule: STEPS for rule in RULES}
    for rule in RULES:
        base = f"http://127.0.0.1:{port}/api/runs/{rule}"
        p = httpx.get(base + "/progress").json()
        assert p["step"] == STEPS and p["coordinator_alive"] is False
        metrics = httpx.get(base + "/metrics").json()
        assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
        steps = httpx.get(base + "/samples").json()
        assert steps[0] == 0 and steps[-1] == STEPS  # grids by step, not by version
        assert httpx.get(f"{base}/samples/{STEPS}.png").content[:4] == b"\x89PNG"


# -- the bad inputs that printed tracebacks, as real processes --------------------------------


def _ganpool(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ganpool", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _one_line(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_bad_inputs_are_one_line(trained, tmp_path, embedded_server):
    db = trained
    model = tmp_path / "model"
    assert _ganpool("export", "--db", db, "--run", "alternating", "--out", model).returncode == 0
    _one_line(
        _ganpool("sample", "--model", model, "--out", tmp_path / "nodir" / "x.png"),
        "does not exist",
    )
    (tmp_path / "taken.png").write_bytes(b"keep me")
    _one_line(_ganpool("sample", "--model", model, "--out", tmp_path / "taken.png"), "--force")
    assert (tmp_path / "taken.png").read_bytes() == b"keep me"  # nothing lost
    _one_line(_ganpool("export", "--db", db, "--out", tmp_path / "taken.png"), "is a file")
    _one_line(_ganpool("worker", "--db", db, "--threads", "-1"), "--threads", "at least 0")
    _one_line(_ganpool("coordinator", "--db", db, "--threads", "0"), "at least 1")
    _one_line(_ganpool("evaluate", "--db", db, "--n", "1"), "--n", "at least 2")
    _one_line(_ganpool("status", "--db", "postgresql://x@127.0.0.1:1/x", "-v", "--run"), "--run")
    # -v after the subcommand is accepted, and shows the traceback an error hides.
    r = _ganpool("status", "--db", "postgresql://x@127.0.0.1:1/nope", "-v")
    assert r.returncode != 0 and "Traceback" in r.stderr
    # A student's login cannot read the run: the dashboard says so in one line at start,
    # and a dashboard started anyway answers 403 with the reason, not a bare HTTP 500.
    who = f"s{uuid.uuid4().hex[:8]}"
    r = _ganpool("student", "add", who, "--db", db, "--host", "127.0.0.1",
                 "--port", embedded_server.port)  # fmt: skip
    assert r.returncode == 0, r.stderr
    join = _join_of(r.stdout)
    try:
        _one_line(_ganpool("dashboard", "--db", join), "cannot read the run", "viewer")
        from fastapi.testclient import TestClient

        from ganpool.dashboard.app import create_app

        with TestClient(create_app(join)) as client:
            answer = client.get("/api/runs/alternating/progress")
            assert answer.status_code == 403 and "viewer" in answer.json()["detail"]
    finally:
        assert _ganpool("student", "remove", who, "--db", db).returncode == 0


def test_a_viewer_login_reads_the_dashboard_and_changes_nothing(trained, embedded_server):
    db = trained
    who = f"v{uuid.uuid4().hex[:8]}"
    r = _ganpool("viewer", "add", who, "--db", db, "--host", "127.0.0.1",
                 "--port", embedded_server.port)  # fmt: skip
    assert r.returncode == 0, r.stderr
    url = r.stdout.split("--db ", 1)[1].strip().strip("'")
    try:
        from fastapi.testclient import TestClient

        from ganpool.dashboard.app import create_app

        with TestClient(create_app(url)) as client:
            assert client.get("/api/runs/simultaneous/progress").json()["step"] == STEPS
        with (
            psycopg.connect(session_conninfo(url)) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute("UPDATE runs SET status = 'running'")
        _one_line(_ganpool("run", "resume", "--db", url, "--run", "alternating"), "refused")
    finally:
        assert _ganpool("viewer", "remove", who, "--db", db).returncode == 0
