"""What every section of `make bench` (benchmarks/performance.py) shares: the run
configuration, runs on the embedded server, child processes and CPU accounting."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ganpool.data.datasets import builtin_faces
from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.runs import Run, create_run
from ganpool.settings import load_run_config
from ganpool.store import Store, connect

MAIN = Path(__file__).resolve().with_name("performance.py")  # dispatches the child processes
UNITS_PER_STEP = 8  # the worker and cluster sections: 8 units of 64 images per step
UNIT = 64


def config(name: str, **overrides):
    """The paper's 64x64 model on the built-in faces (upscaled to 64x64 RGB: no download)."""
    base = {
        "dataset": "faces",
        "update_rule": "simultaneous",  # one full-GAN gradient pass per unit
        "unit_size": UNIT,
        "sample_every": 10_000,
        "lease_s": 120.0,
    }
    if name == "small":
        return load_run_config(preset="small", overrides={**base, "unit_size": 25, **overrides})
    return load_run_config(preset="dcgan64", overrides={**base, **overrides})


def new_run(dsn: str, name: str, cfg) -> Run:
    store = Store(connect(dsn))
    try:
        return create_run(store, name, cfg, builtin_faces(cfg.image_size, cfg.channels))
    finally:
        store.close()


def spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(MAIN), *args], env=env)


def wait(procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def children_cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def postgres_cpu_s(pg: EmbeddedPostgres) -> float:
    """CPU seconds of the server: the postmaster, its live backends, and (counted in the
    postmaster's children times) every backend that has exited."""
    import psutil

    root = psutil.Process(pg.running_pid())
    t = root.cpu_times()
    total = t.children_user + t.children_system
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total
