"""A class's rate while one student attacks it through PostgreSQL: a coordinator and two
honest workers (threads) train the small model on an embedded PostgreSQL 18 while a student,
logged in over TCP with SCRAM from their join string, tries to stall the class.

    .venv/bin/python benchmarks/student_attacks.py [--window 8]

Prints versions per second before, during and after each attack. It uses only what every
ganpool since 0005 has, so the same command run with an older tree on PYTHONPATH measures
the "before" (docs/security.md quotes both):

* lock: one transaction, left open, calls submit_begin for every unit id there is;
* stalled upload: a half-sent payload, the transaction left open, the student's
  idle_in_transaction_session_timeout and statement_timeout SET to 0 (lease 10 s).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

from ganpool.coordinator import Coordinator
from ganpool.data.datasets import builtin_faces
from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.runs import create_run
from ganpool.settings import load_run_config
from ganpool.store import Store, connect, migrate
from ganpool.students import add_student
from ganpool.worker import Worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fields(worker_id: int, unit_id: int, attempt: int) -> dict:
    return {
        "worker_id": worker_id,
        "unit_id": unit_id,
        "attempt": attempt,
        "g_loss": 0.0,
        "d_loss": 0.0,
        "d_real": 0.5,
        "d_fake": 0.5,
        "compute_seconds": 0.0,
    }


class LiveClass:
    def __init__(self, pg: EmbeddedPostgres, name: str, **settings):
        dsn = pg.url()
        overrides = {"update_rule": "simultaneous", "sample_every": 1000, "unit_size": 10}
        overrides |= {"results_per_step": 2, "max_steps": 100_000, **settings}
        cfg = load_run_config(preset="small", overrides=overrides)
        self.admin = Store(connect(dsn))
        self.run = create_run(self.admin, name, cfg, builtin_faces(cfg.image_size, cfg.channels))
        join = add_student(self.admin, f"mallory-{name}", host="127.0.0.1", port=pg.port)
        self.student = Store(connect(join))
        self.stop = threading.Event()
        coordinator = Coordinator(dsn, self.run, poll_s=0.2)
        targets = [lambda: coordinator.serve(self.stop.is_set)]
        targets += [Worker(dsn, self.run, f"h{i}", device="cpu", poll_s=0.2).serve for i in (0, 1)]
        self.threads = [threading.Thread(target=t, daemon=True) for t in targets]
        for t in self.threads:
            t.start()
        while self.version() < 2:
            time.sleep(0.1)

    def version(self) -> int:
        return self.admin.one("run_state", run_id=self.run.id)["current_version"]

    def rate(self, seconds: float) -> float:
        v0 = self.version()
        time.sleep(seconds)
        return (self.version() - v0) / seconds

    def close(self) -> None:
        self.student.close()  # first: what it holds may be what the class waits on
        self.admin.execute("set_run_status", run_id=self.run.id, status="stopped")
        self.admin.execute("notify_run_status", run_id=self.run.id)
        self.stop.set()
        for t in self.threads:
            t.join(30)
        self.admin.close()


def lock_every_unit(c: LiveClass) -> None:
    me = c.student.one("register_worker", run_id=c.run.id, name="m", hostname="h", device="c")
    c.student.conn.execute("BEGIN")
    last = c.admin.conn.execute("SELECT max(id) AS n FROM work_units").fetchone()["n"]
    for unit_id in range(1, last + 50):
        c.student.one("submit_begin", **fields(me["worker_id"], unit_id, 1))


def stalled_upload(c: LiveClass) -> None:
    s = c.student
    s.conn.execute("SET idle_in_transaction_session_timeout = 0")
    s.conn.execute("SET statement_timeout = 0")
    me = s.one("register_worker", run_id=c.run.id, name="m", hostname="h", device="c")
    unit = None
    while unit is None:
        unit = s.one("claim_unit", worker_id=me["worker_id"])
    s.conn.execute("BEGIN")
    verdict = s.one("submit_begin", **fields(me["worker_id"], unit["unit_id"], unit["attempt"]))
    s.copy_in("copy_payload", ["int8", "bytea"], row=(verdict["result_id"], b"x" * 1000))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=8.0, help="seconds per measurement")
    ap.add_argument("--stall-window", type=float, default=60.0)
    args = ap.parse_args()
    pg = EmbeddedPostgres(port=free_port(), password_auth=True)
    pg.start()
    try:
        with connect(pg.url()) as conn:
            migrate(conn)
        attacks = [
            (
                "submit_begin over every unit id, one open transaction",
                lock_every_unit,
                {},
                args.window,
            ),
            (
                "upload stopped half-way, timeouts SET to 0, lease 10 s",
                stalled_upload,
                {"lease_s": 10.0},
                args.stall_window,
            ),
        ]
        for i, (name, attack, settings, window) in enumerate(attacks):
            c = LiveClass(pg, f"class{i}", **settings)
            try:
                before = c.rate(args.window)
                attack(c)
                during = c.rate(window)
                print(
                    f"{name}: {before:.2f} versions/s before, {during:.2f} over the "
                    f"{window:.0f} s after it began"
                )
            finally:
                c.close()
    finally:
        pg.destroy()


if __name__ == "__main__":
    main()
