"""Simulated GPU students for the WAN benchmark: real `Worker`s whose computation is a
stand-in, several to a process, each connecting to PostgreSQL through its own shaped link.

Each worker computes through the worker's seam for one unit (`Worker(compute_unit=...)`)
with `ganpool.training.stand_in`: a unit takes images / R seconds (a sleep, so sixteen
"GPUs" fit on two cores) and returns a result of the real size that screening accepts, for
any update rule. The images themselves are not decoded (a stand-in does not read them, and
16 workers decoding 8,192-image local units would measure this machine's two cores, not
the links): a unit's image count is what the stand-in needs. Everything else is the
worker as students run it: claims, leases, heartbeats, weight downloads, uploads.

    python wan_workers.py R RUN_NAME DBNAME DATA OUT_DIR NAME=PORT ...

Each worker's DSN is postgresql://postgres@127.0.0.1:PORT/DBNAME (its link). On the line
"dump" on stdin it writes OUT_DIR/NAME.json (the worker's timeline and compute spans) and
answers "dumped"; when stdin closes it exits at once, so it never outlives the harness.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

from ganpool.events import Timeline
from ganpool.runs import find_run
from ganpool.store import Store, connect
from ganpool.training.stand_in import stand_in


class TimedStandIn:
    """The stand-in, with the wall-clock span of every unit it computes."""

    def __init__(self, images_per_s: float):
        self.compute_unit = stand_in(images_per_s)
        self.spans: list[tuple[float, float]] = []

    def __call__(self, g, d, real, unit, cfg):
        start = time.time()
        result = self.compute_unit(g, d, real, unit, cfg)
        self.spans.append((start, time.time()))
        return result


class Undecoded:
    """A dataset whose batches are placeholders of the right length (see the docstring)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def batch(self, indices: list[int]) -> torch.Tensor:
        return torch.empty(len(indices), 0)

    def __getattr__(self, name: str):
        return getattr(self.dataset, name)


def host(rate: str, run_name: str, dbname: str, data: str, out_dir: str, *specs: str) -> None:
    """Run one Worker per NAME=PORT in threads until stdin closes."""
    from ganpool.worker import Worker

    torch.set_num_threads(1)
    workers: dict[str, tuple[Worker, TimedStandIn]] = {}
    threads = []
    for spec in specs:
        name, port = spec.split("=")
        dsn = f"postgresql://postgres@127.0.0.1:{port}/{dbname}"
        store = Store(connect(dsn))  # the run's settings come over the link, as for a student
        run = find_run(store, run_name)
        store.close()
        gpu = TimedStandIn(float(rate))
        timeline = Timeline()
        worker = Worker(
            dsn,
            run,
            name,
            Path(data),
            device="cpu",
            poll_s=2.0,
            compute_unit=gpu,
            on_event=timeline,
        )
        worker.dataset = Undecoded(worker.dataset)
        workers[name] = (timeline, gpu)
        threads.append(threading.Thread(target=worker.serve, name=name, daemon=True))
    for t in threads:
        t.start()
    for line in sys.stdin:
        if line.strip() == "dump":
            for name, (timeline, gpu) in workers.items():
                data = {"timeline": list(timeline), "compute": gpu.spans}
                (Path(out_dir) / f"{name}.json").write_text(json.dumps(data))
            print("dumped", flush=True)
    os._exit(0)  # stdin closed: the harness is done with us (or gone)


if __name__ == "__main__":
    host(*sys.argv[1:])
