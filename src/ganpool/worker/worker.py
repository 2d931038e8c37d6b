"""The worker: claim a unit, compute its gradients on the version it names, submit them.

Protocol (see docs/protocol.md). A worker's whole interface to the database is a handful
of functions, each one transaction (migration 0002): `ganpool_register`,
`ganpool_heartbeat`, `ganpool_claim`, `ganpool_submit`, `ganpool_release`,
`ganpool_leave`, plus reading the run's configuration and published weights.

1. Register (name, host, device) and check the local dataset's fingerprint against the
   run's: a mismatch refuses to start.
2. LISTEN `ganpool_version`; loop:
   - claim the oldest pending unit (`FOR UPDATE SKIP LOCKED`; the lease expires on the
     server's clock). Nothing to claim: sleep until a NOTIFY, or `poll_s` at most.
   - fetch that unit's version's weights once per version (binary read, checked
     safetensors), reset both networks to it, compute the unit's gradients
     (ganpool.training.gradients) while a background thread heartbeats the lease.
   - submit the payload (safetensors, bound as a binary parameter). The database records
     the result and completes the unit in one transaction, or refuses with a reason
     (stale, lease lost, run ended) that the worker reports.
3. On Ctrl-C or SIGTERM: leave, which releases a claimed unit at once. When the run
   finishes or stops, exit cleanly.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ganpool.data.database import DatabaseImages
from ganpool.data.datasets import check_fingerprint, open_dataset
from ganpool.models.dcgan import build_models
from ganpool.runs import Run
from ganpool.serialization.tensors import manifest_of, pack, unpack
from ganpool.store import Store, connect
from ganpool.store.reconnect import CONNECTION_ERRORS, Backoff
from ganpool.training.gradients import unit_gradients
from ganpool.training.state import load_weights, weights_of

log = logging.getLogger(__name__)


@dataclass
class WorkerProgress:
    version: int = -1
    units: int = 0
    images: int = 0
    rejected: int = 0
    place: int = 0  # on the run's leaderboard (0 = not ranked yet)
    of_workers: int = 0
    compute_s: float = 0.0
    started: float = 0.0
    last_message: str = ""

    @property
    def images_per_s(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.images / elapsed if elapsed > 0 else 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


class Heartbeat(threading.Thread):
    """Keeps the worker alive and its lease extended, on a connection of its own."""

    def __init__(self, dsn: str, worker_id: int, interval: float):
        super().__init__(daemon=True, name="ganpool-heartbeat")
        self.dsn, self.worker_id, self.interval = dsn, worker_id, interval
        self.unit: tuple[int, int] | None = None  # (unit_id, attempt) held now
        self.lost = threading.Event()
        self._stop = threading.Event()

    def run(self) -> None:
        store = None
        while not self._stop.wait(self.interval):
            try:
                store = store or Store(connect(self.dsn))
                unit_id, attempt = self.unit or (None, None)
                holds = store.one(
                    "heartbeat", worker_id=self.worker_id, unit_id=unit_id, attempt=attempt
                )
                if unit_id is not None and not holds["holds"]:
                    self.lost.set()
            except Exception as e:  # a dropped connection: reconnect on the next beat
                log.warning("heartbeat failed: %s", e)
                if store is not None:
                    store.close()
                store = None
        if store is not None:
            store.close()

    def stop(self) -> None:
        self._stop.set()


class Worker:
    compute = staticmethod(unit_gradients)  # the unit's computation (tests swap in a cheat)

    def __init__(
        self,
        dsn: str,
        run: Run,
        name: str,
        data_path: Path | None = None,
        device: str = "cpu",
        poll_s: float = 1.0,
        on_unit: Callable[[WorkerProgress], None] | None = None,
        max_units: int = 0,
    ):
        self.dsn, self.run, self.cfg, self.name = dsn, run, run.config, name
        self.device = resolve_device(device)
        self.poll_s = poll_s
        self.on_unit = on_unit
        self.max_units = max_units  # stop after this many units; 0 = until the run ends
        if self.cfg.data_source == "database":  # nothing to download: fetch per unit
            self.dataset = DatabaseImages(
                dsn, run.fingerprint, run.dataset_size, self.cfg.image_size, self.cfg.channels
            )
        else:
            self.dataset = open_dataset(
                self.cfg.dataset, self.cfg.image_size, self.cfg.channels, data_path
            )
            check_fingerprint(self.dataset, run.fingerprint, run.dataset_size)
        self.g, self.d = build_models(self.cfg.model, self.cfg.seed)
        self.g.to(self.device)
        self.d.to(self.device)
        self.weights_manifest = manifest_of(weights_of(self.g, self.d))
        self._weights: tuple[int, dict[str, torch.Tensor]] | None = None
        self.progress = WorkerProgress()
        self.worker_id: int | None = None
        self.store: Store | None = None
        self._stopping = threading.Event()
        self._seen_rejection = 0
        self._standing_version = -1
        self._unsent: tuple[dict, dict] | None = None

    def stop(self) -> None:
        """Ask the loop to end after the current unit (signal handlers call this)."""
        self._stopping.set()

    def serve(self) -> WorkerProgress:
        """Work until the run ends (or `stop()`); ride out database restarts with backoff."""
        self.store = Store(connect(self.dsn))
        heartbeat = None
        backoff = Backoff()
        try:
            device_name = self.device.type
            if self.device.type == "cuda":
                device_name = torch.cuda.get_device_name(self.device)
            self.worker_id = self.store.one(
                "register_worker",
                run_id=self.run.id,
                name=self.name,
                hostname=socket.gethostname(),
                device=device_name,
            )["worker_id"]
            heartbeat = Heartbeat(self.dsn, self.worker_id, max(0.2, self.cfg.lease_s / 3))
            heartbeat.start()
            self.progress.started = time.monotonic()
            while True:
                listener = None
                try:
                    if self.store.conn.closed:
                        self.store = Store(connect(self.dsn))
                    listener = connect(self.dsn)
                    Store(listener).execute("listen_versions")
                    backoff.reset()
                    self._loop(listener, heartbeat)
                    return self.progress
                except CONNECTION_ERRORS as e:
                    self.store.close()
                    backoff.wait(e)  # then reconnect, re-LISTEN and catch up
                finally:
                    if listener is not None:
                        listener.close()
        finally:
            if heartbeat is not None:
                heartbeat.stop()
            self._leave()
            self.store.close()
            if isinstance(self.dataset, DatabaseImages):
                self.dataset.close()

    def _leave(self) -> None:
        """Give back any claimed unit at once, so no unit waits for a lease to expire."""
        if self.worker_id is None:
            return
        try:
            if self.store.conn.closed:
                self.store = Store(connect(self.dsn, timeout=3))
            self.store.one("leave_run", worker_id=self.worker_id)
        except Exception as e:
            log.warning("could not leave the run cleanly (the lease will expire): %s", e)

    def _loop(self, listener, heartbeat: Heartbeat) -> None:
        store = self.store
        if self._unsent is not None:
            self._submit(*self._unsent)  # computed before the connection dropped
        while not self._stopping.is_set():
            state = store.one("run_state", run_id=self.run.id)
            if state["status"] in ("finished", "stopped"):
                log.info("the run has %s", state["status"])
                return
            unit = store.one("claim_unit", worker_id=self.worker_id)
            if unit is None:
                # Nothing to do: sleep until the coordinator publishes, or poll_s at most.
                for _ in listener.notifies(timeout=self.poll_s, stop_after=1):
                    pass
                continue
            heartbeat.unit = (unit["unit_id"], unit["attempt"])
            try:
                self._compute_and_submit(unit)
            finally:
                heartbeat.unit = None
            if self.max_units and self.progress.units + self.progress.rejected >= self.max_units:
                return

    def _weights_for(self, version: int) -> dict[str, torch.Tensor]:
        if self._weights is None or self._weights[0] != version:
            blob = self.store.blob("weights_at", "weights", run_id=self.run.id, version=version)
            if blob is None:
                raise LookupError(f"weights of version {version} are no longer stored")
            self._weights = (version, unpack(blob, self.weights_manifest))
        return self._weights[1]

    def _compute_and_submit(self, unit: dict) -> None:
        try:
            weights = self._weights_for(unit["version"])
        except LookupError as e:
            log.info("%s; giving the unit back", e)
            self.store.one(
                "release_unit",
                worker_id=self.worker_id,
                unit_id=unit["unit_id"],
                attempt=unit["attempt"],
            )
            return
        load_weights(self.g, self.d, weights)  # also resets BatchNorm statistics to the version's
        t0 = time.perf_counter()
        phase = unit["phase"]
        # A G-phase unit needs no images: the same noise, through the new D.
        real = None if phase == "G" else self.dataset.batch(unit["indices"]).to(self.device)
        result = self.compute(
            self.g, self.d, real, unit["noise_seed"], self.cfg.nz, phase, len(unit["indices"])
        )
        fields = {
            "worker_id": self.worker_id,
            "unit_id": unit["unit_id"],
            "attempt": unit["attempt"],
            "payload": pack(result.tensors),
            "g_loss": result.g_loss,
            "d_loss": result.d_loss,
            "d_real": result.d_real,
            "d_fake": result.d_fake,
            "compute_seconds": time.perf_counter() - t0,
        }
        # Kept until the database has answered: a reconnect resubmits it (idempotently).
        self._unsent = (unit, fields)
        self._submit(unit, fields)

    def _submit(self, unit: dict, fields: dict) -> None:
        verdict = self.store.execute_binary("submit_result", **fields)
        self._unsent = None
        p = self.progress
        p.version = unit["version"]
        p.compute_s += fields["compute_seconds"]
        if verdict["accepted"]:
            p.units += 1
            p.images += len(unit["indices"])
        # Refusals at submission and at aggregation alike are recorded with their reason.
        rejections = self.store.all(
            "worker_rejections", worker_id=self.worker_id, after_id=self._seen_rejection
        )
        p.last_message = "; ".join(
            f"unit {r['unit_id']} rejected: {r['reason']}" for r in rejections
        )
        for r in rejections:
            self._seen_rejection = r["id"]
            p.rejected += 1
            log.warning("unit %s rejected: %s", r["unit_id"], r["reason"])
        # The leaderboard moves only when a version is published: ask once per version, not
        # once per unit (it aggregates the whole run's contributions).
        if self._standing_version != p.version:
            self._standing_version = p.version
            standing = self.store.one("my_standing", worker_id=self.worker_id)
            if standing:
                p.place, p.of_workers = standing["place"], standing["of_workers"]
        if self.on_unit:
            self.on_unit(p)
