"""KID/FID with the offline Inception weights, from the CLI and during a run."""

import subprocess
import sys

from ganpool.store import connect
from tests.helpers import make_run, train_distributed


def test_the_coordinator_measures_quality_every_k_steps_and_evaluate_agrees(embedded_db):
    run = make_run(embedded_db, "q", max_steps=4, unit_size=10, quality_every=2, quality_samples=24)
    train_distributed(embedded_db, run, workers=1, timeout=240)
    with connect(embedded_db) as conn:
        rows = conn.execute(
            "SELECT version, kid, kid_std, fid, n_real, n_fake FROM quality ORDER BY version"
        ).fetchall()
    assert [r["version"] for r in rows] == [2, 4]
    assert all(r["n_real"] == 24 and r["n_fake"] == 24 and r["kid_std"] > 0 for r in rows)
    assert all(r["kid"] > 0.01 and r["fid"] > 0 for r in rows)  # 4 steps: far from real faces

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ganpool",
            "evaluate",
            "--db",
            embedded_db,
            "--run",
            "q",
            "--version",
            "4",
            "--n",
            "24",
            "--real",
            "24",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    assert "run 'q' version 4: KID" in r.stdout and "(24 real and 24 generated images)" in r.stdout
    with connect(embedded_db) as conn:
        again = conn.execute("SELECT kid FROM quality WHERE version = 4").fetchone()["kid"]
    # Same generator, same real picks, same noise seed: the same figure.
    assert abs(again - rows[1]["kid"]) < 1e-6
