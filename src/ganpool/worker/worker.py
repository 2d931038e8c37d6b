"""The worker: claim a unit, compute its gradients on the version it names, submit them.

Protocol (see docs/protocol.md). A worker's whole interface to the database is a handful
of functions, each one transaction (migration 0002): `ganpool_register`,
`ganpool_heartbeat`, `ganpool_claim`, `ganpool_submit`, `ganpool_release`,
`ganpool_leave`, plus reading the run's configuration and published weights.

1. Register (name, host, device) and check the local dataset's fingerprint against the
   run's: a mismatch refuses to start.
2. Work as a pipeline of three threads, so that the database hides behind the compute
   (docs/performance.md):
   - the fetcher (its own connection, LISTENing on `ganpool_version`) claims the next
     unit (`FOR UPDATE SKIP LOCKED`, a lease on the server's clock) shortly before the
     current one finishes, downloads its version's weights once per version (binary read,
     checked safetensors) and loads its images. Nothing to claim: it sleeps until a
     NOTIFY, or `poll_s` at most, and claims the moment a version is published.
   - the compute thread (the caller's) resets both networks to the unit's version and
     computes its gradients (ganpool.training.gradients), unit after unit; under the local
     rule it trains them for the unit's batches and sends the weight change
     (ganpool.training.local_steps). `compute_unit` replaces that computation (a benchmark's
     stand-in for a GPU: ganpool.training.stand_in).
   - the uploader (its own connection) packs each result into a reused safetensors buffer,
     in the run's transport dtype, and submits it as a binary parameter while the next unit
     computes. The database records the result and completes the unit in one transaction,
     or refuses with a reason (stale, lease lost, run ended) that the worker reports.
   A heartbeat thread extends the lease of every unit the worker holds.
   Notifications are hints (anyone connected may send one): once a worker's claims have come
   back empty three times in a row, it claims at most IDLE_CLAIMS_PER_S times a second,
   however many notifications arrive.
   A unit whose images do not decode is reported (`ganpool_report_failure`) and given back
   instead of crashing the worker; the coordinator sets aside a unit several students
   could not compute.
3. On Ctrl-C or SIGTERM: leave, which releases claimed units at once. When the run
   finishes or stops, exit cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ganpool.data.database import DatabaseImages
from ganpool.data.datasets import check_fingerprint, open_dataset
from ganpool.events import OnEvent, ignore
from ganpool.models.dcgan import build_models
from ganpool.notices import Notice
from ganpool.protocol.vocabulary import RUN_OVER, Phase, RunStatus
from ganpool.runs import Run, coordinator_alive
from ganpool.serialization.tensors import Packer, manifest_of, unpack
from ganpool.settings import RunConfig
from ganpool.store import Store, connect
from ganpool.store.notifications import Listener
from ganpool.store.reconnect import CONNECTION_ERRORS, Backoff, Outage, Pace
from ganpool.store.submission import submission, upload_result
from ganpool.throughput import RecentImages
from ganpool.training.gradients import UnitResult, unit_gradients
from ganpool.training.local_steps import local_unit, payload_manifest, payload_tensors
from ganpool.training.state import load_weights, reset_buffers, weights_of

log = logging.getLogger(__name__)

# An idle worker's empty claims, whatever wakes it: 3 in a row at once after it last found
# work, then 10 a second.
IDLE_CLAIMS_PER_S = 10.0


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
    recent: RecentImages = field(default_factory=RecentImages)

    @property
    def images_per_s(self) -> float:
        """This worker's share of the run's speed, measured the run's way (ganpool.throughput)."""
        return self.recent.rate()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


class Heartbeat(threading.Thread):
    """Keeps the worker alive and the leases of the units it holds extended, on a connection
    of its own."""

    def __init__(
        self,
        dsn: str,
        worker_id: int,
        interval: float,
        held: Callable[[], list],
        outage: Outage | None = None,
    ):
        super().__init__(daemon=True, name="ganpool-heartbeat")
        self.dsn, self.worker_id, self.interval = dsn, worker_id, interval
        self.outage = outage or Outage()
        self.held = held  # () -> [(unit_id, attempt), ...] held now
        self.lost = threading.Event()
        self._stop = threading.Event()

    def run(self) -> None:
        store = None
        while not self._stop.wait(self.interval):
            try:
                store = store or Store(connect(self.dsn))
                for unit_id, attempt in self.held() or [(None, None)]:
                    holds = store.one(
                        "heartbeat", worker_id=self.worker_id, unit_id=unit_id, attempt=attempt
                    )
                    if unit_id is not None and not holds["holds"]:
                        self.lost.set()
                self.outage.back()
            except Exception as e:  # a dropped connection: reconnect on the next beat
                if isinstance(e, CONNECTION_ERRORS):
                    self.outage.lost(e)
                else:
                    log.warning("heartbeat failed: %s", e)
                if store is not None:
                    store.close()
                store = None
        if store is not None:
            store.close()

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Prepared:
    """A claimed unit with everything its computation needs, ready before it is needed."""

    unit: dict
    weights: dict[str, torch.Tensor]
    real: torch.Tensor | None


_END = object()  # no more units: the run ended, or the worker is stopping

# What computes one unit, given the worker's networks (already on the unit's base version),
# the unit's images (None in a G phase), the claimed unit and the run's settings. The
# default trains; a benchmark passes a stand-in (ganpool.training.stand_in).
ComputeUnit = Callable[
    [torch.nn.Module, torch.nn.Module, torch.Tensor | None, dict, RunConfig], UnitResult
]


class Worker:
    compute = staticmethod(unit_gradients)  # the unit's computation (tests swap in a cheat)
    # Claim the next unit shortly before the current one is computed (False: only when idle).
    claim_ahead = True

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
        compute_unit: ComputeUnit | None = None,
        on_event: OnEvent = ignore,
    ):
        self.dsn, self.run, self.cfg, self.name = dsn, run, run.config, name
        self.device = resolve_device(device)
        self.poll_s = poll_s
        self.on_unit = on_unit
        self.max_units = max_units  # stop after this many units; 0 = until the run ends
        self.compute_unit = compute_unit  # None: the run's rule (see _compute)
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
        self.pin = self.device.type == "cuda"  # page-locked host buffers: async copies to the GPU
        self.progress = WorkerProgress()
        self.worker_id: int | None = None
        # claimed / compute_start / compute_end / submitted (version, unit_id), for benchmarks
        self.on_event = on_event
        self._stopping = threading.Event()
        self._failure: BaseException | None = None
        self._held: dict[int, int] = {}  # unit_id -> attempt: claimed and not yet submitted
        self._held_lock = threading.Lock()
        self._ready: queue.Queue = queue.Queue(maxsize=1)  # fetcher -> compute
        self._outbox: queue.Queue = queue.Queue(maxsize=2)  # compute -> uploader
        # When the current computation should end (monotonic), None while compute is idle:
        # the fetcher claims the next unit only shortly before then, so a busy worker never
        # sits on a unit an idle one could be computing.
        self._busy_until: float | None = None
        # Units handed to the compute thread and not yet computed (0, 1 or 2), with the lock
        # that keeps it and _busy_until consistent for the fetcher.
        self._in_hand = 0
        self._turn = threading.Lock()
        self._prepare_s = 0.3  # how long claiming + downloading took, smoothed
        self._recent_compute_s: deque[float] = deque([1.0], maxlen=4)
        self._seen_rejection = 0
        self._standing_version = -1
        self.outage = Outage()  # one line when the database goes, one when it is back
        self.waiting = Notice(log)  # one line when work stops coming (paused, no coordinator)
        self._idle_since: float | None = None
        self.claims = 0  # claim calls made, and those that found nothing (for the tests)
        self.empty_claims = 0
        self.failed_units = 0  # units given back because their images would not load

    def stop(self) -> None:
        """Ask the worker to end after the current unit (signal handlers call this)."""
        self._stopping.set()

    # -- the pipeline ------------------------------------------------------------------

    def serve(self) -> WorkerProgress:
        """Work until the run ends (or `stop()`); ride out database restarts with backoff."""
        store = Store(connect(self.dsn))
        try:
            device_name = self.device.type
            if self.device.type == "cuda":
                device_name = torch.cuda.get_device_name(self.device)
            self.worker_id = store.one(
                "register_worker",
                run_id=self.run.id,
                name=self.name,
                hostname=socket.gethostname(),
                device=device_name,
            )["worker_id"]
        finally:
            store.close()
        heartbeat = Heartbeat(
            self.dsn, self.worker_id, max(0.2, self.cfg.lease_s / 3), self._held_units, self.outage
        )
        fetcher = threading.Thread(target=self._guarded(self._fetch), name="ganpool-fetch")
        uploader = threading.Thread(target=self._guarded(self._upload), name="ganpool-upload")
        for t in (heartbeat, fetcher, uploader):
            t.daemon = True
            t.start()
        self.progress.started = self.progress.recent.started = time.monotonic()
        try:
            self._compute_loop()
        finally:
            self._stopping.set()
            self._outbox.put(_END)
            uploader.join(timeout=60)  # submit what was computed (it retries over reconnects)
            _drain(self._ready)  # unblock a fetcher waiting to hand over a unit
            fetcher.join(timeout=10)
            heartbeat.stop()
            self._leave()
            if isinstance(self.dataset, DatabaseImages):
                self.dataset.close()
        if self._failure is not None:
            raise self._failure
        return self.progress

    def _guarded(self, body: Callable[[], None]) -> Callable[[], None]:
        """A pipeline thread's body: its failure stops the worker and is raised by serve()."""

        def run() -> None:
            try:
                body()
            except BaseException as e:
                if self._failure is None:
                    self._failure = e
                self._stopping.set()
                _offer(self._ready, _END)

        return run

    def _held_units(self) -> list[tuple[int, int]]:
        with self._held_lock:
            return list(self._held.items())

    def _hold(self, unit: dict, held: bool) -> None:
        with self._held_lock:
            if held:
                self._held[unit["unit_id"]] = unit["attempt"]
            else:
                self._held.pop(unit["unit_id"], None)

    def _compute_loop(self) -> None:
        loaded = -1
        computed = 0
        while not self._stopping.is_set():
            try:
                item = self._ready.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is _END:
                return
            unit = item.unit
            base = self.cfg.base_version(unit["version"])
            if base != loaded or self.cfg.update_rule == "local":  # local steps move weights
                load_weights(self.g, self.d, item.weights)
                loaded = base
            else:  # the parameters are the version's still; the statistics moved
                reset_buffers(self.g, self.d, item.weights)
            t0 = time.perf_counter()
            with self._turn:
                # The quickest recent unit: a claim too early costs little, one too late
                # leaves the compute idle (units slow down while uploads share the CPU).
                self._busy_until = time.monotonic() + min(self._recent_compute_s)
            self.on_event("compute_start", unit["version"], unit["unit_id"])
            real = None if item.real is None else item.real.to(self.device, non_blocking=True)
            result = self._compute(unit, real)
            seconds = time.perf_counter() - t0
            with self._turn:
                self._busy_until = None
                self._in_hand -= 1
            self.on_event("compute_end", unit["version"], unit["unit_id"])
            self.progress.compute_s += seconds
            self._recent_compute_s.append(seconds)
            fields = submission(
                self.worker_id,
                unit,
                g_loss=result.g_loss,
                d_loss=result.d_loss,
                d_real=result.d_real,
                d_fake=result.d_fake,
                compute_seconds=seconds,
            )
            self._outbox.put((unit, fields, result.tensors))
            computed += 1
            if self.max_units and computed >= self.max_units:
                return

    def _compute(self, unit: dict, real: torch.Tensor | None) -> UnitResult:
        """One unit's result: the seam given to the constructor, else the run's rule."""
        if self.compute_unit is not None:
            return self.compute_unit(self.g, self.d, real, unit, self.cfg)
        if self.cfg.update_rule == "local":
            return local_unit(self.g, self.d, real, unit["noise_seed"], self.cfg)
        n = len(unit["indices"])
        return self.compute(self.g, self.d, real, unit["noise_seed"], self.cfg.nz, unit["phase"], n)

    # -- the fetcher: claim ahead, download on NOTIFY -----------------------------------

    def _fetch(self) -> None:
        backoff = Backoff(outage=self.outage)
        pace = Pace(IDLE_CLAIMS_PER_S)
        weights: tuple[int, dict[str, torch.Tensor]] | None = None
        while not self._stopping.is_set():
            store = listener = None
            try:
                store = Store(connect(self.dsn))
                listener = Listener(self.dsn, "listen_versions")
                backoff.reset()
                while not self._stopping.is_set():
                    self._wait_for_turn()
                    if self._stopping.is_set():
                        return
                    t0 = time.monotonic()
                    self.claims += 1
                    unit = store.one("claim_unit", worker_id=self.worker_id)
                    if unit is None:  # nothing pending, or the run is not running
                        self.empty_claims += 1
                        state = store.one("run_state", run_id=self.run.id)
                        if state["status"] in RUN_OVER:
                            log.info("the run has %s", state["status"])
                            self._stopping.set()
                            _offer(self._ready, _END)
                            return
                        self._say_why_waiting(store, state["status"])
                        # Nothing to do: sleep until the coordinator publishes, poll_s at most.
                        notified = listener.wait(self.poll_s)
                        if notified:
                            # A notification is only a hint: a flood of them (anyone may send
                            # one) must not turn into a flood of claims. What queued
                            # meanwhile is one wake-up.
                            pace.wait()
                            listener.drain()
                        continue
                    self._hold(unit, True)
                    self._idle_since = None
                    self.waiting.clear()
                    pace.reset()  # found work: the next wake-up is not held back
                    self.on_event("claimed", unit["version"], unit["unit_id"])
                    base = self.cfg.base_version(unit["version"])  # the weights it starts from
                    if weights is None or weights[0] != base:
                        blob = store.copy_out_blob(
                            "copy_weights_at", run_id=self.run.id, version=base
                        )
                        if blob is None:  # pruned: the run has moved on past this unit
                            log.info("version %d is no longer stored; giving the unit back", base)
                            store.one(
                                "release_unit",
                                worker_id=self.worker_id,
                                unit_id=unit["unit_id"],
                                attempt=unit["attempt"],
                            )
                            self._hold(unit, False)
                            continue
                        tensors = unpack(blob, self.weights_manifest)
                        if self.pin:
                            tensors = {k: v.pin_memory() for k, v in tensors.items()}
                        weights = (base, tensors)
                    real = None
                    if unit["phase"] != Phase.G:  # a G-phase unit: the same noise, no images
                        real = self._load_images(store, unit)
                        if real is None:
                            continue  # reported and given back
                        if self.pin:
                            real = real.pin_memory()
                    self._prepare_s = 0.7 * self._prepare_s + 0.3 * (time.monotonic() - t0)
                    with self._turn:
                        self._in_hand += 1
                    self._ready.put(Prepared(unit, weights[1], real))
            except CONNECTION_ERRORS as e:
                backoff.wait(e)  # then reconnect, re-LISTEN and catch up
            finally:
                for held in (store, listener):
                    if held is not None:
                        held.close()

    # A worker waits between versions all the time (that is a step being formed): only a
    # wait longer than this, with no coordinator holding the run, is worth a line.
    NO_COORDINATOR_AFTER_S = 10.0

    def _say_why_waiting(self, store: Store, status: str) -> None:
        """One line when work stops coming for a reason the student should know."""
        now = time.monotonic()
        self._idle_since = self._idle_since or now
        if status == RunStatus.PAUSED:
            self.waiting.set(
                "paused", "the run is paused: waiting for the instructor to resume it",
                ended="the run is running again: back to work",
            )  # fmt: skip
        elif status == RunStatus.CREATED:
            self.waiting.set(
                "created", "the run has not started: waiting for the instructor's coordinator",
                ended="the run has started",
            )  # fmt: skip
        elif now - self._idle_since >= self.NO_COORDINATOR_AFTER_S and not coordinator_alive(
            store, self.run.id
        ):
            self.waiting.set(
                "no coordinator", "no coordinator is running this run: waiting for it to "
                "come back (your work so far is kept)",
                ended="the coordinator is back: back to work",
            )  # fmt: skip

    def _load_images(self, store: Store, unit: dict) -> torch.Tensor | None:
        """The unit's images; None when one does not decode: then the unit is reported as
        one this worker cannot compute (naming the image), and given back, rather than
        crashing the worker and leaving the unit to crash the next one."""
        try:
            return self.dataset.batch(unit["indices"])
        except CONNECTION_ERRORS:
            raise
        except Exception as e:
            bad, reason = None, f"{type(e).__name__}: {e}"
            for i in unit["indices"]:  # which image? (a unit has a few dozen)
                try:
                    self.dataset.batch([i])
                except CONNECTION_ERRORS:
                    raise
                except Exception as one:
                    bad, reason = i, f"image {i}: {type(one).__name__}: {one}"
                    break
        log.warning("cannot compute unit %d, reporting it: %s", unit["unit_id"], reason)
        store.one(
            "report_failure",
            worker_id=self.worker_id,
            unit_id=unit["unit_id"],
            attempt=unit["attempt"],
            image_index=bad,
            reason=reason[:300],
        )
        self._hold(unit, False)
        self.failed_units += 1
        self.progress.last_message = f"unit {unit['unit_id']} given back: {reason}"
        return None

    def _wait_for_turn(self) -> None:
        """Return when the compute thread has nothing in hand, or will be done with its one
        unit within the time a claim and its download take (with margin): then the next
        unit is ready just in time."""
        while not self._stopping.is_set():
            with self._turn:
                in_hand, until = self._in_hand, self._busy_until
            if in_hand == 0:
                return
            if in_hand == 1 and until is not None and self.claim_ahead:
                # Lead by what preparing takes, but never by more than half a computation:
                # a quick worker does not hoard units that idle workers are about to claim.
                lead = min(max(0.1, 2 * self._prepare_s), 0.5 * min(self._recent_compute_s))
                left = until - time.monotonic() - lead
                if left <= 0:
                    return
                time.sleep(min(left, 0.05))
                continue
            time.sleep(0.005)  # a unit waits to start, or is just starting or ending

    # -- the uploader: pack into a reused buffer, submit, report -------------------------

    def _upload(self) -> None:
        packers: dict[str, Packer] = {}
        store: Store | None = None
        backoff = Backoff(outage=self.outage)
        while True:
            item = self._outbox.get()
            if item is _END:
                break
            unit, fields, tensors = item
            phase = unit["phase"]
            if phase not in packers:
                packers[phase] = Packer(payload_manifest(self.cfg, self.g, self.d, phase))
            payload = packers[phase].pack(payload_tensors(self.cfg, tensors))
            while True:  # a reconnect resubmits it: the database answers a retry idempotently
                try:
                    store = store or Store(connect(self.dsn))
                    verdict = upload_result(store, fields, payload)
                    self._report(store, unit, verdict)
                    backoff.reset()
                    break
                except CONNECTION_ERRORS as e:
                    if store is not None:
                        store.close()
                    store = None
                    backoff.wait(e)
            self._hold(unit, False)
        if store is not None:
            store.close()

    def _report(self, store: Store, unit: dict, verdict: dict) -> None:
        self.on_event("submitted", unit["version"], unit["unit_id"])
        p = self.progress
        p.version = unit["version"]
        if verdict["accepted"]:
            p.units += 1
            if unit["phase"] != Phase.G:  # a G phase reuses its D phase's images
                p.images += len(unit["indices"])
                p.recent.add(len(unit["indices"]))
        # Refusals at submission and at aggregation alike are recorded with their reason.
        rejections = store.all(
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
            standing = store.one("my_standing", worker_id=self.worker_id)
            if standing:
                p.place, p.of_workers = standing["place"], standing["of_workers"]
        if self.on_unit:
            self.on_unit(p)

    def _leave(self) -> None:
        """Give back any claimed unit at once, so no unit waits for a lease to expire."""
        if self.worker_id is None:
            return
        store = None
        try:
            store = Store(connect(self.dsn, timeout=3))
            store.one("leave_run", worker_id=self.worker_id)
        except Exception as e:
            log.warning("could not leave the run cleanly (the lease will expire): %s", e)
        finally:
            if store is not None:
                store.close()


def _offer(q: queue.Queue, item: object) -> None:
    with contextlib.suppress(queue.Full):
        q.put_nowait(item)


def _drain(q: queue.Queue) -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            q.get_nowait()
