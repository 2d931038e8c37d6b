"""The coordinator: issue work units, collect results, step both networks, publish versions.

Protocol (see docs/protocol.md). Rows each party writes, and in which transaction:

* Start: take ownership of the run (one coordinator per run): a row of the instructor-only
  `owners` table names this session, which no student can lock or forge. If no version
  exists, publish version 0 (seeded init) and issue its units, in one transaction.
  Otherwise reload the newest weights and Adam state from the database and carry on.
* Workers (see ganpool.worker) claim a unit (`FOR UPDATE SKIP LOCKED`, lease on the
  server's clock), heartbeat, and submit: result row + payload + unit 'submitted' + NOTIFY
  `ganpool_results`, in one transaction.
* Between ticks, results of the current version are read and checked as they land, and
  (under the mean rule) folded into a running sum, so a step only waits for the last one.
* Each tick, in ONE transaction holding the run's row lock, never waiting on a student:
  rows a student may hold locked (a stalled upload, an open transaction) are skipped
  (`SKIP LOCKED`) and seen on a later tick, and `lock_timeout` rolls back a tick that would
  wait anyway (it is simply tried again):
    1. put units whose lease expired back to 'pending' (they are reissued as they are); set
       aside units that several students could not compute (poison units); give a unit held
       past the backup threshold a copy for an idle worker of another student, reissue a
       unit whose every result was refused, and return the images of units out of play;
    2. when N results for the current version v are in (or the step deadline has passed
       with at least one), screen them (ganpool.coordinator.screening: payload, norm and
       spot checks; a refusal is recorded with its reason and its images go back to the
       epoch), combine the rest (the run's aggregation rule; by default the mean weighted by
       their units' sample counts), take the Adam step (for G and D under the simultaneous
       rule; for D, then G, in the alternating rule's two phases), and write version v+1:
       weights (by COPY), contributions (UNIQUE per unit: applied at most once), step
       metrics, epoch counts; cancel units of v that did not make it (their images go back
       to the epoch; their late results are rejected as stale); prune old weights;
    3. issue the units of the new version from the epoch permutation (under the local rule
       with outer_delay 1, also the next round's, computed on the new version while this
       one's results come in). After the commit, NOTIFY `ganpool_version` (a hint: a full
       notification queue cannot fail a step).
  Under the local rule (docs/protocol.md) a unit is local_steps batches, a result is a
  weight change, and the step is the outer SGD step on their weighted mean.
  A crash anywhere before commit leaves the database at version v with nothing applied;
  in-memory state is then reloaded from the database, so nothing is applied twice.
* After the commit, off the workers' critical path: a sample grid every K steps, and at most
  every `checkpoint_s` a checkpoint: the Adam state of the current version, in one
  transaction with the deletion of the payloads it has absorbed. Applied payloads stay until
  then, so a restart loads the checkpoint and replays the versions after it from the very
  results that formed them (and checks it reproduces their published weights).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import torch

from ganpool.aggregation.robust import aggregate
from ganpool.coordinator.screening import Arrived, Screening
from ganpool.coordinator.sweeper import StalledSessionSweeper
from ganpool.data.datasets import check_fingerprint, open_dataset
from ganpool.errors import GanpoolError, OwnershipRefused, PayloadError
from ganpool.evaluation.grid import sample_grid
from ganpool.events import OnEvent, ignore
from ganpool.notices import Notice
from ganpool.protocol.schedule import EpochState, plan_units, sample_seed, spot_check_chosen
from ganpool.protocol.vocabulary import (
    RUN_OVER,
    Phase,
    RejectionReason,
    RunStatus,
    step_to_version,
    version_to_step,
)
from ganpool.runs import Run
from ganpool.serialization.tensors import Packer, manifest_of, unpack
from ganpool.store import Store, connect
from ganpool.store.notifications import Listener
from ganpool.store.reconnect import CONNECTION_ERRORS, Backoff, Pace
from ganpool.training.gradients import float_buffers
from ganpool.training.state import TrainingState, WeightedMean

log = logging.getLogger(__name__)

VACUUM_EVERY = 10  # steps between vacuums of the blob tables
MAX_COPIES = 4  # backup or reissued copies of one unit, at most
BACKUP_MIN_S = 1.0  # never copy a unit held for less than this
TICKS_PER_S = 100.0  # a flood of notifications (anyone may NOTIFY) cannot spin the loop faster


@dataclass
class StepReport:
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


class Coordinator:
    def __init__(
        self,
        dsn: str,
        run: Run,
        out_dir: Path | None = None,
        poll_s: float = 1.0,
        on_step: Callable[[StepReport], None] | None = None,
        data_path: Path | None = None,
        checkpoint_s: float = 10.0,
        on_event: OnEvent = ignore,
    ):
        self.dsn, self.run, self.cfg = dsn, run, run.config
        self.out_dir = Path(out_dir) if out_dir else None
        self.poll_s = poll_s
        self.on_step = on_step
        self.store = Store(connect(dsn))
        self.state = TrainingState(self.cfg)
        self.screening = Screening(run.id, self.cfg, self.state.g, self.state.d)
        gen = torch.Generator().manual_seed(sample_seed(self.cfg.seed))
        self.sample_noise = torch.randn(64, self.cfg.nz, generator=gen)
        self.version = -1
        self.data_path = data_path  # only for the quality metric (the coordinator trains blind)
        self._quality = None  # (Inception features, the real images' features), made on first use
        self.checkpoint_s = checkpoint_s  # at most this long between checkpoints
        self._checkpointed = -1  # the version whose Adam state is saved
        self._checkpoint_at = time.monotonic()
        self._packers: dict[str, Packer] = {}  # reused buffers for weights and Adam state
        # The current version's results, read and checked as they land (tensors, or the
        # reason they are invalid), and the running weighted sum of the valid ones.
        self._arrived: dict[int, Arrived] = {}
        self._arrived_version = -1
        self._sum = WeightedMean()
        self._summed: set[int] = set()
        self._summed_families: set[int] = set()
        self._prior: tuple[int, dict[str, torch.Tensor]] | None = None  # the version's buffers
        self._dirty = False  # the in-memory state moved inside a transaction not yet committed
        self._announcements: list[tuple[str, dict]] = []  # NOTIFYs to send after the commit
        self.on_event = on_event  # woke / collected / published (version), for benchmarks
        self._owner_pid: int | None = None  # the session that holds ownership of the run
        self.waiting = Notice(log)  # one line when a pause starts, one when it ends
        self._acquire_ownership()

    # -- start and resume ------------------------------------------------------------

    def _acquire_ownership(self) -> None:
        """Become the run's only coordinator, or refuse. A session of ours from before a
        network cut that the server still keeps is ended and replaced."""
        with self.store.tx():
            got = self.store.one(
                "take_ownership", what=f"coordinator:{self.run.id}", previous_pid=self._owner_pid
            )
        if not got["taken"]:
            self.store.close()
            log.debug("run %s is owned by server process %s", self.run.name, got["holder_pid"])
            raise OwnershipRefused(
                f"another coordinator is already running run {self.run.name!r}; "
                "stop it first (only one coordinator per run)"
            )
        self._owner_pid = got["holder_pid"]

    def start(self) -> None:
        """Publish version 0, or reload the newest version and Adam state to resume."""
        with self.store.tx():
            row = self.store.one("lock_run", run_id=self.run.id)
            if row["status"] in RUN_OVER and row["current_version"] < 0:
                return  # ended before anything was published
            if row["status"] not in RUN_OVER:
                self.store.execute("start_run", run_id=self.run.id)
            if row["current_version"] < 0:
                self._publish(0, images=0, epochs=0.0)
                self._save_checkpoint(0)
                self._issue_units(0)
                self._issue_ahead(0)
                self._announcements.append(("notify_version", {"version": 0}))
                self.version = 0
                log.info("run %s: published version 0", self.run.name)
        self._announce()
        if self.version == 0:
            self.on_event("published", 0)
            self._store_sample(0)
            return
        self._reload()
        log.info("run %s: resumed at version %d", self.run.name, self.version)

    def _reload(self) -> None:
        """Make the in-memory model and optimiser exactly the database's newest version: load
        the checkpoint, then replay the versions published after it from their results."""
        self.state = TrainingState(self.cfg)
        self._forget_arrivals()
        saved = self.store.one_binary("coordinator_state", run_id=self.run.id)
        if saved is None:
            raise GanpoolError(f"run {self.run.name!r} has no checkpoint to resume from")
        checkpoint = saved["version"]
        self.state.load_weights(self._stored_weights(checkpoint))
        optimizer = unpack(saved["optimizer"], manifest_of(self.state.optimizer_tensors()))
        self.state.load_optimizer(optimizer)
        self.version = self._checkpointed = checkpoint
        current = self.store.one("run_state", run_id=self.run.id)["current_version"]
        for v in range(checkpoint + 1, current + 1):
            self._replay(v)
        self.screening.reload_history(self.store)

    def _stored_weights(self, version: int) -> dict[str, torch.Tensor]:
        blob = self.store.blob("weights_at", "weights", run_id=self.run.id, version=version)
        if blob is None:
            raise GanpoolError(f"run {self.run.name!r}: the weights of version {version} are gone")
        return unpack(blob, manifest_of(self.state.weights()))

    def _replay(self, v: int) -> None:
        """Redo the step that produced version v from the results it applied."""
        results = []
        for r in self.store.all("replay_contributions", run_id=self.run.id, version=v):
            blob = self.store.copy_out_blob("copy_result_payload", result_id=r["id"])
            if blob is None:
                raise GanpoolError(f"cannot replay version {v}: result {r['id']} is gone")
            results.append((self.screening.check(blob, r["phase"]), float(r["samples"])))
        c = self.cfg
        if results:  # none: a G phase refused everywhere, republished as it was
            self.state.apply(aggregate(results, c.aggregation, c.trim_fraction, c.clip_factor))
        published = self._stored_weights(v)
        for k, t in self.state.weights().items():
            if not torch.allclose(t.double(), published[k].double(), rtol=1e-4, atol=1e-7):
                raise GanpoolError(f"replaying version {v} does not reproduce its weights ({k})")
        self.state.load_weights(published)  # what the workers were sent is authoritative
        self.version = v
        log.info("replayed version %d from %d result(s)", v, len(results))

    # -- the loop ------------------------------------------------------------------------

    def serve(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Tick until the run ends; wake on NOTIFY from submissions, poll as a fallback.
        A lost database is retried with backoff; on reconnecting, ownership is re-taken and
        the state reloaded from the newest committed version."""
        backoff = Backoff()
        sweeper = StalledSessionSweeper(self.dsn)
        sweeper.start()
        try:
            self.start()
            while True:
                listener = None
                try:
                    if self.store.closed:
                        # After a restart of the database, or a network cut: ownership is
                        # taken again (retried, with backoff, while a session of ours from
                        # before the cut lingers on the server).
                        self.store = Store(connect(self.dsn))
                        self._acquire_ownership()
                        self._reload()
                    listener = Listener(self.dsn, "listen_results")
                    backoff.reset()
                    pace = Pace(TICKS_PER_S)
                    while not should_stop():
                        self.on_event("woke", self.version)
                        self._collect()
                        self.on_event("collected", self.version)
                        if self.tick():
                            return
                        if listener.wait(self.poll_s):
                            # Notifications are hints, and anyone may send them: however
                            # many arrive, TICKS_PER_S passes a second at most, and a
                            # backlog is one wake-up.
                            pace.wait()
                            listener.drain()
                    return
                except (*CONNECTION_ERRORS, OwnershipRefused) as e:
                    self.store.close()
                    backoff.wait(e)
                finally:
                    if listener is not None:
                        listener.close()
        finally:
            sweeper.stop()
            sweeper.join(5)
            self.close()

    def _measure_quality(self) -> None:
        """KID/FID of the current generator against the run's images, stored per version."""
        from ganpool.evaluation.quality import InceptionFeatures, generator_quality

        try:
            if self._quality is None:
                dataset = open_dataset(
                    self.cfg.dataset, self.cfg.image_size, self.cfg.channels, self.data_path
                )
                check_fingerprint(dataset, self.run.fingerprint, self.run.dataset_size)
                n = min(len(dataset), self.cfg.quality_samples)
                features = InceptionFeatures()
                picks = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
                self._quality = (features, features(dataset.batch(picks[:n].tolist())))
        except GanpoolError as e:
            log.warning("quality_every is set but the metric cannot run: %s", e)
            self.cfg = self.cfg.replace(quality_every=0)
            return
        features, real = self._quality
        q = generator_quality(
            self.state.g,
            None,
            self.cfg.nz,
            self.cfg.quality_samples,
            self.cfg.seed,
            features=features,
            real_features=real,
        )
        self.store.execute(
            "insert_quality", run_id=self.run.id, version=self.version, **q.as_dict()
        )
        log.info("version %d: KID %.4f ± %.4f, FID %.1f", self.version, q.kid, q.kid_std, q.fid)

    def close(self) -> None:
        """Close the connection, which also gives up ownership of the run."""
        self.store.close()

    def tick(self) -> bool:
        """One pass of the protocol; returns True when the run is over."""
        before = self.version
        self._dirty = False
        try:
            with self.store.tx():
                self.store.execute("set_tick_lock_timeout")
                over = self._tick()
        except psycopg.errors.LockNotAvailable as e:
            # A row some student holds locked: never wait on it. Nothing was committed; the
            # next tick tries again (by then the row is usually free, or skipped).
            log.warning("tick gave way to a lock held elsewhere (%s); retrying", e)
            self._announcements.clear()
            if self._dirty:
                self._reload()
            return False
        except Exception:
            # The transaction rolled back: drop any in-memory step that did not commit.
            # (With the connection gone, serve() reloads after reconnecting.)
            self._announcements.clear()
            if not self.store.broken and not self.store.closed:
                self._reload()
            raise
        self._announce()
        # Committed: the workers are already on the new version. The rest can wait a little.
        c = self.cfg
        if self.version != before:
            self.on_event("published", self.version)
            if self.version % step_to_version(c.sample_every, c.versions_per_step) == 0:
                self._store_sample(self.version)
        # Only right after a publication (or at the end), when the workers have just started
        # on the new version: never while the last result of a step may be landing.
        due = self.version != before and time.monotonic() - self._checkpoint_at >= self.checkpoint_s
        if self.version != self._checkpointed and (over or due):
            with self.store.tx():
                self._save_checkpoint(self.version)
        every = step_to_version(c.quality_every, c.versions_per_step)
        if every and self.version // every != before // every:
            self._measure_quality()  # slow (Inception on the CPU): after the step's commit
        if self.version // VACUUM_EVERY != before // VACUUM_EVERY:
            # Deleted payloads and pruned weights leave dead blobs behind; vacuuming them
            # (outside the step's transaction) lets new blobs reuse that space.
            self.store.execute("vacuum_blobs")
        return over

    def _tick(self) -> bool:
        run = self.store.one("lock_run", run_id=self.run.id)
        if run["status"] in RUN_OVER:
            return True
        if run["status"] != RunStatus.RUNNING:
            self.waiting.set(
                run["status"], f"the run is {run['status']}: waiting for `ganpool run resume`",
                ended="the run is running again",
            )  # fmt: skip
            return False
        self.waiting.clear()
        expired = self.store.all("expire_leases", run_id=self.run.id)
        if expired:
            log.info("reissuing %d unit(s) whose lease expired", len(expired))
        self._quarantine()
        if self._limit_reached(run):
            self._finish()
            return True
        v = run["current_version"]
        patience = self._patience()
        self._copy_units(v, patience)
        self._cancel_stale(v)  # catches up on rows skipped while a student held them locked
        self.store.execute("give_back_unapplied", run_id=self.run.id, version=v + 1)
        waiting = self.store.one(
            "count_waiting_results", run_id=self.run.id, version=v, patience_s=patience
        )
        deadline = self.cfg.step_deadline_s
        past_deadline = deadline > 0 and (run["version_age_s"] or 0) >= deadline
        # N results in (a G phase has only as many units as its D phase applied, less those
        # refused everywhere), and no spot check still being computed (unclaimed twins, and
        # twins held past the backup threshold, don't wait).
        needed = self.cfg.results_per_step
        phase = self.cfg.phase_of(v)
        if phase == Phase.G:
            needed = min(needed, waiting["open"])
        enough = waiting["n"] >= needed and waiting["twins_computing"] == 0
        if phase == Phase.G and waiting["open"] == 0:
            # Every G unit was refused by every student that could take it: step without
            # G rather than wait for good (the alternating rule then carries on with D).
            log.warning("version %d: every G-phase unit was refused; skipping G's step", v)
            self._step(v, needed=0)
            run = self.store.one("lock_run", run_id=self.run.id)
        elif waiting["n"] > 0 and (enough or past_deadline):
            self._step(v, needed=1 if past_deadline else needed)
            run = self.store.one("lock_run", run_id=self.run.id)
            if self._limit_reached(run):
                self._finish()
                return True
        # Top up the current version's units: after a step, or after rejections gave
        # images back.
        self._issue_units(run["current_version"])
        self._issue_ahead(run["current_version"])
        return False

    def _limit_reached(self, run: dict) -> bool:
        c = self.cfg
        if c.max_steps and run["current_version"] >= step_to_version(
            c.max_steps, c.versions_per_step
        ):
            return True
        if c.max_seconds and float(run["running_s"] or 0) >= c.max_seconds:
            return True
        if c.max_epochs:
            epochs = self.store.one("epochs_completed", run_id=self.run.id)["epochs"]
            return epochs >= c.max_epochs - 1e-9
        return False

    def _finish(self) -> None:
        self._cancel_stale(2**31 - 1, RejectionReason.RUN_ENDED)
        if self.version % step_to_version(self.cfg.sample_every, self.cfg.versions_per_step):
            self._store_sample(self.version)  # the final version's grid, always
        self.store.execute("set_run_status", run_id=self.run.id, status=RunStatus.FINISHED)
        self._announcements.append(("notify_run_status", {}))
        log.info("run %s finished at version %d", self.run.name, self.version)

    # -- one step ------------------------------------------------------------------------

    def _collect(self) -> None:
        """Read and check the current version's results as they land, outside any step's
        transaction; under the mean rule, fold each valid one into the running sum at once.
        A step then only waits for its last result."""
        if self._arrived_version != self.version:
            self._forget_arrivals()
            self._arrived_version = self.version
        prior = self._prior_buffers()
        for r in self.store.all("arrived_results", run_id=self.run.id, version=self.version):
            if r["id"] in self._arrived:
                continue
            known = self._arrived[r["id"]] = self.screening.read(self.store, r, prior)
            if isinstance(known, PayloadError):
                continue  # the step records the refusal
            tensors, _ = known
            # A unit's backup copies: only the first valid result can be applied.
            family = r["family"]
            if (
                self.cfg.aggregation == "mean"
                and r["twin_of"] is None
                and family not in self._summed_families
            ):
                self._sum.add(tensors, float(r["samples"]))
                self._summed.add(r["id"])
                self._summed_families.add(family)

    def _prior_buffers(self) -> dict[str, torch.Tensor]:
        """The current version's BatchNorm statistics: every result starts from them."""
        if self._prior is None or self._prior[0] != self.version:
            buffers = {f"buf.G.{k}": v.clone() for k, v in float_buffers(self.state.g).items()}
            buffers |= {f"buf.D.{k}": v.clone() for k, v in float_buffers(self.state.d).items()}
            self._prior = (self.version, buffers)
        return self._prior[1]

    def _forget_arrivals(self) -> None:
        self._arrived.clear()
        self._sum.reset()
        self._summed.clear()
        self._summed_families.clear()

    def _announce(self) -> None:
        """Send the NOTIFYs of what just committed. Never inside the step's transaction: a
        notification is a hint (workers poll too), and a notification queue held full by a
        listener idle in a transaction would otherwise make the commit itself fail."""
        pending, self._announcements = self._announcements, []
        for query, params in pending:
            try:
                self.store.execute(query, run_id=self.run.id, **params)
            except psycopg.Error as e:
                log.warning("could not notify the workers (%s); they poll instead", e)

    # -- stragglers, refusals and poison units -----------------------------------------

    def _patience(self) -> float:
        """How long a unit may be held before it gets a backup copy: `backup_after` times
        the run's recent time per unit (claim to submission), while there is no history a
        quarter of the lease, and at least BACKUP_MIN_S."""
        c = self.cfg
        if not c.backup_after:
            return c.lease_s
        recent = self.store.one("recent_unit_seconds", run_id=self.run.id)
        if recent["n"] < 3 or recent["seconds"] is None:
            return max(BACKUP_MIN_S, c.lease_s / 4)
        return min(c.lease_s, max(BACKUP_MIN_S, c.backup_after * float(recent["seconds"])))

    def _copy_units(self, v: int, patience: float) -> None:
        """Backup copies of the version's stragglers, reissues of units refused everywhere,
        and dropping copies that no one could claim."""
        run_id = self.run.id
        self.store.execute("abandon_unclaimed_copies", run_id=run_id, version=v, after_s=patience)
        reissued = self.store.all(
            "reissue_refused", run_id=run_id, version=v, max_copies=MAX_COPIES
        )
        if reissued:
            log.info("version %d: reissuing %d refused unit(s) to other students", v, len(reissued))
        if self.cfg.backup_after:
            copied = self.store.all(
                "issue_backups", run_id=run_id, version=v, after_s=patience, max_copies=MAX_COPIES
            )
            if copied:
                log.info(
                    "version %d: %d unit(s) held over %.1f s get a backup copy",
                    v,
                    len(copied),
                    patience,
                )

    def _quarantine(self) -> None:
        """Set aside units that `quarantine_after` students could not compute; their other
        images go back to the epoch, the ones reported bad count as done."""
        for u in self.store.all(
            "quarantine_units", run_id=self.run.id, after=self.cfg.quarantine_after
        ):
            log.warning(
                "quarantined unit %d: workers could not compute it (images %s)",
                u["id"],
                u["bad"] or "unknown",
            )
            if u["images_returned"] or u["twin_of"] is not None or u["phase"] == Phase.G:
                continue  # no images of its own to account for
            bad = set(u["bad"]) or set(u["indices"])  # no image named: the whole unit
            good = [i for i in u["indices"] if i not in bad]
            if good:
                self.store.execute("give_back", run_id=self.run.id, epoch=u["epoch"], indices=good)
            self.store.execute(
                "quarantine_images",
                run_id=self.run.id,
                epoch=u["epoch"],
                images=len(u["indices"]) - len(good),
            )
            self.store.execute("mark_images_returned", unit_id=u["id"])

    def _save_checkpoint(self, version: int) -> None:
        """Save the Adam state of `version` and drop the payloads it has absorbed."""
        self.store.execute("delete_coordinator_state", run_id=self.run.id)
        self.store.copy_in(
            "copy_coordinator_state",
            types=["int8", "int4", "bytea"],
            row=(self.run.id, version, self._pack("optimizer", self.state.optimizer_tensors())),
        )
        self.store.execute("delete_checkpointed_payloads", run_id=self.run.id, version=version)
        keep_from = version - self.cfg.keep_versions + 1  # replays now start from here
        self.store.execute("prune_weights", run_id=self.run.id, keep_from=keep_from)
        self._checkpointed = version
        self._checkpoint_at = time.monotonic()

    def _pack(self, kind: str, tensors: dict[str, torch.Tensor]) -> memoryview:
        if kind not in self._packers:
            self._packers[kind] = Packer(manifest_of(tensors))
        return self._packers[kind].pack(tensors)

    def _step(self, v: int, needed: int) -> None:
        """Screen and apply the version's results, if `needed` units' results are there
        (0: a G phase refused everywhere, republished as it is)."""
        t0 = time.perf_counter()
        rows = self.store.all("waiting_results", run_id=self.run.id, version=v)
        # Rows a student holds locked were skipped: never step on fewer results than the
        # count promised (a robust rule counts on its majority). The next tick tries again.
        got = len({r["family"] for r in rows if r["twin_of"] is None})
        if got < needed:
            log.info("version %d: %d of %d results free to lock; stepping later", v, got, needed)
            return
        accepted, rejected = self.screening.screen(
            self.store, rows, self._arrived, self._prior_buffers()
        )
        if not accepted and needed:
            return  # every result was refused: the units are reissued to other students
        if not accepted:
            pass  # nothing to apply: the version is republished as it is
        elif self.cfg.aggregation == "mean" and {r["id"] for r, _ in accepted} == self._summed:
            self._dirty = True
            self.state.apply(self._sum.mean())  # summed as they arrived: already done
        else:
            self._dirty = True
            mean = aggregate(
                [(tensors, float(r["samples"])) for r, tensors in accepted],
                self.cfg.aggregation,
                self.cfg.trim_fraction,
                self.cfg.clip_factor,
            )
            self.state.apply(mean)
        self._forget_arrivals()
        accepted = [r for r, _ in accepted]
        phase = self.cfg.phase_of(v)

        new = v + 1
        images = sum(r["samples"] for r in accepted)
        images_weight = max(images, 1)
        # A G phase reuses its D phase's batch: its images were counted then.
        new_images = 0 if phase == Phase.G else images
        if new_images:
            for r in accepted:
                self.store.execute(
                    "count_epoch_images",
                    run_id=self.run.id,
                    epoch=r["epoch"],
                    images=r["samples"],
                )
        epochs = self.store.one("epochs_completed", run_id=self.run.id)["epochs"]
        self._publish(new, images=new_images, epochs=epochs)
        for r in accepted:
            self.store.execute(
                "apply_result",
                run_id=self.run.id,
                version=new,
                result_id=r["id"],
                weight=r["samples"] / images_weight,
            )  # its payload stays until a checkpoint has absorbed it
        report = StepReport(
            version=new,
            images=images,
            units=len(accepted),
            workers=len({r["worker_id"] for r in accepted}),
            rejected=len(rejected),
            epochs=epochs,
            seconds=0.0,
            **{k: _weighted(accepted, k) for k in ("g_loss", "d_loss", "d_real", "d_fake")},
        )
        self.store.execute(
            "insert_step_metrics",
            run_id=self.run.id,
            version=new,
            g_loss=report.g_loss,
            d_loss=report.d_loss,
            d_real=report.d_real,
            d_fake=report.d_fake,
            workers=report.workers,
            units=report.units,
            images=images,
            epoch=epochs,
        )
        self._cancel_stale(new)
        self.store.execute("give_back_unapplied", run_id=self.run.id, version=new)
        self._announcements.append(("notify_version", {"version": new}))
        self._dirty = True
        self.version = new
        report.seconds = time.perf_counter() - t0
        if self.on_step:
            self.on_step(report)

    def _reject(self, r: dict, reason: str) -> None:
        self.screening.reject(self.store, r, reason)

    def _cancel_stale(self, new: int, reason: str | None = None) -> None:
        """Units of older versions that did not make their step are cancelled (their images
        go back with give_back_unapplied); results that arrived for them are rejected: a result is
        applied only to the version it was computed on."""
        self.store.execute("cancel_stale_units", run_id=self.run.id, version=new)
        for r in self.store.all("stale_results", run_id=self.run.id, version=new):
            self._reject(
                r,
                reason
                or f"{RejectionReason.STALE}: computed on version {r['version']} but the run "
                f"moved on to version {new}; its images went back to the epoch",
            )

    def _publish(self, version: int, images: int, epochs: float) -> None:
        c = self.cfg
        milestone = bool(c.milestone_every and version % c.milestone_every == 0)
        self.store.execute(
            "insert_version",
            run_id=self.run.id,
            version=version,
            images=images,
            epoch=epochs,
            is_milestone=milestone,
        )
        self.store.copy_in(
            "copy_weights",
            types=["int8", "int4", "bytea"],
            row=(self.run.id, version, self._pack("weights", self.state.weights())),
        )
        self.store.execute("publish_version", run_id=self.run.id, version=version, images=images)
        # The checkpoint's weights stay: a restart replays from them.
        keep_from = min(version - c.keep_versions + 1, max(self._checkpointed, 0))
        self.store.execute("prune_weights", run_id=self.run.id, keep_from=keep_from)

    def _store_sample(self, version: int) -> None:
        png = sample_grid(self.state.g, self.sample_noise)
        self.store.execute_binary("insert_sample", run_id=self.run.id, version=version, png=png)
        if self.out_dir:
            folder = self.out_dir / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            step = version_to_step(version, self.cfg.versions_per_step)
            (folder / f"step_{step:06d}.png").write_bytes(png)

    def _issue_ahead(self, version: int) -> None:
        """The local rule's delayed outer step: the next round's units (computed on
        `version`) are out while this round's results still come in, so no worker waits
        for a step. Not past max_steps: that round could never be applied."""
        c = self.cfg
        if c.update_rule != "local" or not c.outer_delay:
            return
        if c.max_steps and version + 1 >= c.max_steps:
            return
        self._issue_units(version + 1)

    def _issue_units(self, version: int) -> None:
        """Bring the version's live units up to units_per_step (a G phase: its D units)."""
        phase = self.cfg.phase_of(version)
        if phase == Phase.G:  # the G phase redoes the D phase's units, images and noise
            for g in self.store.all("insert_g_units", run_id=self.run.id, version=version):
                # G-phase units are spot-checked too (they are every generator update).
                if spot_check_chosen(self.cfg.seed, g["noise_seed"], self.cfg.spot_check_rate):
                    self.store.execute("insert_twin", unit_id=g["id"])
            return
        live = self.store.one("count_live_units", run_id=self.run.id, version=version)["n"]
        count = self.cfg.units_issued_per_step - live
        if count <= 0:
            return
        run = self.store.one("lock_run", run_id=self.run.id)
        epochs = [
            EpochState(e["epoch"], e["seed"], e["size"], e["cursor"], list(e["returned"]))
            for e in self.store.all("open_epochs", run_id=self.run.id)
        ]
        before = {e.epoch for e in epochs}
        last = self.store.one("last_epoch", run_id=self.run.id)["epoch"]
        units = plan_units(
            epochs,
            0 if last is None else last + 1,
            count,
            self.cfg.unit_images,
            self.cfg.seed,
            self.run.dataset_size,
            run["units_issued"],
            frozenset(r["idx"] for r in self.store.all("quarantined_images", run_id=self.run.id)),
        )
        for e in epochs:
            if e.epoch not in before:
                self.store.execute(
                    "insert_epoch", run_id=self.run.id, epoch=e.epoch, seed=e.seed, size=e.size
                )
            self.store.execute(
                "save_epoch",
                run_id=self.run.id,
                epoch=e.epoch,
                cursor=e.cursor,
                returned=e.returned,
            )
            if e.skipped:  # quarantined images met again: done for this epoch, not trained
                self.store.execute(
                    "quarantine_images", run_id=self.run.id, epoch=e.epoch, images=e.skipped
                )
        for u in units:
            unit_id = self.store.one(
                "insert_unit",
                run_id=self.run.id,
                seq=u.seq,
                version=version,
                epoch=u.epoch,
                indices=u.indices,
                noise_seed=u.noise_seed,
                phase=phase,
            )["id"]
            if spot_check_chosen(self.cfg.seed, u.seq, self.cfg.spot_check_rate):
                self.store.execute("insert_twin", unit_id=unit_id)
        self.store.execute(
            "set_units_issued", run_id=self.run.id, units_issued=run["units_issued"] + len(units)
        )


def _weighted(results: list[dict], key: str) -> float | None:
    """Sample-weighted mean of a reported metric, over the results that computed it."""
    pairs = [
        (r[key], r["samples"]) for r in results if r[key] is not None and math.isfinite(r[key])
    ]
    if not pairs:
        return None
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs)
