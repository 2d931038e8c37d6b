"""The round: the current version's results collected as they land (arrivals.py), then,
inside the tick's transaction, screened, combined, stepped and published as the next version.

`Round` holds the model and optimiser in memory (`state`) at `version`, the database's
newest version once each tick commits. `play` is one tick's work, under the run's row
lock."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch

from ganpool.aggregation.robust import aggregate
from ganpool.coordinator import issuing
from ganpool.coordinator.arrivals import Arrivals
from ganpool.coordinator.checkpoints import Checkpoints
from ganpool.coordinator.outputs import Outputs
from ganpool.coordinator.screening import Screening
from ganpool.protocol.vocabulary import Phase, RejectionReason, RunStatus, step_to_version
from ganpool.runs import Run
from ganpool.serialization.tensors import Packer, manifest_of
from ganpool.store.coordinator import CoordinatorStore, RunRow, Waiting, WaitingResult
from ganpool.training.state import TrainingState

log = logging.getLogger(__name__)


@dataclass
class StepReport:
    """What one step did, for `on_step` (the CLI prints it)."""

    version: int
    images: int
    units: int
    workers: int
    rejected: int
    g_loss: float | None  # None where the phase did not compute it
    d_loss: float | None
    d_real: float | None
    d_fake: float | None
    epochs: float
    seconds: float


class Round:
    def __init__(
        self,
        run: Run,
        state: TrainingState,
        screening: Screening,
        checkpoints: Checkpoints,
        outputs: Outputs,
        on_step: Callable[[StepReport], None] | None,
    ):
        self.run, self.cfg = run, run.config
        self.state, self.version = state, -1
        self.screening, self.checkpoints, self.outputs = screening, checkpoints, outputs
        self.on_step = on_step
        self.arrivals = Arrivals(self.cfg, screening)  # results read as they land
        self._packer: Packer | None = None  # reused buffers for the weights
        self.dirty = False  # the in-memory state moved inside a transaction not yet committed
        # NOTIFYs to send after the commit
        self.announcements: list[Callable[[CoordinatorStore], None]] = []

    def reset(self, state: TrainingState, version: int) -> None:
        """Carry on from `state` at `version` (reloaded from the database)."""
        self.state, self.version = state, version
        self.arrivals.forget()

    def collect(self, store: CoordinatorStore) -> None:
        """Read and check the current version's results that landed (between ticks)."""
        self.arrivals.collect(store, self.version, self.state)

    # -- one tick, inside its transaction --------------------------------------------------

    def play(self, store: CoordinatorStore, run: RunRow) -> bool:
        """The tick of a running run; True when it is over."""
        expired = store.expire_leases()
        if expired:
            log.info("reissuing %d unit(s) whose lease expired", expired)
        issuing.quarantine(store, self.cfg)
        if self._limit_reached(store, run):
            self._finish(store)
            return True
        v = run.current_version
        patience = issuing.patience(store, self.cfg)
        issuing.copy_units(store, self.cfg, v, patience)
        self._cancel_stale(store, v)  # catches up on rows skipped while a student held them
        store.give_back_unapplied(v + 1)
        waiting = store.count_waiting(v, patience)
        if self.cfg.phase_of(v) == Phase.G and waiting.open == 0:
            # Every G unit was refused by every student that could take it: step without
            # G rather than wait for good (the alternating rule then carries on with D).
            log.warning("version %d: every G-phase unit was refused; skipping G's step", v)
            self._step(store, v, needed=0)
            run = store.lock_run()
        elif (needed := self._needed(run, waiting)) is not None:
            self._step(store, v, needed)
            run = store.lock_run()
            if self._limit_reached(store, run):
                self._finish(store)
                return True
        # Top up the current version's units: after a step, or after rejections gave
        # images back.
        issuing.issue_units(store, self.run, run.current_version)
        issuing.issue_ahead(store, self.run, run.current_version)
        return False

    def _needed(self, run: RunRow, waiting: Waiting) -> int | None:
        """How many units' results the step needs, if it is time to step: when N results are
        in (a G phase has only as many units as its D phase applied, less those refused
        everywhere) and no spot check is still being computed (unclaimed twins, and twins
        held past the backup threshold, don't wait); or, with at least one, once the step
        deadline has passed."""
        deadline = self.cfg.step_deadline_s
        past_deadline = deadline > 0 and (run.version_age_s or 0) >= deadline
        needed = self.cfg.results_per_step
        if self.cfg.phase_of(run.current_version) == Phase.G:
            needed = min(needed, waiting.open)
        enough = waiting.n >= needed and waiting.twins_computing == 0
        if waiting.n > 0 and (enough or past_deadline):
            return 1 if past_deadline else needed
        return None

    def _limit_reached(self, store: CoordinatorStore, run: RunRow) -> bool:
        c = self.cfg
        if c.max_steps and run.current_version >= step_to_version(c.max_steps, c.versions_per_step):
            return True
        if c.max_seconds and (run.running_s or 0.0) >= c.max_seconds:
            return True
        if c.max_epochs:
            return store.epochs_completed() >= c.max_epochs - 1e-9
        return False

    def _finish(self, store: CoordinatorStore) -> None:
        self._cancel_stale(store, 2**31 - 1, RejectionReason.RUN_ENDED)
        if self.version % self.outputs.sample_every:
            self.outputs.store_sample(store, self.state.g, self.version)  # the final grid
        store.set_run_status(RunStatus.FINISHED)
        self.announcements.append(CoordinatorStore.notify_run_status)
        log.info("run %s finished at version %d", self.run.name, self.version)

    def _cancel_stale(self, store: CoordinatorStore, new: int, reason: str | None = None) -> None:
        """Units of older versions that did not make their step are cancelled (their images
        go back with give_back_unapplied); results that arrived for them are rejected: a
        result is applied only to the version it was computed on."""
        store.cancel_stale_units(new)
        for r in store.stale_results(new):
            why = reason or (
                f"{RejectionReason.STALE}: computed on version {r.version} but the run "
                f"moved on to version {new}; its images went back to the epoch"
            )
            self.screening.reject(store, r.id, r.worker_id, why)

    # -- the step --------------------------------------------------------------------------

    def _step(self, store: CoordinatorStore, v: int, needed: int) -> None:
        """Screen and apply the version's results, if `needed` units' results are there
        (0: a G phase refused everywhere, republished as it is)."""
        t0 = time.perf_counter()
        rows = store.waiting_results(v)
        # Rows a student holds locked were skipped: never step on fewer results than the
        # count promised (a robust rule counts on its majority). The next tick tries again.
        got = len({r.family for r in rows if r.twin_of is None})
        if got < needed:
            log.info("version %d: %d of %d results free to lock; stepping later", v, got, needed)
            return
        prior = self.arrivals.prior(self.version, self.state)
        accepted, rejected = self.screening.screen(store, rows, self.arrivals.results, prior)
        if not accepted and needed:
            return  # every result was refused: the units are reissued to other students
        self._apply(accepted)
        report = self._publish_step(store, v, [r for r, _ in accepted], len(rejected))
        report.seconds = time.perf_counter() - t0
        if self.on_step:
            self.on_step(report)

    def _apply(self, accepted: list[tuple[WaitingResult, dict[str, torch.Tensor]]]) -> None:
        """Take the optimiser step on the accepted results' combination (none: the version is
        republished as it is)."""
        if accepted:
            self.dirty = True
            # Summed as they arrived (under the mean rule): already done.
            mean = self.arrivals.mean_of({r.id for r, _ in accepted})
            if mean is None:
                c = self.cfg
                pairs = [(tensors, float(r.samples)) for r, tensors in accepted]
                mean = aggregate(pairs, c.aggregation, c.trim_fraction, c.clip_factor)
            self.state.apply(mean)
        self.arrivals.forget()

    def _publish_step(
        self, store: CoordinatorStore, v: int, accepted: list[WaitingResult], rejected: int
    ) -> StepReport:
        """Write version v + 1: its weights, what each result contributed, its metrics; then
        cancel what did not make it."""
        new = v + 1
        images = sum(r.samples for r in accepted)
        # A G phase reuses its D phase's batch: its images were counted then.
        new_images = 0 if self.cfg.phase_of(v) == Phase.G else images
        if new_images:
            for r in accepted:
                store.count_epoch_images(r.epoch, r.samples)
        epochs = store.epochs_completed()
        self.publish(store, new, images=new_images, epochs=epochs)
        for r in accepted:  # its payload stays until a checkpoint has absorbed it
            store.apply_result(new, r.id, weight=r.samples / max(images, 1))
        report = StepReport(
            version=new,
            images=images,
            units=len(accepted),
            workers=len({r.worker_id for r in accepted}),
            rejected=rejected,
            epochs=epochs,
            seconds=0.0,
            **{k: weighted((getattr(r, k), r.samples) for r in accepted) for k in LOSSES},
        )
        store.insert_step_metrics(
            new,
            **{k: getattr(report, k) for k in (*LOSSES, "workers", "units", "images")},
            epoch=epochs,
        )
        self._cancel_stale(store, new)
        store.give_back_unapplied(new)
        self.announcements.append(partial(CoordinatorStore.notify_version, version=new))
        self.dirty = True
        self.version = new
        return report

    def publish(self, store: CoordinatorStore, version: int, images: int, epochs: float) -> None:
        """Publish the in-memory weights as `version`."""
        c = self.cfg
        weights = self.state.weights()
        if self._packer is None:
            self._packer = Packer(manifest_of(weights))
        # The checkpoint's weights stay: a restart replays from them.
        keep_from = min(version - c.keep_versions + 1, max(self.checkpoints.saved, 0))
        store.publish_version(
            version,
            self._packer.pack(weights),
            images=images,
            epochs=epochs,
            milestone=bool(c.milestone_every and version % c.milestone_every == 0),
            keep_from=keep_from,
        )


LOSSES = ("g_loss", "d_loss", "d_real", "d_fake")


def weighted(values: Iterable[tuple[float | None, int]]) -> float | None:
    """Sample-weighted mean of a reported metric (value, samples), over the results that
    computed it."""
    pairs = [(v, w) for v, w in values if v is not None and math.isfinite(v)]
    if not pairs:
        return None
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs)
