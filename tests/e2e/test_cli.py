"""The `ganpool` command end to end, as separate processes with timeouts."""

import json
import os
import subprocess
import sys

import psutil
import pytest

pytestmark = pytest.mark.e2e


def ganpool(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "ganpool", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _children_of_this_test_left():
    me = psutil.Process()
    return [p for p in me.children(recursive=True) if p.is_running()]


def test_demo_writes_summary_and_samples_and_stops_everything(tmp_path):
    pgdata = tmp_path / "pg"
    out = tmp_path / "out"
    r = ganpool(
        "demo",
        "--workers",
        "2",
        "--steps",
        "5",
        "--out",
        str(out),
        env={"GANPOOL_DEMO_PGDATA": str(pgdata)},
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "steps_completed",
        "epochs_completed",
        "images_processed",
        "units_applied",
        "units_rejected",
        "wall_seconds",
    ):
        assert key in summary, key
    assert summary["steps_completed"] == 5
    # Small preset: N = 2 units of 25 images per step, each computed in a D and a G phase
    # (the alternating rule, the default); the images count once.
    assert summary["units_applied"] == 20
    assert summary["images_processed"] == 250
    assert summary["epochs_completed"] == pytest.approx(2.5)
    assert isinstance(summary["epochs_completed"], float)
    pngs = list((out / "samples").glob("*.png"))
    assert pngs and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    # The embedded server and every process the demo started are gone.
    assert not (pgdata / "postmaster.pid").exists()
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(pgdata) in " ".join(p.info["cmdline"] or [])
    ]
    assert not _children_of_this_test_left()


def test_demo_against_an_existing_server(embedded_db, tmp_path):
    r = ganpool(
        "demo", "--workers", "1", "--steps", "2", "--out", str(tmp_path), "--db", embedded_db
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "summary.json").read_text())["steps_completed"] == 2


def _one_line_error(r, *fragments):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_unreachable_database_is_one_line():
    r = ganpool("status", "--db", "postgresql://postgres@127.0.0.1:1/nope")
    _one_line_error(r, "cannot connect to nope on 127.0.0.1")


def test_wrong_password_is_one_line(embedded_server):
    # The embedded server trusts local users; a missing database stands in for a bad login.
    r = ganpool("status", "--db", embedded_server.url("no_such_db"))
    _one_line_error(r, "cannot connect", "does not exist")


def test_unmigrated_database_and_missing_run_are_one_line(empty_db, embedded_db):
    _one_line_error(ganpool("status", "--db", empty_db), "ganpool db migrate")
    _one_line_error(ganpool("status", "--db", embedded_db), "there is no run yet")
    _one_line_error(
        ganpool("status", "--db", embedded_db, "--run", "ghost"), "run 'ghost' does not exist"
    )


def test_bad_config_value_is_one_line(embedded_db):
    r = ganpool("run", "create", "--db", embedded_db, "--set", "unit_size=-3")
    _one_line_error(r, "'unit_size' = -3 is invalid")
    r = ganpool("run", "create", "--db", embedded_db, "--set", "lr_g=fast")
    _one_line_error(r, "'lr_g' must be float")


def test_instructor_flow_and_mismatched_worker(embedded_db, tmp_path):
    said = ganpool("db", "migrate", "--db", embedded_db).stdout.strip().splitlines()
    assert said[0] == "schema is up to date"
    assert said[1].startswith("class ") and "_worker" in said[1]  # the roles for pg_hba.conf
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (80, 70), (i * 40, 0, 0)).save(folder / f"{i}.png")
    r = ganpool(
        "run",
        "create",
        "--db",
        embedded_db,
        "--run",
        "c1",
        "--preset",
        "dcgan64",
        "--data",
        str(folder),
        "--set",
        "ngf=8",
        "--set",
        "ndf=8",
        "--set",
        "unit_size=2",
    )
    assert r.returncode == 0, r.stderr
    assert "created run 'c1'" in r.stdout
    Image.new("RGB", (80, 70)).save(folder / "extra.png")
    r = ganpool("worker", "--db", embedded_db, "--run", "c1", "--data", str(folder))
    _one_line_error(r, "does not match the run's")
    r = ganpool("status", "--db", embedded_db, "--run", "c1")
    assert r.returncode == 0 and "run 'c1': created" in r.stdout


def test_train_local_writes_grids_and_weights(tmp_path):
    r = ganpool("train-local", "--steps", "3", "--set", "sample_every=2", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "step_000002.png",
        "step_000003.png",
    ]
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "weights.safetensors")
    assert "G.main.0.weight" in weights and "D.main.0.weight" in weights


def test_a_student_joins_with_one_string_and_is_turned_away_once_disabled(
    embedded_db, embedded_server, tmp_path
):
    import uuid

    name = f"stu-{uuid.uuid4().hex[:6]}"
    r = ganpool("run", "create", "--db", embedded_db, "--run", "cls", "--steps", "3")
    assert r.returncode == 0, r.stderr
    r = ganpool(
        "student",
        "add",
        name,
        "--db",
        embedded_db,
        "--host",
        "127.0.0.1",
        "--port",
        str(embedded_server.port),
    )
    assert r.returncode == 0, r.stderr
    join = next(
        line.split("--join ", 1)[1].strip().strip("'")
        for line in r.stdout.splitlines()
        if "--join" in line
    )
    with (tmp_path / "coordinator.log").open("w") as log:
        coordinator = subprocess.Popen(
            [sys.executable, "-m", "ganpool", "coordinator", "--db", embedded_db, "--run", "cls"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        w = ganpool("worker", "--join", join, "--run", "cls", "--threads", "1", timeout=120)
        assert w.returncode == 0, w.stdout + w.stderr
        assert f"[{name}] joined run 'cls'" in w.stdout
        assert f"[{name}] done: 12 units" in w.stdout  # 3 steps x 2 units x (D, G)
        assert coordinator.wait(timeout=60) == 0
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
            coordinator.wait()
    status = ganpool("status", "--db", embedded_db, "--run", "cls").stdout
    assert name in status and "finished" in status
    listing = ganpool("student", "list", "--db", embedded_db).stdout
    assert name in listing and "enabled" in listing
    assert ganpool("student", "disable", name, "--db", embedded_db).returncode == 0
    _one_line_error(ganpool("worker", "--join", join, "--run", "cls"), "refused the login")
    assert ganpool("student", "remove", name, "--db", embedded_db).returncode == 0
    _one_line_error(ganpool("worker", "--join", join, "--run", "cls"), "refused the login")


def test_export_and_sample(embedded_db, tmp_path):
    from tests.helpers import make_run, train_distributed

    run = make_run(embedded_db, "takehome", max_steps=3, unit_size=10)
    train_distributed(embedded_db, run, workers=1)
    out = tmp_path / "model"
    r = ganpool("export", "--db", embedded_db, "--run", "takehome", "--out", str(out))
    assert r.returncode == 0, r.stderr
    card = json.loads((out / "config.json").read_text())
    assert card["steps"] == 3 and card["contributors"][0]["name"] == "w0"
    assert card["model"] == {"image_size": 32, "channels": 1, "nz": 64, "ngf": 32, "ndf": 32}
    assert "Contributors: w0 (60 images)" in (out / "README.md").read_text()
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    r = ganpool(
        "sample", "--model", str(out), "--n", "16", "--seed", "3", "--out", str(tmp_path / "a.png")
    )
    assert r.returncode == 0, r.stderr
    ganpool(
        "sample", "--model", str(out), "--n", "16", "--seed", "3", "--out", str(tmp_path / "b.png")
    )
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()  # seeded
    from PIL import Image

    with Image.open(tmp_path / "a.png") as grid:  # 4 x 4 tiles of 32 px, 2 px borders, x2
        assert grid.size == (2 * (4 * 34 + 2), 2 * (4 * 34 + 2))
    _one_line_error(
        ganpool(
            "export",
            "--db",
            embedded_db,
            "--run",
            "takehome",
            "--version",
            "0",
            "--out",
            str(tmp_path / "old"),
        ),
        "is not kept",
    )
    (tmp_path / "bad.safetensors").write_bytes(b"not a model")
    _one_line_error(
        ganpool("sample", "--model", str(tmp_path / "bad.safetensors")),
        "not a generator exported by ganpool",
    )
