"""Poison units: an image no worker can decode is named in one line when the run is created
or the data loaded; one that goes bad afterwards (same name, same size) is reported by the
workers that draw it, quarantined once two of them could not compute it, shown to the
instructor, and the run goes on."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ganpool.coordinator import Coordinator
from ganpool.dashboard.app import create_app
from ganpool.data.database import load_dataset
from ganpool.data.datasets import builtin_faces, open_dataset
from ganpool.errors import GanpoolError
from ganpool.runs import create_run
from ganpool.settings import load_run_config
from ganpool.store import Store, connect
from ganpool.worker import Worker
from tests.helpers import Threads

pytestmark = pytest.mark.timeout(240)

BAD = 42  # the image that will not decode: 042.png


def _faces_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    faces = builtin_faces()
    for i in range(len(faces)):
        Image.fromarray(faces.originals[i]).save(root / f"{i:03d}.png")
    return root


def _zip(folder: Path) -> Path:
    path = folder.with_suffix(".zip")
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f"img_align_celeba/{f.name}")
    return path


def _config(**overrides):
    return load_run_config(overrides={"dataset": "folder", "sample_every": 1000, **overrides})


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_a_corrupt_image_is_named_in_one_line_and_nothing_is_created(embedded_db, tmp_path, kind):
    folder = _faces_folder(tmp_path / "faces")
    (folder / f"{BAD:03d}.png").write_bytes(b"this is not an image")
    path = _zip(folder) if kind == "zip" else folder
    cfg = _config()
    dataset = open_dataset("folder", cfg.image_size, cfg.channels, path)
    store = Store(connect(embedded_db))
    try:
        with pytest.raises(GanpoolError) as refused:
            create_run(store, "bad", cfg, dataset)
        message = str(refused.value)
        assert f"{BAD:03d}.png" in message and "\n" not in message
        assert store.one("latest_run") is None
        with pytest.raises(GanpoolError, match=f"{BAD:03d}.png"):
            load_dataset(store, dataset, cfg.image_size, cfg.channels)
        assert store.conn.execute("SELECT count(*) AS n FROM datasets").fetchone()["n"] == 0
    finally:
        store.close()
    # The CLI: one line, a non-zero exit.
    cli = subprocess.run(
        [sys.executable, "-m", "ganpool", "run", "create", "--db", embedded_db, "--run", "bad",
         "--set", "dataset=folder", "--data", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 2
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{BAD:03d}.png" in lines[0], cli.stderr


def test_a_unit_no_worker_can_compute_is_quarantined_and_the_run_goes_on(
    embedded_db, tmp_path, capsys
):
    folder = _faces_folder(tmp_path / "faces")
    cfg = _config(unit_size=10, results_per_step=2, max_steps=12, lease_s=5.0)
    store = Store(connect(embedded_db))
    run = create_run(store, "poison", cfg, open_dataset("folder", 32, 1, folder))
    # Corrupted after the run was created, same size: the fingerprint still matches.
    bad = folder / f"{BAD:03d}.png"
    bad.write_bytes(b"\0" * bad.stat().st_size)

    threads = Threads()
    coordinator = Coordinator(embedded_db, run, poll_s=0.1)
    threads.start(coordinator.serve)
    workers = [
        Worker(embedded_db, run, f"w{i}", data_path=folder, device="cpu", poll_s=0.1)
        for i in range(2)
    ]
    for w in workers:
        threads.start(w.serve)
    try:
        threads.join(200)  # both workers survive, and the run reaches its target
    finally:
        for w in workers:
            w.stop()
    assert coordinator.version == 12 * cfg.versions_per_step
    assert sum(w.failed_units for w in workers) >= 2

    units = store.all("quarantined_units", run_id=run.id, limit=10)
    assert len(units) == 1
    assert units[0]["bad_images"] == [BAD] and units[0]["reported_by"] == 2
    assert f"image {BAD}" in units[0]["reason"]
    # Its other images went back and were trained on; the bad one counts as done, in this
    # epoch and in the next ones, where it is never handed out again.
    epochs = store.conn.execute(
        "SELECT images_applied, images_quarantined, size, completed_at FROM epochs "
        "WHERE run_id = %s AND completed_at IS NOT NULL",
        (run.id,),
    ).fetchall()
    assert len(epochs) >= 2
    for epoch in epochs:
        assert epoch["images_quarantined"] == 1
        assert epoch["images_applied"] == epoch["size"] - 1
    assert (
        store.conn.execute(
            "SELECT count(*) AS n FROM work_units AS u JOIN version_contributions AS c "
            "ON c.unit_id = u.id WHERE %s = ANY (u.indices)",
            (BAD,),
        ).fetchone()["n"]
        == 0
    )
    store.close()

    # Shown to the instructor: `ganpool status` and the dashboard's API.
    status = subprocess.run(
        [sys.executable, "-m", "ganpool", "status", "--db", embedded_db, "--run", "poison"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert f"quarantined unit {units[0]['id']} (bad images: {BAD})" in status.stdout
    with TestClient(create_app(embedded_db)) as client:
        shown = client.get("/api/runs/poison/quarantined").json()
    assert [u["bad_images"] for u in shown] == [[BAD]]
    with capsys.disabled():
        print(f"\n[poison] {status.stdout.splitlines()[1]}")
