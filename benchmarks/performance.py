"""`make bench`: how well the database hides behind the compute, measured in one run.

Every figure comes from real processes on one embedded PostgreSQL 18 (unix socket), on this
machine, in this run; ratios compare things measured minutes apart on the same machine.

    .venv/bin/python benchmarks/performance.py [--scale-seconds 300] [--only transport,...]

Sections (docs/performance.md explains each figure and how to read it):
  queue      16 client processes claim-and-complete 20,000 units (first: a quiet server)
  transport  a 25 MB result (the 64x64 DCGAN's gradients) up and down, fp32 and 16-bit
  wakeup     version published -> a worker claims a unit of it (small model, many versions)
  worker     1 worker x 1 thread, 8 units of 64 per step: share of wall time computing, and
             the coordinator's last-result-commit -> NOTIFY time
  cluster    coordinator + 2 workers x 1 thread against torch.distributed (gloo) data
             parallel with 2 processes x 1 thread, same global batch, same computation
  scale      100 simulated workers (own connections, small model) for --scale-seconds

Writes bench/results/latest.json and prints a markdown table. Each section is a module beside
this one (perf_<section>.py; perf_common.py, perf_report.py); this file parses the command line,
runs the sections in order and dispatches the child processes they spawn.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from perf_cluster import bench_cluster, ddp_process
from perf_queue import bench_queue
from perf_report import machine, table
from perf_scale import bench_scale, scale_process
from perf_transport import bench_transport
from perf_worker import bench_wakeup, bench_worker, worker_process

from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.store import connect, migrate

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "latest.json"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):  # a child process of the benchmark
        {
            "_worker": worker_process,
            "_ddp": ddp_process,
            "_scale": scale_process,
        }[sys.argv[1]](*sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="queue,transport,wakeup,worker,cluster,scale")
    ap.add_argument("--scale-seconds", type=float, default=300.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    only = set(args.only.split(","))
    started = time.monotonic()
    r: dict = {}
    with EmbeddedPostgres() as pg:
        dsn = pg.url()
        with connect(dsn) as conn:
            migrate(conn)
        tmp = Path(pg.data_dir).parent / f"bench-{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        r["machine"] = machine(dsn)
        # First, on a quiet server: later sections leave autovacuum work behind that would
        # eat into it.
        if "queue" in only:
            q = bench_queue(dsn, pg, tmp)
            r["queue"] = q
            r["claims_per_second_16_clients"] = q["claims_per_second_16_clients"]
            print(f"queue: {json.dumps(q)}", flush=True)
        if "transport" in only:
            t = bench_transport(dsn)
            r["transport"] = t
            r["roundtrip_ms_fp32"] = t["float32"]["roundtrip_ms"]
            r["roundtrip_ms_fp16"] = min(
                t["bfloat16"]["roundtrip_ms"], t["float16"]["roundtrip_ms"]
            )
            print(f"transport: {json.dumps(t)}", flush=True)
        if "wakeup" in only:
            w = bench_wakeup(dsn, tmp)
            r["wakeup"] = w
            r["wakeup_p99_ms"] = w["claim_p99_ms"]
            print(f"wakeup: {json.dumps(w)}", flush=True)
        if "worker" in only:
            w = bench_worker(dsn, tmp)
            r["worker"] = w
            r["worker_compute_fraction"] = w["worker_compute_fraction"]
            r["coordinator_step_overhead_ms"] = w["coordinator_step_overhead_ms"]
            print(f"worker: {json.dumps(w)}", flush=True)
        if "cluster" in only:
            c = bench_cluster(dsn, tmp)
            r["cluster"] = c
            r["throughput_ratio_vs_ddp"] = c["throughput_ratio_vs_ddp"]
            print(f"cluster: {json.dumps(c)}", flush=True)
        if "scale" in only:
            s = bench_scale(dsn, pg, args.scale_seconds)
            r["scale"] = s
            print(f"scale: {json.dumps(s)}", flush=True)
    r["bench_seconds"] = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")
    print()
    print(table(r))
    print(f"\n{r['machine']['gpu']}\nwritten to {args.out} in {r['bench_seconds']:.0f} s")


if __name__ == "__main__":
    main()
