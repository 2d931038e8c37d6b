"""`ganpool demo`: a whole class on one machine.

Starts an embedded PostgreSQL server (unless --db is given), migrates, creates a run on the
built-in faces, launches one coordinator and K workers as separate OS processes, shows
progress, and writes `summary.json` and sample grids. Everything it started (the server
included) is stopped when it finishes, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ganpool.data.datasets import builtin_faces
from ganpool.errors import GanpoolError
from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.local_demo.supervise import die_with_parent, start_guardian
from ganpool.runs import create_run
from ganpool.settings import load_run_config
from ganpool.store import Store, connect, migrate


def demo_data_dir() -> Path:
    """Where the demo's server keeps its data: one fixed place, so that a server or data
    left behind by a killed demo is found, stopped and wiped by the next one."""
    return Path(os.environ.get("GANPOOL_DEMO_PGDATA", f"/tmp/ganpool-demo-pg-{os.getuid()}"))


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


def run_demo(workers: int, steps: int, out: Path, db: str | None = None) -> dict:
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
            db = server.start()  # also stops and wipes what a killed demo left there
            guardian = start_guardian(server.data_dir)
            print(f"started an embedded PostgreSQL server: {db}", flush=True)
        conn = connect(db)
        migrate(conn)
        store = Store(conn)
        cfg = load_run_config(preset="small", overrides={"max_steps": steps})
        dataset = builtin_faces(cfg.image_size, cfg.channels)
        run = create_run(store, f"demo-{time.strftime('%Y%m%d-%H%M%S')}", cfg, dataset)
        vps = cfg.versions_per_step  # the alternating rule publishes two versions per step
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
                s = store.one("run_summary", run_id=run.id)
                rate = s["images_applied"] / max(1e-9, time.monotonic() - started)
                print(
                    f"step {max(0, s['current_version']) // vps}/{steps} | "
                    f"epoch {s['epochs']:.2f} | "
                    f"{rate:.1f} img/s | workers online {s['workers_online']}",
                    flush=True,
                )
        if coordinator.returncode != 0:
            tail = (out / "logs" / "coordinator.log").read_text().strip().splitlines()[-1:]
            raise GanpoolError(f"the coordinator failed: {' '.join(tail)} (see {out}/logs)")
        for p in procs[1:]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
        s = store.one("run_summary", run_id=run.id)
        summary = {
            "run": run.name,
            "steps_completed": s["current_version"] // vps,
            "epochs_completed": round(float(s["epochs"]), 4),
            "images_processed": int(s["images_applied"]),
            "units_applied": int(s["units_applied"]),
            "units_rejected": int(s["units_rejected"]),
            "units_reissued": int(s["units_reissued"]),
            "workers": workers,
            "wall_seconds": round(time.monotonic() - started, 2),
            "samples": sorted(str(p.relative_to(out)) for p in (out / "samples").glob("*.png")),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        store.close()
        return summary
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        _stop_all(procs)
        if server is not None:
            server.destroy()
        if guardian is not None:
            guardian.terminate()
            guardian.wait()
