"""A class for the one-student tests: student logins over SCRAM, students driven call by
call, and a live run (coordinator and honest workers in threads) whose rate is measured."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import torch

from ganpool.coordinator import Coordinator
from ganpool.data.datasets import builtin_faces
from ganpool.errors import GanpoolError
from ganpool.models.dcgan import build_models
from ganpool.runs import Run
from ganpool.serialization.tensors import manifest_of, pack, unpack
from ganpool.store import Store, connect
from ganpool.students import add_student, remove_student
from ganpool.training.gradients import unit_gradients
from ganpool.training.state import load_weights, weights_of
from ganpool.worker import Worker
from tests.helpers import Threads


class Logins:
    """Student logins made by `ganpool student add`, removed at the end."""

    def __init__(self, dsn: str, port: int):
        self.instructor = Store(connect(dsn))
        self.port = port
        self.names: list[str] = []

    def add(self, name: str) -> str:
        name = f"{name}-{uuid.uuid4().hex[:8]}"  # roles are cluster-wide: one set per test
        self.names.append(name)
        return add_student(self.instructor, name, host="127.0.0.1", port=self.port)

    def close(self) -> None:
        for n in self.names:
            with contextlib.suppress(GanpoolError):
                remove_student(self.instructor, n)
        self.instructor.close()


class Student:
    """One worker of a login, driven call by call; computes genuine results on request."""

    def __init__(self, dsn: str, run: Run, name: str = "student"):
        self.store = Store(connect(dsn))
        self.run = run
        self.id = self.store.one(
            "register_worker", run_id=run.id, name=name, hostname="test", device="cpu"
        )["worker_id"]
        self.g, self.d = build_models(run.config.model, run.config.seed)
        self.faces = builtin_faces(run.config.image_size, run.config.channels)

    def claim(self, timeout: float = 0.0) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            unit = self.store.one("claim_unit", worker_id=self.id)
            if unit is not None or time.monotonic() >= deadline:
                return unit
            time.sleep(0.002)

    def tensors(self, unit: dict) -> dict[str, torch.Tensor]:
        """The unit's genuine result, computed on its version's weights, for its phase."""
        blob = self.store.blob("weights_at", "weights", run_id=self.run.id, version=unit["version"])
        load_weights(self.g, self.d, unpack(blob, manifest_of(weights_of(self.g, self.d))))
        real = None if unit["phase"] == "G" else self.faces.batch(unit["indices"])
        r = unit_gradients(
            self.g,
            self.d,
            real,
            unit["noise_seed"],
            self.run.config.nz,
            unit["phase"],
            len(unit["indices"]),
        )
        return r.tensors

    def submit(self, unit: dict, payload: bytes | None = None, tamper=None) -> dict:
        if payload is None:
            tensors = self.tensors(unit)
            payload = pack(tamper(tensors) if tamper else tensors)
        return self.store.execute_binary(
            "submit_result",
            worker_id=self.id,
            unit_id=unit["unit_id"],
            attempt=unit["attempt"],
            payload=payload,
            g_loss=0.5,
            d_loss=0.5,
            d_real=0.5,
            d_fake=0.5,
            compute_seconds=0.01,
        )

    def rejections(self) -> list[str]:
        rows = self.store.all("worker_rejections", worker_id=self.id, after_id=0)
        return [r["reason"] for r in rows]

    def close(self) -> None:
        self.store.close()


class LiveClass:
    """A coordinator and honest workers (the instructor's login) in threads, until close()."""

    def __init__(self, dsn: str, run: Run, honest: int = 2):
        self.dsn, self.run = dsn, run
        self._stop = threading.Event()
        self.threads = Threads()
        self.coordinator = Coordinator(dsn, run, poll_s=0.1)
        self.threads.start(self.coordinator.serve, self._stop.is_set)
        self.workers = [
            Worker(dsn, run, f"honest{i}", device="cpu", poll_s=0.1) for i in range(honest)
        ]
        for w in self.workers:
            self.threads.start(w.serve)

    def query(self, sql: str, *args) -> list[dict]:
        with connect(self.dsn) as conn:
            return conn.execute(sql, args).fetchall()

    def version(self) -> int:
        return self.query("SELECT current_version FROM runs WHERE id = %s", self.run.id)[0][
            "current_version"
        ]

    def wait_version(self, at_least: int, timeout: float = 60) -> float:
        t0 = time.monotonic()
        while self.version() < at_least:
            assert time.monotonic() - t0 < timeout, f"version {at_least} not reached in {timeout}s"
            assert not self.threads.errors, self.threads.errors
            time.sleep(0.02)
        return time.monotonic() - t0

    def rate(self, seconds: float) -> float:
        """Versions published per second over the next `seconds`."""
        v0, t0 = self.version(), time.monotonic()
        time.sleep(seconds)
        return (self.version() - v0) / (time.monotonic() - t0)

    def close(self) -> None:
        self._stop.set()
        for w in self.workers:
            w.stop()
        self.threads.join(90)


def report(capsys, attack: str, before: float, during: float) -> None:
    with capsys.disabled():
        print(
            f"\n[one-student] {attack}: class rate {before:.2f} versions/s before, "
            f"{during:.2f} versions/s during"
        )
