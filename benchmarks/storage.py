"""Does the database stop growing? Train the small model for 300 steps (coordinator and two
workers in threads, an embedded PostgreSQL) and print the database size at steps 50 and 300.

    .venv/bin/python benchmarks/storage.py [--steps 300]
"""

from __future__ import annotations

import argparse
import threading

from ganpool.coordinator import Coordinator
from ganpool.data.datasets import builtin_faces
from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.runs import create_run
from ganpool.settings import load_run_config
from ganpool.store import Store, connect, migrate
from ganpool.worker import Worker

SIZE_SQL = """
SELECT pg_database_size(current_database()) AS db,
       pg_total_relation_size('result_payloads') AS payloads,
       pg_total_relation_size('version_weights') AS weights,
       pg_total_relation_size('samples') AS samples,
       pg_total_relation_size('work_units') + pg_total_relation_size('results')
         + pg_total_relation_size('version_contributions') + pg_total_relation_size('step_metrics')
         AS bookkeeping
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--checkpoints", default="50,100,200,300")
    args = ap.parse_args()
    marks = {int(x) for x in args.checkpoints.split(",")}
    with EmbeddedPostgres() as pg:
        dsn = pg.url()
        with connect(dsn) as conn:
            migrate(conn)
        cfg = load_run_config(preset="small", overrides={"max_steps": args.steps})
        store = Store(connect(dsn))
        run = create_run(store, "storage", cfg, builtin_faces(cfg.image_size, cfg.channels))
        probe = connect(dsn)
        print(
            f"{'step':>5} {'database MB':>12} {'payloads MB':>12} {'weights MB':>11} "
            f"{'samples MB':>11} {'bookkeeping MB':>15}"
        )

        def on_step(report) -> None:
            if report.version in marks:
                s = probe.execute(SIZE_SQL).fetchone()
                mb = {k: v / 2**20 for k, v in s.items()}
                print(
                    f"{report.version:>5} {mb['db']:>12.2f} {mb['payloads']:>12.2f} "
                    f"{mb['weights']:>11.2f} {mb['samples']:>11.2f} {mb['bookkeeping']:>15.2f}",
                    flush=True,
                )

        coordinator = Coordinator(dsn, run, on_step=on_step, poll_s=0.2)
        threads = [threading.Thread(target=coordinator.serve)]
        threads += [
            threading.Thread(target=Worker(dsn, run, f"w{i}", device="cpu", poll_s=0.2).serve)
            for i in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        probe.close()
        store.close()


if __name__ == "__main__":
    main()
