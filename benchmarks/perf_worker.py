"""The wakeup and worker sections of `make bench`: real `Worker` processes against a
coordinator in this process, read from their timelines."""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import torch
from perf_common import UNIT, UNITS_PER_STEP, config, new_run, percentile, spawn, wait

from ganpool.coordinator import Coordinator
from ganpool.events import Timeline
from ganpool.runs import Run, find_run
from ganpool.store import Store, connect
from ganpool.training.gradients import unit_gradients


def worker_process(dsn: str, run_name: str, name: str, out: str, alone: str = "") -> None:
    """A real `Worker` in its own process (1 thread); writes its timeline when the run ends.
    With `alone`, it first times three units with no database involved, as a baseline."""
    from ganpool.worker import Worker

    torch.set_num_threads(1)
    store = Store(connect(dsn))
    run = find_run(store, run_name)
    store.close()
    timeline = Timeline()
    worker = Worker(dsn, run, name, device="cpu", poll_s=2.0, on_event=timeline)
    alone_s = []
    if alone:
        batch = worker.dataset.batch(list(range(run.config.unit_size)))
        for k in range(8):  # the first ones warm up
            t0 = time.perf_counter()
            unit_gradients(worker.g, worker.d, batch, k, run.config.nz)
            alone_s.append(time.perf_counter() - t0)
        alone_s = alone_s[4:]
    progress = worker.serve()
    Path(out).write_text(
        json.dumps(
            {
                "timeline": list(timeline),
                "units": progress.units,
                "rejected": progress.rejected,
                "compute_s": progress.compute_s,
                "alone_s": alone_s,
            }
        )
    )


def train(dsn: str, run: Run, workers: int, tmp: Path, timeout: float, alone: bool = False):
    """Coordinator here (1 thread), workers as processes; returns the coordinator's timeline
    and what each worker wrote (its timeline among it)."""
    torch.set_num_threads(1)
    timeline = Timeline()
    coordinator = Coordinator(dsn, run, poll_s=2.0, checkpoint_s=30.0, on_event=timeline)
    outs = [tmp / f"{run.name}-w{i}.json" for i in range(workers)]
    flag = "alone" if alone else ""
    procs = [spawn("_worker", dsn, run.name, f"w{i}", str(o), flag) for i, o in enumerate(outs)]
    workers_gone = threading.Event()
    thread = threading.Thread(target=coordinator.serve, args=(workers_gone.is_set,), daemon=True)
    thread.start()
    try:
        wait(procs, timeout)
    finally:
        workers_gone.set()  # the run has finished, or a worker failed: stop either way
        thread.join(30)
    return timeline, [json.loads(o.read_text()) for o in outs if o.exists()]


def bench_wakeup(dsn: str, tmp: Path, versions: int = 300) -> dict:
    cfg = config("small", results_per_step=1, max_steps=versions)
    run = new_run(dsn, "wakeup", cfg)
    timeline, (w,) = train(dsn, run, 1, tmp, timeout=600)
    published = {v: t for t, e, v in timeline if e == "published"}
    first: dict[str, dict[int, float]] = {"claimed": {}, "compute_start": {}}
    for t, event, version, _ in w["timeline"]:
        if event in first and version not in first[event]:
            first[event][version] = t
    claim = [(first["claimed"][v] - published[v]) * 1e3 for v in published if v in first["claimed"]]
    start = [
        (first["compute_start"][v] - published[v]) * 1e3
        for v in published
        if v in first["compute_start"]
    ]
    claim = claim[1:]  # version 0 is published before the worker exists
    start = start[1:]
    return {
        "versions": len(claim),
        "claim_p50_ms": percentile(claim, 50),
        "claim_p99_ms": percentile(claim, 99),
        "compute_start_p50_ms": percentile(start, 50),
        "compute_start_p99_ms": percentile(start, 99),
    }


def compute_fraction(timeline: list, from_version: int) -> tuple[float, float]:
    spans = {}
    for t, event, version, unit in timeline:
        if version >= from_version and event in ("compute_start", "compute_end"):
            spans.setdefault(unit, {})[event] = t
    spans = [s for s in spans.values() if len(s) == 2]
    busy = sum(s["compute_end"] - s["compute_start"] for s in spans)
    wall = max(s["compute_end"] for s in spans) - min(s["compute_start"] for s in spans)
    return busy / wall, busy / len(spans)


def bench_worker(dsn: str, tmp: Path, steps: int = 4) -> dict:
    cfg = config("dcgan64", results_per_step=UNITS_PER_STEP, max_steps=steps, transport="float32")
    run = new_run(dsn, "worker", cfg)
    timeline, (w,) = train(dsn, run, 1, tmp, timeout=900, alone=True)
    alone = w["alone_s"]  # the same unit in the same process, no database involved
    fraction, per_unit = compute_fraction(w["timeline"], from_version=1)
    spans = [t for t, e, v, _ in w["timeline"] if v >= 1 and e in ("compute_start", "compute_end")]
    units = sum(1 for _, e, v, _ in w["timeline"] if v >= 1 and e == "compute_end")
    images_per_s = units * UNIT / (max(spans) - min(spans))
    events = sorted(timeline)
    published = {v: t for t, e, v in events if e == "published"}
    last_commit: dict[int, float] = {}
    for t, event, version, _ in w["timeline"]:
        if event == "submitted":
            last_commit[version] = max(t, last_commit.get(version, 0.0))
    overhead, woke, collected = [], [], []
    for v, t in last_commit.items():
        if v + 1 not in published:
            continue
        overhead.append((published[v + 1] - t) * 1e3)
        # The wake-up that made the step: the last one on version v before v+1 went out.
        last_woke = max(te for te, e, ve in events if e == "woke" and ve == v)
        last_collected = max(te for te, e, ve in events if e == "collected" and ve == v)
        woke.append((last_woke - t) * 1e3)
        collected.append((last_collected - last_woke) * 1e3)
    return {
        "worker_compute_fraction": fraction,
        "seconds_per_unit": per_unit,
        "seconds_per_unit_alone": min(alone),
        "images_per_s_vs_compute_alone": images_per_s * min(alone) / UNIT,
        "coordinator_step_overhead_ms": statistics.median(overhead),
        "coordinator_step_overhead_max_ms": max(overhead),
        "coordinator_wake_ms": statistics.median(woke),
        "coordinator_read_last_result_ms": statistics.median(collected),
        "coordinator_step_and_commit_ms": statistics.median(
            o - w - c for o, w, c in zip(overhead, woke, collected, strict=True)
        ),
        "steps": steps,
    }
