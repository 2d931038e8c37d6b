"""`ganpool demo`: a whole class on one machine.

Starts an embedded PostgreSQL server (unless --db is given), migrates, creates a run on the
built-in faces, launches one coordinator and K workers as separate OS processes, shows
progress, and writes `summary.json` and sample grids. Everything it started (the server
included) is stopped when it finishes, fails or is interrupted.

Each demo's server has a data folder of its own, so two demos side by side never touch
each other's. The demo's own connection (progress and summary) rides out a database
restart like the coordinator's and the workers' do.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ganpool.data.datasets import builtin_faces
from ganpool.errors import GanpoolError
from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.local_demo.supervise import die_with_parent, start_guardian
from ganpool.runs import create_run
from ganpool.settings import load_run_config
from ganpool.store.instructor import InstructorStore, RunSummary
from ganpool.store.reconnect import CONNECTION_ERRORS, Backoff, Outage
from ganpool.throughput import run_images_per_s


def demo_data_dir() -> Path:
    """Where this demo's server keeps its data: a new folder for each demo, so that demos
    side by side never share a server (the guardian removes it if the demo is killed).
    GANPOOL_DEMO_PGDATA names one instead (the tests use it to watch it go)."""
    if os.environ.get("GANPOOL_DEMO_PGDATA"):
        return Path(os.environ["GANPOOL_DEMO_PGDATA"])
    return Path(tempfile.mkdtemp(prefix=f"ganpool-demo-pg-{os.getuid()}-", dir="/tmp"))


class _Watch:
    """The demo's own connection, for progress and the summary. Like the coordinator's and
    the workers', it reconnects when the database restarts (one line each way)."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.store: InstructorStore | None = None
        self.outage = Outage()
        self.last_error: BaseException | None = None

    def _connected(self) -> InstructorStore:
        if self.store is None or self.store.closed:
            self.store = InstructorStore.open(self.dsn, check=False)
        return self.store

    def _drop(self, error: BaseException) -> None:
        self.last_error = error
        self.outage.lost(error)
        if self.store is not None:
            self.store.close()
        self.store = None

    def try_once(self, run_id: int) -> tuple[RunSummary, float] | None:
        """The run's figures now, or None while the database is away (the caller polls)."""
        try:
            store = self._connected()
            row = store.run_summary(run_id), run_images_per_s(store, run_id)
        except CONNECTION_ERRORS as e:
            self._drop(e)
            return None
        self.outage.back()
        return row

    def until_answered(self, run_id: int) -> tuple[RunSummary, float]:
        """The run's figures, waiting (with backoff, bounded) for the database if need be."""
        backoff = Backoff(outage=self.outage)
        while (figures := self.try_once(run_id)) is None:
            backoff.wait(self.last_error)
        return figures

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def _spawn(args: list[str], dsn: str, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "GANPOOL_DB": dsn, "OMP_NUM_THREADS": "1"}
    with log_path.open("w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "ganpool", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )


def _stop_all(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_demo(
    workers: int, steps: int, out: Path, db: str | None = None, settings: dict | None = None
) -> dict:
    """`settings`: run settings over the small preset (`ganpool demo --set KEY=VALUE`)."""
    if workers < 1 or steps < 1:
        raise GanpoolError("demo needs --workers >= 1 and --steps >= 1")
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    server = guardian = None
    procs: list[subprocess.Popen] = []
    started = time.monotonic()
    previous_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if db is None:
            server = EmbeddedPostgres(demo_data_dir())
            db = server.start()
            guardian = start_guardian(server.data_dir)
            print(f"started an embedded PostgreSQL server: {db}", flush=True)
        store = InstructorStore.open(db, check=False)
        store.migrate()
        cfg = load_run_config(preset="small", overrides={**(settings or {}), "max_steps": steps})
        dataset = builtin_faces(cfg.image_size, cfg.channels)
        run = create_run(store, f"demo-{time.strftime('%Y%m%d-%H%M%S')}", cfg, dataset)
        store.close()  # from here on, the watch's connection: it reconnects
        watch = _Watch(db)
        print(
            f"created run {run.name!r}: {len(dataset)} built-in faces, {steps} steps, "
            f"{workers} workers",
            flush=True,
        )

        coordinator = _spawn(
            ["coordinator", "--run", run.name, "--out", str(out)],
            db,
            out / "logs" / "coordinator.log",
        )
        procs.append(coordinator)
        for i in range(workers):
            procs.append(
                _spawn(
                    [
                        "worker",
                        "--run",
                        run.name,
                        "--name",
                        f"worker-{i + 1}",
                        "--threads",
                        "1",
                        "--device",
                        "cpu",
                    ],
                    db,
                    out / "logs" / f"worker-{i + 1}.log",
                )
            )
        last_print = 0.0
        while coordinator.poll() is None:
            time.sleep(0.5)
            if time.monotonic() - last_print >= 5:
                last_print = time.monotonic()
                figures = watch.try_once(run.id)
                if figures is None:
                    continue  # the database is away: said once; the others reconnect too
                s, rate = figures
                print(
                    f"step {cfg.steps_of(s.current_version)}/{steps} | "
                    f"epoch {s.epochs:.2f} | "
                    f"{rate:.1f} img/s | workers online {s.workers_online}",
                    flush=True,
                )
        if coordinator.returncode != 0:
            tail = (out / "logs" / "coordinator.log").read_text().strip().splitlines()[-1:]
            raise GanpoolError(f"the coordinator failed: {' '.join(tail)} (see {out}/logs)")
        for p in procs[1:]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
        s, rate = watch.until_answered(run.id)
        watch.close()
        summary = {
            "run": run.name,
            "steps_completed": cfg.steps_of(s.current_version),
            "epochs_completed": round(float(s.epochs), 4),
            "images_processed": int(s.images_applied),
            "units_applied": int(s.units_applied),
            "units_rejected": int(s.units_rejected),
            "units_reissued": int(s.units_reissued),
            "images_per_s": round(rate, 2),
            "workers": workers,
            "wall_seconds": round(time.monotonic() - started, 2),
            "samples": sorted(str(p.relative_to(out)) for p in (out / "samples").glob("*.png")),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        _stop_all(procs)
        if server is not None:
            server.destroy()
        if guardian is not None:
            guardian.terminate()
            guardian.wait()
