"""The worker: claim a unit, compute its gradients on the version it names, submit them.

Protocol (see docs/protocol.md). A worker's whole interface to the database is a handful
of functions, each one transaction (`ganpool_register`, `ganpool_heartbeat`,
`ganpool_claim`, `ganpool_submit`, `ganpool_release`, `ganpool_leave`; their text is in
schema.sql), plus reading the run's state and published weights: `WorkerStore`
(ganpool.store.worker) makes each call. This module is the pipeline: its threads and their
hand-offs. What is done to one unit is plain functions in ganpool.worker.unit.

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
     (ganpool.training.local_steps): `unit.compute_by_rule`. The constructor's
     `compute_unit` replaces it (a benchmark's stand-in for a GPU:
     ganpool.training.stand_in; a test's cheat).
   - the uploader (its own connection) packs each result into a reused safetensors buffer,
     in the run's transport dtype, and submits it (a parameter, or COPY when large) while
     the next unit computes. The database records the result and completes the unit in
     one transaction, or refuses with a reason (stale, lease lost, run ended) that the
     worker reports.
   A heartbeat thread (ganpool.worker.heartbeat) extends the lease of every unit the
   worker holds.
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

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path

import torch

from ganpool.data.database import DatabaseImages
from ganpool.data.datasets import check_fingerprint, open_dataset
from ganpool.events import OnEvent, ignore
from ganpool.models.dcgan import build_models
from ganpool.notices import Notice
from ganpool.protocol.vocabulary import RUN_OVER, Phase, RunStatus
from ganpool.runs import Run
from ganpool.serialization.tensors import manifest_of
from ganpool.store.notifications import Listener
from ganpool.store.reconnect import CONNECTION_ERRORS, Backoff, Outage, Pace
from ganpool.store.worker import ClaimedUnit, Submission, Verdict, WorkerStore, version_listener
from ganpool.training.state import weights_of
from ganpool.worker.heartbeat import Heartbeat
from ganpool.worker.progress import WorkerProgress
from ganpool.worker.timing import ClaimTiming
from ganpool.worker.unit import (
    BadImage,
    ComputeUnit,
    ResultPacker,
    compute_by_rule,
    download_weights,
    load_images,
    start_from,
    submission_of,
)

log = logging.getLogger(__name__)

# An idle worker's empty claims, whatever wakes it: 3 in a row at once after it last found
# work, then 10 a second.
IDLE_CLAIMS_PER_S = 10.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """What the run's worker list shows: the GPU's model, else the device type."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def open_images(dsn: str, run: Run, data_path: Path | None):
    """Where the worker reads a unit's images: the run's images in the database, fetched per
    unit, or the local copy, refused unless its fingerprint is the run's."""
    cfg = run.config
    if cfg.data_source == "database":
        return DatabaseImages(dsn, run.fingerprint, run.dataset_size, cfg.image_size, cfg.channels)
    dataset = open_dataset(cfg.dataset, cfg.image_size, cfg.channels, data_path)
    check_fingerprint(dataset, run.fingerprint, run.dataset_size)
    return dataset


@dataclass
class Prepared:
    """A claimed unit with everything its computation needs, ready before it is needed."""

    unit: ClaimedUnit
    weights: dict[str, torch.Tensor]
    real: torch.Tensor | None


_END = object()  # no more units: the run ended, or the worker is stopping


class Worker:
    # Claim the next unit shortly before the current one is computed (False: only when idle).
    claim_ahead = True
    # A worker waits between versions all the time (that is a step being formed): only a
    # wait longer than this, with no coordinator holding the run, is worth a line.
    NO_COORDINATOR_AFTER_S = 10.0

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
        self.compute_unit = compute_unit or compute_by_rule
        self.dataset = open_images(dsn, run, data_path)
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
        self._timing = ClaimTiming()
        self._weights: tuple[int, dict[str, torch.Tensor]] | None = None  # fetcher's, by base
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
        with closing(WorkerStore.open(self.dsn)) as store:
            self.worker_id = store.register(
                self.run.id, self.name, socket.gethostname(), device_label(self.device)
            )
        interval = max(0.2, self.cfg.lease_s / 3)
        heartbeat = Heartbeat(self.dsn, self.worker_id, interval, self._held_units, self.outage)
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

    def _hold(self, unit: ClaimedUnit, held: bool) -> None:
        with self._held_lock:
            if held:
                self._held[unit.unit_id] = unit.attempt
            else:
                self._held.pop(unit.unit_id, None)

    # -- the compute thread (the caller's) ------------------------------------------------

    def _compute_loop(self) -> None:
        loaded = -1  # the base version whose parameters the networks hold
        computed = 0
        while not self._stopping.is_set():
            try:
                item = self._ready.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is _END:
                return
            base = self.cfg.base_version(item.unit.version)
            reload = base != loaded or self.cfg.update_rule == "local"  # local steps move them
            start_from(self.g, self.d, item.weights, reload)
            loaded = base
            self._outbox.put(self._compute(item))
            computed += 1
            if self.max_units and computed >= self.max_units:
                return

    def _compute(self, item: Prepared) -> tuple[ClaimedUnit, Submission, dict[str, torch.Tensor]]:
        """One unit's result, with the fields its submission sends."""
        unit = item.unit
        t0 = time.perf_counter()
        self._timing.started()
        self.on_event("compute_start", unit.version, unit.unit_id)
        real = None if item.real is None else item.real.to(self.device, non_blocking=True)
        result = self.compute_unit(self.g, self.d, real, unit, self.cfg)
        seconds = time.perf_counter() - t0
        self._timing.finished(seconds)
        self.on_event("compute_end", unit.version, unit.unit_id)
        self.progress.compute_s += seconds
        return unit, submission_of(self.worker_id, unit, result, seconds), result.tensors

    # -- the fetcher: claim ahead, download on NOTIFY -----------------------------------

    def _fetch(self) -> None:
        backoff = Backoff(outage=self.outage)
        pace = Pace(IDLE_CLAIMS_PER_S)
        while not self._stopping.is_set():
            try:
                with (
                    closing(WorkerStore.open(self.dsn)) as store,
                    closing(version_listener(self.dsn)) as listener,
                ):
                    backoff.reset()
                    self._fetch_units(store, listener, pace)
            except CONNECTION_ERRORS as e:
                backoff.wait(e)  # then reconnect, re-LISTEN and catch up

    def _fetch_units(self, store: WorkerStore, listener: Listener, pace: Pace) -> None:
        """Claim, prepare and hand over units, each when its turn comes, until stopping."""
        while not self._stopping.is_set():
            self._timing.wait_for_turn(self._stopping, self.claim_ahead)
            if self._stopping.is_set():
                return
            t0 = time.monotonic()
            unit = self._claim(store, listener, pace)
            prepared = None if unit is None else self._prepare(store, unit)
            if prepared is not None:
                self._timing.prepared(time.monotonic() - t0)
                self._ready.put(prepared)

    def _claim(self, store: WorkerStore, listener: Listener, pace: Pace) -> ClaimedUnit | None:
        """The next unit; None when there is none (after waiting for a NOTIFY, `poll_s` at
        most), or when the run is over (the worker then stops)."""
        self.claims += 1
        unit = store.claim_unit(self.worker_id)
        if unit is not None:
            self._hold(unit, True)
            self._idle_since = None
            self.waiting.clear()
            pace.reset()  # found work: the next wake-up is not held back
            self.on_event("claimed", unit.version, unit.unit_id)
            return unit
        self.empty_claims += 1  # nothing pending, or the run is not running
        status = store.run_status(self.run.id)
        if status in RUN_OVER:
            log.info("the run has %s", status)
            self._stopping.set()
            _offer(self._ready, _END)
            return None
        self._say_why_waiting(store, status)
        if listener.wait(self.poll_s):
            # A notification is only a hint: a flood of them (anyone may send one) must not
            # turn into a flood of claims. What queued meanwhile is one wake-up.
            pace.wait()
            listener.drain()
        return None

    def _prepare(self, store: WorkerStore, unit: ClaimedUnit) -> Prepared | None:
        """The unit with its weights and images; None when it was given back instead."""
        base = self.cfg.base_version(unit.version)  # the weights it starts from
        if self._weights is None or self._weights[0] != base:
            tensors = download_weights(store, self.run.id, base, self.weights_manifest, self.pin)
            if tensors is None:  # pruned: the run has moved on past this unit
                log.info("version %d is no longer stored; giving the unit back", base)
                store.release_unit(self.worker_id, unit)
                self._hold(unit, False)
                return None
            self._weights = (base, tensors)
        real = None
        if unit.phase != Phase.G:  # a G-phase unit: the same noise, no images
            real = load_images(self.dataset, unit.indices)
            if isinstance(real, BadImage):
                self._give_back(store, unit, real)
                return None
            if self.pin:
                real = real.pin_memory()
        return Prepared(unit, self._weights[1], real)

    def _give_back(self, store: WorkerStore, unit: ClaimedUnit, bad: BadImage) -> None:
        """Report a unit this worker cannot compute (naming the image), which gives it back."""
        log.warning("cannot compute unit %d, reporting it: %s", unit.unit_id, bad.reason)
        store.report_failure(self.worker_id, unit, bad.index, bad.reason[:300])
        self._hold(unit, False)
        self.failed_units += 1
        self.progress.last_message = f"unit {unit.unit_id} given back: {bad.reason}"

    def _say_why_waiting(self, store: WorkerStore, status: RunStatus) -> None:
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
        elif now - self._idle_since >= self.NO_COORDINATOR_AFTER_S and not (
            store.coordinator_alive(self.run.id)
        ):
            self.waiting.set(
                "no coordinator", "no coordinator is running this run: waiting for it to "
                "come back (your work so far is kept)",
                ended="the coordinator is back: back to work",
            )  # fmt: skip

    # -- the uploader: pack into a reused buffer, submit, report -------------------------

    def _upload(self) -> None:
        packer = ResultPacker(self.cfg, self.g, self.d)
        backoff = Backoff(outage=self.outage)
        store: WorkerStore | None = None
        try:
            while (item := self._outbox.get()) is not _END:
                unit, submission, tensors = item
                store = self._submit(store, backoff, unit, submission, packer.pack(unit, tensors))
                self._hold(unit, False)
        finally:
            _close(store)

    def _submit(
        self,
        store: WorkerStore | None,
        backoff: Backoff,
        unit: ClaimedUnit,
        submission: Submission,
        payload: memoryview,
    ) -> WorkerStore:
        """Submit until the database answers, and report its answer; the connection it
        used. A reconnect resubmits: the database answers a retry idempotently."""
        while True:
            try:
                store = store or WorkerStore.open(self.dsn)
                verdict = store.submit_result(submission, payload)
                self._report(store, unit, verdict)
                backoff.reset()
                return store
            except CONNECTION_ERRORS as e:
                store = _close(store)
                backoff.wait(e)

    def _report(self, store: WorkerStore, unit: ClaimedUnit, verdict: Verdict) -> None:
        self.on_event("submitted", unit.version, unit.unit_id)
        p = self.progress
        p.count(unit, verdict)
        rejections = store.rejections_after(self.worker_id, self._seen_rejection)
        p.note_rejections(rejections)
        if rejections:
            self._seen_rejection = rejections[-1].id
        # The leaderboard moves only when a version is published: ask once per version, not
        # once per unit (it aggregates the whole run's contributions).
        if self._standing_version != p.version:
            self._standing_version = p.version
            p.note_standing(store.standing(self.worker_id))
        if self.on_unit:
            self.on_unit(p)

    def _leave(self) -> None:
        """Give back any claimed unit at once, so no unit waits for a lease to expire."""
        if self.worker_id is None:
            return
        try:
            with closing(WorkerStore.open(self.dsn, timeout=3)) as store:
                store.leave(self.worker_id)
        except Exception as e:
            log.warning("could not leave the run cleanly (the lease will expire): %s", e)


def _close(store: WorkerStore | None) -> None:
    """Close a connection that may be gone already; None, for `store = _close(store)`."""
    if store is not None:
        store.close()


def _offer(q: queue.Queue, item: object) -> None:
    with suppress(queue.Full):
        q.put_nowait(item)


def _drain(q: queue.Queue) -> None:
    with suppress(queue.Empty):
        while True:
            q.get_nowait()
