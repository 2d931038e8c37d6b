"""The scale section of `make bench`: 100 simulated workers on their own connections, then
checks that no unit was lost or applied twice."""

from __future__ import annotations

import threading
import time

import torch
from perf_common import config, new_run, postgres_cpu_s, spawn, wait

from ganpool.coordinator import Coordinator
from ganpool.data.datasets import builtin_faces
from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.runs import find_run
from ganpool.serialization.tensors import Packer
from ganpool.store import Store, connect
from ganpool.store.submission import submission, upload_result
from ganpool.training.gradients import result_manifest, unit_gradients
from ganpool.training.state import load_weights


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


def bench_scale(dsn: str, pg: EmbeddedPostgres, seconds: float, workers: int = 100) -> dict:
    cfg = config("small", results_per_step=80, units_per_step=workers, max_seconds=seconds)
    run = new_run(dsn, "scale", cfg)
    coordinator = Coordinator(dsn, run, poll_s=1.0)
    per_process = 25
    procs = [
        spawn("_scale", dsn, run.name, str(first), str(per_process))
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
    cpu0, t0 = postgres_cpu_s(pg), time.monotonic()
    sampler.start()
    coordinator.serve()  # until max_seconds of running
    wall, cpu = time.monotonic() - t0, postgres_cpu_s(pg) - cpu0
    stop.set()
    sampler.join()
    wait(procs, timeout=120)
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
