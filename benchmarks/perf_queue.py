"""The queue section of `make bench`: 16 client processes claim and complete 20,000 units."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from perf_common import children_cpu_s, config, new_run, postgres_cpu_s, wait

from ganpool.coordinator import Coordinator
from ganpool.local_demo.embedded import EmbeddedPostgres

CLIENT = Path(__file__).resolve().with_name("queue_client.py")


def bench_queue(
    dsn: str, pg: EmbeddedPostgres, tmp: Path, units: int = 20_000, clients: int = 16
) -> dict:
    cfg = config("small", unit_size=1, results_per_step=4096, units_per_step=units)
    run = new_run(dsn, "queue", cfg)
    t0 = time.perf_counter()
    coordinator = Coordinator(dsn, run)
    coordinator.start()  # issues all 20,000 units of version 0
    coordinator.close()
    issue_s = time.perf_counter() - t0
    outs = [tmp / f"queue-{i}.json" for i in range(clients)]
    cpu0, children0 = postgres_cpu_s(pg), children_cpu_s()
    start_at = str(time.time() + 3.0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(CLIENT), dsn, str(run.id), f"q{i}", str(o), start_at], env=env
        )
        for i, o in enumerate(outs)
    ]
    wait(procs, timeout=600)
    db_cpu, client_cpu = postgres_cpu_s(pg) - cpu0, children_cpu_s() - children0
    times = sorted(t for o in outs for t in json.loads(o.read_text()))
    assert len(times) == units, f"{len(times)} of {units} units completed"
    total = (times[-1] - times[0]) / (units - 1)
    window = units // 10
    rates = [
        window / (times[i + window - 1] - times[i]) for i in range(0, units - window + 1, window)
    ]
    return {
        "claims_per_second_16_clients": 1 / total,
        "per_2000_min": min(rates),
        "per_2000_max": max(rates),
        "first_window": rates[0],
        "last_window": rates[-1],
        "issue_s": issue_s,
        "db_cpu_ms_per_op": db_cpu / units * 1e3,
        "client_cpu_ms_per_op": client_cpu / units * 1e3,  # with 16 Python start-ups
    }
