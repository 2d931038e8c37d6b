"""Shared test helpers: small runs, threads that run real coordinators and workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from ganpool.coordinator import Coordinator
from ganpool.data.datasets import builtin_faces
from ganpool.runs import Run, create_run
from ganpool.settings import load_run_config
from ganpool.store import Store, connect
from ganpool.worker import Worker


def make_run(dsn: str, name: str = "t", **overrides) -> Run:
    # Protocol tests state the one-phase rule, so that one step is one version; the
    # alternating rule has tests of its own.
    defaults = {"sample_every": 1000, "update_rule": "simultaneous"}
    cfg = load_run_config(preset="small", overrides={**defaults, **overrides})
    store = Store(connect(dsn))
    try:
        return create_run(store, name, cfg, builtin_faces(cfg.image_size, cfg.channels))
    finally:
        store.close()


class Threads:
    """Run a coordinator and workers in threads, fail loudly, and always join them."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.stops: list[Callable[[], None]] = []

    def start(self, target, *args, stop: Callable[[], None] | None = None) -> None:
        """Run target(*args) in a thread; `stop`, if given, asks it to return."""

        def wrapped() -> None:
            try:
                target(*args)
            except BaseException as e:
                self.errors.append(e)

        t = threading.Thread(target=wrapped, daemon=True)
        t.start()
        self.threads.append(t)
        if stop is not None:
            self.stops.append(stop)

    def join(self, timeout: float) -> None:
        """Wait for every thread. The first error ends the wait (a coordinator that died
        leaves its workers waiting for versions until the deadline): the threads that can be
        stopped are, and joined, and the error is raised."""
        deadline = time.monotonic() + timeout
        for t in self.threads:
            while t.is_alive() and not self.errors and time.monotonic() < deadline:
                t.join(min(0.1, max(0.0, deadline - time.monotonic())))
        if self.errors:
            for stop in self.stops:
                stop()
            for t in self.threads:
                t.join(max(0.0, deadline - time.monotonic()))
            raise self.errors[0]
        alive = [t for t in self.threads if t.is_alive()]
        assert not alive, f"{len(alive)} thread(s) still running after {timeout}s"


def train_distributed(
    dsn: str, run: Run, workers: int, timeout: float = 120, out: Path | None = None
):
    """Train `run` to its max_steps with a coordinator and `workers` workers, in threads."""
    threads = Threads()
    coordinator = Coordinator(dsn, run, out_dir=out, poll_s=0.2)
    stopping = threading.Event()
    threads.start(coordinator.serve, stopping.is_set, stop=stopping.set)
    ws = [Worker(dsn, run, f"w{i}", device="cpu", poll_s=0.2) for i in range(workers)]
    for w in ws:
        threads.start(w.serve, stop=w.stop)
    threads.join(timeout)
    return coordinator, ws


class FakeStudent:
    """A worker driven step by step through the worker API (for protocol tests)."""

    def __init__(self, dsn: str, run: Run, name: str):
        from ganpool.models.dcgan import build_models

        self.store = Store(connect(dsn))
        self.run = run
        self.id = self.store.one(
            "register_worker", run_id=run.id, name=name, hostname="test", device="cpu"
        )["worker_id"]
        self.g, self.d = build_models(run.config.model, run.config.seed)
        self.faces = builtin_faces(run.config.image_size, run.config.channels)

    def claim(self) -> dict | None:
        return self.store.one("claim_unit", worker_id=self.id)

    def payload(self, unit: dict) -> dict:
        """A genuine result for `unit`, computed on the weights of its version."""
        from ganpool.serialization.tensors import manifest_of, pack, unpack
        from ganpool.training.gradients import unit_gradients
        from ganpool.training.state import load_weights, weights_of

        blob = self.store.blob("weights_at", "weights", run_id=self.run.id, version=unit["version"])
        load_weights(self.g, self.d, unpack(blob, manifest_of(weights_of(self.g, self.d))))
        r = unit_gradients(
            self.g,
            self.d,
            self.faces.batch(unit["indices"]),
            unit["noise_seed"],
            self.run.config.nz,
        )
        return {
            "payload": pack(r.tensors),
            "g_loss": r.g_loss,
            "d_loss": r.d_loss,
            "d_real": r.d_real,
            "d_fake": r.d_fake,
            "compute_seconds": 0.01,
        }

    def submit(self, unit: dict, **override) -> dict:
        fields = self.payload(unit) | override
        return self.store.execute_binary(
            "submit_result",
            worker_id=self.id,
            unit_id=unit["unit_id"],
            attempt=unit["attempt"],
            **fields,
        )

    def rejections(self) -> list[str]:
        return [
            r["reason"] for r in self.store.all("worker_rejections", worker_id=self.id, after_id=0)
        ]

    def close(self) -> None:
        self.store.close()
