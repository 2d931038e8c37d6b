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

Writes bench/results/latest.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from ganpool.coordinator import Coordinator
from ganpool.data.datasets import builtin_faces
from ganpool.events import Timeline
from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.runs import Run, create_run, find_run
from ganpool.serialization.tensors import Packer
from ganpool.settings import load_run_config
from ganpool.store import Store, connect, migrate
from ganpool.store.submission import submission, upload_result
from ganpool.training.gradients import result_manifest, unit_gradients
from ganpool.training.state import load_weights

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
HERE = Path(__file__).resolve()
UNITS_PER_STEP = 8  # the worker and cluster sections: 8 units of 64 images per step
UNIT = 64


def _config(name: str, **overrides):
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


def _new_run(dsn: str, name: str, cfg) -> Run:
    store = Store(connect(dsn))
    try:
        return create_run(store, name, cfg, builtin_faces(cfg.image_size, cfg.channels))
    finally:
        store.close()


def _spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(HERE), *args], env=env)


def _wait(procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# -- transport ---------------------------------------------------------------------------


def bench_transport(dsn: str, reps: int = 8) -> dict:
    """Upload = pack into the reused buffer + the worker's submission (one transaction: the
    claim checked, the payload by COPY); download = the coordinator's read (COPY out) with
    the manifest and finite checks."""
    from ganpool.coordinator.screening import Screening

    out = {}
    for transport in ("float32", "bfloat16", "float16"):
        cfg = _config("dcgan64", transport=transport, results_per_step=reps, units_per_step=reps)
        run = _new_run(dsn, f"transport-{transport}", cfg)
        coordinator = Coordinator(dsn, run)
        coordinator.start()
        store = Store(connect(dsn))
        worker_id = store.one(
            "register_worker", run_id=run.id, name="bench", hostname="bench", device="cpu"
        )["worker_id"]
        g, d = coordinator.state.g, coordinator.state.d
        faces = builtin_faces(64, 3)
        result = unit_gradients(g, d, faces.batch(list(range(UNIT))), 1, cfg.nz)
        packer = Packer(result_manifest(g, d, "both", cfg.transport_dtype))
        screening = Screening(run.id, cfg, g, d)
        up, down, size = [], [], 0
        for _ in range(reps):
            unit = store.one("claim_unit", worker_id=worker_id)
            t0 = time.perf_counter()
            payload = packer.pack(result.tensors)
            verdict = upload_result(
                store, submission(worker_id, unit), payload
            )  # the worker's own upload
            up.append(time.perf_counter() - t0)
            assert verdict["accepted"], verdict
            size = len(payload)
            rid = store.all("arrived_results", run_id=run.id, version=0)[-1]["id"]  # just sent
            t0 = time.perf_counter()
            screening.check(store.copy_out_blob("copy_result_payload", result_id=rid), "both")
            down.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        store.copy_out_blob("copy_weights_at", run_id=run.id, version=0)  # as a worker does
        weights_ms = (time.perf_counter() - t0) * 1e3
        store.close()
        coordinator.close()
        out[transport] = {
            "bytes": size,
            "upload_ms": statistics.median(up) * 1e3,
            "download_ms": statistics.median(down) * 1e3,
            "roundtrip_ms": (statistics.median(up) + statistics.median(down)) * 1e3,
            "weights_download_ms": weights_ms,
        }
    return out


# -- worker processes --------------------------------------------------------------------


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


def _train(dsn: str, run: Run, workers: int, tmp: Path, timeout: float, alone: bool = False):
    """Coordinator here (1 thread), workers as processes; returns the coordinator's timeline
    and what each worker wrote (its timeline among it)."""
    torch.set_num_threads(1)
    timeline = Timeline()
    coordinator = Coordinator(dsn, run, poll_s=2.0, checkpoint_s=30.0, on_event=timeline)
    outs = [tmp / f"{run.name}-w{i}.json" for i in range(workers)]
    flag = "alone" if alone else ""
    procs = [_spawn("_worker", dsn, run.name, f"w{i}", str(o), flag) for i, o in enumerate(outs)]
    workers_gone = threading.Event()
    thread = threading.Thread(target=coordinator.serve, args=(workers_gone.is_set,), daemon=True)
    thread.start()
    try:
        _wait(procs, timeout)
    finally:
        workers_gone.set()  # the run has finished, or a worker failed: stop either way
        thread.join(30)
    return timeline, [json.loads(o.read_text()) for o in outs if o.exists()]


def bench_wakeup(dsn: str, tmp: Path, versions: int = 300) -> dict:
    cfg = _config("small", results_per_step=1, max_steps=versions)
    run = _new_run(dsn, "wakeup", cfg)
    timeline, (w,) = _train(dsn, run, 1, tmp, timeout=600)
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
        "claim_p50_ms": _pct(claim, 50),
        "claim_p99_ms": _pct(claim, 99),
        "compute_start_p50_ms": _pct(start, 50),
        "compute_start_p99_ms": _pct(start, 99),
    }


def _compute_fraction(timeline: list, from_version: int) -> tuple[float, float]:
    spans = {}
    for t, event, version, unit in timeline:
        if version >= from_version and event in ("compute_start", "compute_end"):
            spans.setdefault(unit, {})[event] = t
    spans = [s for s in spans.values() if len(s) == 2]
    busy = sum(s["compute_end"] - s["compute_start"] for s in spans)
    wall = max(s["compute_end"] for s in spans) - min(s["compute_start"] for s in spans)
    return busy / wall, busy / len(spans)


def bench_worker(dsn: str, tmp: Path, steps: int = 4) -> dict:
    cfg = _config("dcgan64", results_per_step=UNITS_PER_STEP, max_steps=steps, transport="float32")
    run = _new_run(dsn, "worker", cfg)
    timeline, (w,) = _train(dsn, run, 1, tmp, timeout=900, alone=True)
    alone = w["alone_s"]  # the same unit in the same process, no database involved
    fraction, per_unit = _compute_fraction(w["timeline"], from_version=1)
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


# -- the queue ---------------------------------------------------------------------------


def bench_queue(
    dsn: str, pg: EmbeddedPostgres, tmp: Path, units: int = 20_000, clients: int = 16
) -> dict:
    cfg = _config("small", unit_size=1, results_per_step=4096, units_per_step=units)
    run = _new_run(dsn, "queue", cfg)
    t0 = time.perf_counter()
    coordinator = Coordinator(dsn, run)
    coordinator.start()  # issues all 20,000 units of version 0
    coordinator.close()
    issue_s = time.perf_counter() - t0
    outs = [tmp / f"queue-{i}.json" for i in range(clients)]
    cpu0, children0 = _postgres_cpu_s(pg), _children_cpu_s()
    start_at = str(time.time() + 3.0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    client = str(HERE.parent / "queue_client.py")
    procs = [
        subprocess.Popen(
            [sys.executable, client, dsn, str(run.id), f"q{i}", str(o), start_at], env=env
        )
        for i, o in enumerate(outs)
    ]
    _wait(procs, timeout=600)
    db_cpu, client_cpu = _postgres_cpu_s(pg) - cpu0, _children_cpu_s() - children0
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


# -- the cluster against torch.distributed -------------------------------------------------


def ddp_process(rank: str, world: str, port: str, steps: str, out: str) -> None:
    """One rank of the baseline: the same units (64 images, the same gradient function) on
    its share of the global batch, gradients all-reduced over gloo, Adam on both networks."""
    import torch.distributed as dist

    from ganpool.training.state import TrainingState

    torch.set_num_threads(1)
    rank_i, world_i = int(rank), int(world)
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    dist.init_process_group("gloo", rank=rank_i, world_size=world_i)
    cfg = _config("dcgan64")
    state = TrainingState(cfg)
    faces = builtin_faces(64, 3)
    params = [p for net in (state.g, state.d) for p in net.parameters()]
    flat = torch.zeros(sum(p.numel() for p in params))
    per_rank = UNITS_PER_STEP // world_i
    marks = []
    for step in range(int(steps)):
        flat.zero_()
        for k in range(per_rank):
            unit = step * UNITS_PER_STEP + rank_i * per_rank + k
            idx = [(unit * UNIT + i) % len(faces) for i in range(UNIT)]
            r = unit_gradients(state.g, state.d, faces.batch(idx), unit, cfg.nz)
            grads = [r.tensors[f"grad.{n}"] for n in _param_names(state)]
            flat.add_(torch.cat([g.reshape(-1) for g in grads]))
        dist.all_reduce(flat)  # the sum over ranks, as DDP's reducer does per bucket
        flat.div_(UNITS_PER_STEP)
        at = 0
        for p in params:
            p.grad = flat[at : at + p.numel()].view_as(p).clone()
            at += p.numel()
        state.opt_g.step()
        state.opt_d.step()
        dist.barrier()
        marks.append(time.time())
    dist.destroy_process_group()
    if rank_i == 0:
        Path(out).write_text(json.dumps(marks))


def _param_names(state) -> list[str]:
    return [f"G.{n}" for n, _ in state.g.named_parameters()] + [
        f"D.{n}" for n, _ in state.d.named_parameters()
    ]


def bench_cluster(dsn: str, tmp: Path, steps: int = 4) -> dict:
    # The baseline: 2 processes x 1 thread, 8 units of 64 per step (4 each).
    out = tmp / "ddp.json"
    port = str(29500 + os.getpid() % 1000)
    procs = [_spawn("_ddp", str(r), "2", port, str(steps), str(out)) for r in range(2)]
    _wait(procs, timeout=900)
    marks = json.loads(out.read_text())
    ddp = UNITS_PER_STEP * UNIT * (len(marks) - 1) / (marks[-1] - marks[0])
    # ganpool: the coordinator here, 2 worker processes x 1 thread, the same 8 x 64 per step.
    cfg = _config("dcgan64", results_per_step=UNITS_PER_STEP, max_steps=steps)
    run = _new_run(dsn, "cluster", cfg)
    timeline, timelines = _train(dsn, run, 2, tmp, timeout=900)
    published = sorted((v, t) for t, e, v in timeline if e == "published")
    (v0, t0), (v1, t1) = published[1], published[-1]  # from version 1: all warmed up
    ours = UNITS_PER_STEP * UNIT * (v1 - v0) / (t1 - t0)
    return {
        "ddp_images_per_s": ddp,
        "ganpool_images_per_s": ours,
        "throughput_ratio_vs_ddp": ours / ddp,
        "global_batch": UNITS_PER_STEP * UNIT,
        "worker_compute_fractions": [
            _compute_fraction(w["timeline"], from_version=1)[0] for w in timelines
        ],
    }


# -- 100 simulated workers ---------------------------------------------------------------


def scale_process(dsn: str, run_name: str, first: str, count: str) -> None:
    """`count` simulated workers in threads, each on its own connection, computing real
    small-model gradients for the units it claims; one LISTEN connection per process wakes
    them when a version is published. Weights are fetched once per version per process."""
    from ganpool.models.dcgan import build_models
    from ganpool.serialization.tensors import manifest_of, unpack
    from ganpool.training.state import weights_of

    torch.set_num_threads(1)
    store = Store(connect(dsn))
    run = find_run(store, run_name)
    store.close()
    cfg = run.config
    faces = builtin_faces(cfg.image_size, cfg.channels)
    published = threading.Event()
    done = threading.Event()
    cache: dict[int, dict] = {}
    lock = threading.Lock()

    def listen() -> None:
        conn = connect(dsn)
        Store(conn).execute("listen_versions")
        while not done.is_set():
            for _ in conn.notifies(timeout=1.0, stop_after=1):
                published.set()
        conn.close()

    def weights(s: Store, version: int, manifest) -> dict | None:
        with lock:
            if version not in cache:
                blob = s.blob("weights_at", "weights", run_id=run.id, version=version)
                if blob is None:
                    return None
                cache.clear()
                cache[version] = unpack(blob, manifest)
            return cache[version]

    def simulate(i: int) -> None:
        s = Store(connect(dsn))
        g, d = build_models(cfg.model, cfg.seed)
        manifest = manifest_of(weights_of(g, d))
        packer = Packer(result_manifest(g, d, "both", cfg.transport_dtype))
        wid = s.one("register_worker", run_id=run.id, name=f"sim{i}", hostname="sim", device="cpu")[
            "worker_id"
        ]
        while s.one("run_state", run_id=run.id)["status"] == "running":
            unit = s.one("claim_unit", worker_id=wid)
            if unit is None:
                published.wait(1.0)
                published.clear()
                continue
            w = weights(s, unit["version"], manifest)
            if w is None:
                s.one(
                    "release_unit", worker_id=wid, unit_id=unit["unit_id"], attempt=unit["attempt"]
                )
                continue
            load_weights(g, d, w)
            r = unit_gradients(g, d, faces.batch(unit["indices"]), unit["noise_seed"], cfg.nz)
            fields = submission(
                wid, unit, g_loss=r.g_loss, d_loss=r.d_loss, d_real=r.d_real, d_fake=r.d_fake
            )
            upload_result(s, fields, packer.pack(r.tensors))  # as a worker submits
        s.one("leave_run", worker_id=wid)
        s.close()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    threads = [threading.Thread(target=simulate, args=(int(first) + k,)) for k in range(int(count))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    listener.join(3)


SCALE_CHECKS = {
    # a unit applied twice would show as more contributions than distinct units
    "contributions": "SELECT count(*) AS n, count(DISTINCT unit_id) AS units "
    "FROM version_contributions WHERE run_id = %(run)s",
    # every unit ends applied, cancelled (partial sync: its images went back) or rejected
    "states": "SELECT state, count(*) AS n FROM work_units WHERE run_id = %(run)s GROUP BY state",
    # each completed epoch applied each of its images exactly once
    "epochs": "SELECT e.epoch, e.size, count(i) AS applied, count(DISTINCT i) AS distinct_images "
    "FROM epochs AS e JOIN work_units AS u ON u.run_id = e.run_id AND u.epoch = e.epoch "
    "AND u.state = 'applied' AND u.twin_of IS NULL AND u.phase <> 'G', unnest(u.indices) AS i "
    "WHERE e.run_id = %(run)s AND e.completed_at IS NOT NULL GROUP BY e.epoch, e.size",
    "images": "SELECT r.images_applied, (SELECT coalesce(sum(samples), 0) "
    "FROM version_contributions WHERE run_id = r.id) AS contributed FROM runs AS r "
    "WHERE r.id = %(run)s",
}


def _children_cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _postgres_cpu_s(pg: EmbeddedPostgres) -> float:
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


def bench_scale(dsn: str, pg: EmbeddedPostgres, seconds: float, workers: int = 100) -> dict:
    cfg = _config("small", results_per_step=80, units_per_step=workers, max_seconds=seconds)
    run = _new_run(dsn, "scale", cfg)
    coordinator = Coordinator(dsn, run, poll_s=1.0)
    per_process = 25
    procs = [
        _spawn("_scale", dsn, run.name, str(first), str(per_process))
        for first in range(0, workers, per_process)
    ]
    probe = connect(dsn)
    peak = [0]
    stop = threading.Event()

    def sample_connections() -> None:
        while not stop.wait(1.0):
            n = probe.execute("SELECT count(*) AS n FROM pg_stat_activity").fetchone()["n"]
            peak[0] = max(peak[0], n)

    sampler = threading.Thread(target=sample_connections)
    cpu0, t0 = _postgres_cpu_s(pg), time.monotonic()
    sampler.start()
    coordinator.serve()  # until max_seconds of running
    wall, cpu = time.monotonic() - t0, _postgres_cpu_s(pg) - cpu0
    stop.set()
    sampler.join()
    _wait(procs, timeout=120)
    checks = {k: probe.execute(q, {"run": run.id}).fetchall() for k, q in SCALE_CHECKS.items()}
    probe.close()
    contributions = checks["contributions"][0]
    bad_epochs = [
        e["epoch"]
        for e in checks["epochs"]
        if not (e["applied"] == e["size"] == e["distinct_images"])
    ]
    states = {r["state"]: r["n"] for r in checks["states"]}
    images = checks["images"][0]
    return {
        "workers": workers,
        "seconds": wall,
        "steps": coordinator.version,
        "steps_per_s": coordinator.version / wall,
        "units_applied": contributions["n"],
        "units_applied_twice": contributions["n"] - contributions["units"],
        "epochs_checked": len(checks["epochs"]),
        "epochs_not_exactly_once": len(bad_epochs),
        "images_counted_equal_contributed": images["images_applied"] == images["contributed"],
        "unit_states": states,
        "db_cpu_cores": cpu / wall,
        "peak_connections": peak[0],
    }


# -- report ------------------------------------------------------------------------------


def machine(dsn: str) -> dict:
    store = Store(connect(dsn))
    version = store.conn.execute("SHOW server_version").fetchone()["server_version"]
    store.close()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "postgresql": version,
        "gpu": "none: no GPU on this machine, nothing measured on one. The CUDA/MPS path "
        "(--device, pinned host memory) is the same protocol and is exercised here only on the "
        "CPU.",
    }


def table(r: dict) -> str:
    rows = []

    def add(name, value, goal, met):
        rows.append(f"| {name} | {value} | {goal} | {'yes' if met else 'NO'} |")

    if "worker_compute_fraction" in r:
        add(
            "worker compute fraction (1 worker x 1 thread, 8 x 64/step, fp32)",
            f"{r['worker_compute_fraction']:.3f}",
            ">= 0.95",
            r["worker_compute_fraction"] >= 0.95,
        )
    if "throughput_ratio_vs_ddp" in r:
        add(
            "cluster images/s vs gloo data parallel (2 x 1 thread)",
            f"{r['throughput_ratio_vs_ddp']:.3f}",
            ">= 0.9",
            r["throughput_ratio_vs_ddp"] >= 0.9,
        )
    if "roundtrip_ms_fp32" in r:
        add(
            "25 MB result up + down, fp32 (ms)",
            f"{r['roundtrip_ms_fp32']:.0f}",
            "< 100",
            r["roundtrip_ms_fp32"] < 100,
        )
        add(
            "the same in bf16 / fp16 (ms)",
            f"{r['roundtrip_ms_fp16']:.0f}",
            "< 50",
            r["roundtrip_ms_fp16"] < 50,
        )
    if "wakeup_p99_ms" in r:
        add(
            "publication -> worker claims, p99 (ms)",
            f"{r['wakeup_p99_ms']:.1f}",
            "< 5",
            r["wakeup_p99_ms"] < 5,
        )
    if "coordinator_step_overhead_ms" in r:
        add(
            "last result commit -> next NOTIFY, N=8, median (ms)",
            f"{r['coordinator_step_overhead_ms']:.0f}",
            "< 250",
            r["coordinator_step_overhead_ms"] < 250,
        )
    if "claims_per_second_16_clients" in r:
        add(
            "claim-and-complete / s, 16 clients, 20,000 units",
            f"{r['claims_per_second_16_clients']:.0f}",
            ">= 3000",
            r["claims_per_second_16_clients"] >= 3000,
        )
    if "scale" in r:
        s = r["scale"]
        add(
            f"{s['workers']} simulated workers, {s['seconds']:.0f} s: units lost or doubled",
            f"{s['units_applied_twice'] + s['epochs_not_exactly_once']}",
            "0",
            s["units_applied_twice"] == 0 and s["epochs_not_exactly_once"] == 0,
        )
    head = "| figure | measured | goal | met |\n|---|---|---|---|\n"
    return head + "\n".join(rows)


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
