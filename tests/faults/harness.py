"""Real processes for fault drills: a coordinator and workers started as `python -m ganpool`,
each killed by the scenario or, at the latest, by the fixture that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

from ganpool.data.datasets import builtin_faces
from ganpool.local_demo.supervise import die_with_parent
from ganpool.runs import Run
from ganpool.serialization.tensors import manifest_of, unpack
from ganpool.store import Store, connect
from ganpool.training.local import train_local
from ganpool.training.state import TrainingState


class Cluster:
    def __init__(self, dsn: str, run: Run, logs: Path):
        self.dsn, self.run, self.logs = dsn, run, logs
        self.procs: dict[str, subprocess.Popen] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def _spawn(self, key: str, *args: str) -> subprocess.Popen:
        with (self.logs / f"{key}.log").open("a") as log:  # the child keeps its own copy
            p = subprocess.Popen(
                [sys.executable, "-m", "ganpool", *args, "--db", self.dsn, "--run", self.run.name],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
                preexec_fn=die_with_parent,
            )
        self.procs[key] = p
        return p

    def coordinator(self, key: str = "coordinator") -> subprocess.Popen:
        return self._spawn(key, "coordinator")

    def worker(self, name: str) -> subprocess.Popen:
        return self._spawn(name, "worker", "--name", name, "--threads", "1", "--device", "cpu")

    def log(self, key: str) -> str:
        return (self.logs / f"{key}.log").read_text()

    # -- observing the run through the database ---------------------------------------------

    def query(self, sql: str, *args) -> list[dict]:
        with connect(self.dsn) as conn:
            return conn.execute(sql, args).fetchall()

    def version(self) -> int:
        return self.query("SELECT current_version FROM runs WHERE id = %s", self.run.id)[0][
            "current_version"
        ]

    def wait_for(self, what, timeout: float = 60, every: float = 0.02):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = what()
            except Exception:  # the server may be restarting
                value = None
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def claim_of(self, worker_name: str) -> dict | None:
        rows = self.query(
            "SELECT u.id, u.attempt FROM work_units AS u JOIN workers AS w ON w.id = u.worker_id "
            "WHERE w.name = %s AND u.state = 'claimed' AND w.run_id = %s",
            worker_name,
            self.run.id,
        )
        return rows[0] if rows else None

    def wait_finished(self, timeout: float = 120) -> None:
        self.wait_for(
            lambda: (
                self.query("SELECT status FROM runs WHERE id = %s", self.run.id)[0]["status"]
                == "finished"
            ),
            timeout,
            every=0.2,
        )

    def wait_exit(self, timeout: float = 30) -> None:
        for key, p in self.procs.items():
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{key} did not exit:\n{self.log(key)[-2000:]}") from None

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    def figures(self) -> dict:
        return self.query(
            "SELECT"
            " (SELECT coalesce(sum(reissued), 0) FROM work_units WHERE run_id = %s) AS reissued,"
            " (SELECT count(*) FROM work_units WHERE run_id = %s AND backup_of IS NOT NULL)"
            "  AS copies,"
            " (SELECT count(*) FROM rejections"
            "  WHERE run_id = %s AND reason LIKE 'stale%%') AS stale,"
            " (SELECT count(*) FROM rejections"
            "  WHERE run_id = %s AND reason LIKE 'lease lost%%') AS lease_lost",
            self.run.id,
            self.run.id,
            self.run.id,
            self.run.id,
        )[0]


def assert_trained_exactly_once(cluster: Cluster, target: int) -> None:
    """Target reached; each unit applied at most once; every image of each completed epoch
    applied exactly once; and the weights equal the single-process reference's."""
    run = cluster.run
    assert cluster.version() == target
    c = cluster.query(
        "SELECT count(*) AS n, count(DISTINCT unit_id) AS d FROM version_contributions "
        "WHERE run_id = %s",
        run.id,
    )[0]
    assert c["n"] == c["d"] == target * run.config.results_per_step
    epochs = cluster.query(
        "SELECT e.epoch, e.size, array_agg(i ORDER BY i) AS images "
        "FROM epochs AS e JOIN work_units AS u ON u.run_id = e.run_id AND u.epoch = e.epoch "
        "CROSS JOIN unnest(u.indices) AS i "
        "WHERE e.run_id = %s AND e.completed_at IS NOT NULL AND u.state = 'applied' "
        "GROUP BY e.epoch, e.size",
        run.id,
    )
    assert epochs, "no epoch completed"
    for e in epochs:
        assert e["images"] == list(range(e["size"])), f"epoch {e['epoch']}"
    store = Store(connect(cluster.dsn))
    blob = store.blob("weights_at", "weights", run_id=run.id, version=target)
    store.close()
    got = unpack(blob, manifest_of(TrainingState(run.config).weights()))
    faces = builtin_faces(run.config.image_size, run.config.channels)
    # Same thread count as the processes: Adam's first, sign-like steps turn last-bit
    # differences in near-zero gradients into whole learning-rate steps.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = train_local(run.config, faces, target).weights()
    finally:
        torch.set_num_threads(threads)
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, rtol=1e-4, atol=1e-6)


def no_process_left(cluster: Cluster) -> None:
    assert all(p.poll() is not None for p in cluster.procs.values())
    leftovers = [p for p in psutil.Process().children(recursive=True) if p.status() != "zombie"]
    assert not leftovers, leftovers


def stop_signal(p: subprocess.Popen, sig: signal.Signals) -> None:
    p.send_signal(sig)
