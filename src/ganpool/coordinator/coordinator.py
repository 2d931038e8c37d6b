"""The coordinator: issue work units, collect results, step both networks, publish versions.

Protocol (see docs/protocol.md). Rows each party writes, and in which transaction. Every
read and write goes through ganpool.store.coordinator.CoordinatorStore; this module owns
the run and serves, and composes the round (round.py), unit issuing (issuing.py),
checkpoints and replay (checkpoints.py) and outputs (outputs.py):

* Start: take ownership of the run (one coordinator per run): a row of the instructor-only
  `owners` table names this session, which no student can lock or forge. If no version
  exists, publish version 0 (seeded init) and issue its units, in one transaction.
  Otherwise reload the newest weights and Adam state from the database and carry on.
* Workers (see ganpool.worker) claim a unit (`FOR UPDATE SKIP LOCKED`, lease on the
  server's clock), heartbeat, and submit: result row + payload + unit 'submitted' + NOTIFY
  `ganpool_results`, in one transaction.
* Between ticks, results of the current version are read and checked as they land, and
  (under the mean rule) folded into a running sum, so a step only waits for the last one.
* Each tick (`Round.play`), in ONE transaction holding the run's row lock
  (`CoordinatorStore.holding_run`), never waiting on a student: rows a student may hold
  locked (a stalled upload, an open transaction) are skipped (`SKIP LOCKED`) and seen on a
  later tick, and `lock_timeout` rolls back a tick that would wait anyway (it is simply
  tried again):
    1. put units whose lease expired back to 'pending' (they are reissued as they are); set
       aside units that several students could not compute (poison units); give a unit held
       past the backup threshold a copy for an idle worker of another student, reissue a
       unit whose every result was refused, and return the images of units out of play
       (issuing.py);
    2. when N results for the current version v are in (or the step deadline has passed
       with at least one), screen them (ganpool.coordinator.screening: payload, norm and
       spot checks; a refusal is recorded with its reason and its images go back to the
       epoch), combine the rest (the run's aggregation rule; by default the mean weighted by
       their units' sample counts), take the Adam step (for G and D under the simultaneous
       rule; for D, then G, in the alternating rule's two phases), and write version v+1:
       weights (by COPY), contributions (UNIQUE per unit: applied at most once), step
       metrics, epoch counts; cancel units of v that did not make it (their images go back
       to the epoch; their late results are rejected as stale); prune old weights;
    3. issue the units of the new version from the epoch permutation (issuing.py; under
       the local rule with outer_delay 1, also the next round's, computed on the new
       version while this one's results come in). After the commit, NOTIFY
       `ganpool_version` (a hint: a full notification queue cannot fail a step).
  Under the local rule (docs/protocol.md) a unit is local_steps batches, a result is a
  weight change, and the step is the outer SGD step on their weighted mean.
  A crash anywhere before commit leaves the database at version v with nothing applied;
  in-memory state is then reloaded from the database, so nothing is applied twice.
* After the commit, off the workers' critical path: a sample grid every K steps (outputs.py),
  and at most every `checkpoint_s` a checkpoint (checkpoints.py): the Adam state of the
  current version, in one transaction with the deletion of the payloads it has absorbed.
  Applied payloads stay until then, so a restart loads the checkpoint and replays the
  versions after it from the very results that formed them (and checks it reproduces their
  published weights).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

from ganpool.coordinator import issuing
from ganpool.coordinator.checkpoints import Checkpoints
from ganpool.coordinator.outputs import Outputs
from ganpool.coordinator.round import Round, StepReport
from ganpool.coordinator.screening import Screening
from ganpool.coordinator.sweeper import StalledSessionSweeper
from ganpool.errors import LockHeld, NotificationFailed, OwnershipRefused
from ganpool.events import OnEvent, ignore
from ganpool.notices import Notice
from ganpool.protocol.vocabulary import RUN_OVER, RunStatus
from ganpool.runs import Run
from ganpool.store.coordinator import CoordinatorStore, RunRow
from ganpool.store.reconnect import CONNECTION_ERRORS, Backoff, Pace
from ganpool.training.state import TrainingState

__all__ = ["Coordinator", "StepReport"]

log = logging.getLogger(__name__)

VACUUM_EVERY = 10  # steps between vacuums of the blob tables
TICKS_PER_S = 100.0  # a flood of notifications (anyone may NOTIFY) cannot spin the loop faster


class Coordinator:
    """A run's only coordinator: owns the run and serves it, composing the round (round.py),
    unit issuing (issuing.py), checkpoints (checkpoints.py) and outputs (outputs.py)."""

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
        self.poll_s = poll_s
        self.on_event = on_event  # woke / collected / published (version), for benchmarks
        self.store = CoordinatorStore.open(dsn, run.id)
        state = TrainingState(self.cfg)
        self.screening = Screening(run.id, self.cfg, state.g, state.d)
        self.checkpoints = Checkpoints(run, checkpoint_s)
        self.outputs = Outputs(run, Path(out_dir) if out_dir else None, data_path)
        self.round = Round(run, state, self.screening, self.checkpoints, self.outputs, on_step)
        self._owner_pid: int | None = None  # the session that holds ownership of the run
        self.waiting = Notice(log)  # one line when a pause starts, one when it ends
        self._acquire_ownership()

    @property
    def version(self) -> int:
        """The newest version, as the database has it once each tick commits."""
        return self.round.version

    @property
    def state(self) -> TrainingState:
        return self.round.state

    # -- ownership, start and resume ---------------------------------------------------------

    def _acquire_ownership(self) -> None:
        """Become the run's only coordinator, or refuse. A session of ours from before a
        network cut that the server still keeps is ended and replaced."""
        got = self.store.take_ownership(self._owner_pid)
        if not got.taken:
            self.store.close()
            log.debug("run %s is owned by server process %s", self.run.name, got.holder_pid)
            raise OwnershipRefused(
                f"another coordinator is already running run {self.run.name!r}; "
                "stop it first (only one coordinator per run)"
            )
        self._owner_pid = got.holder_pid

    def start(self) -> None:
        """Publish version 0, or reload the newest version and Adam state to resume."""
        with self.store.holding_run() as row:
            if row.status in RUN_OVER and row.current_version < 0:
                return  # ended before anything was published
            if row.status not in RUN_OVER:
                self.store.start_run()
            if row.current_version < 0:
                self._publish_first()
        self._announce()
        if self.version == 0:
            self.on_event("published", 0)
            self.outputs.store_sample(self.store, self.state.g, 0)
            return
        self._reload()
        log.info("run %s: resumed at version %d", self.run.name, self.version)

    def _publish_first(self) -> None:
        """Version 0 (the seeded init), its checkpoint and its units."""
        self.round.publish(self.store, 0, images=0, epochs=0.0)
        self.checkpoints.save(self.store, self.state, 0)
        issuing.issue_units(self.store, self.run, 0)
        issuing.issue_ahead(self.store, self.run, 0)
        self.round.announcements.append(partial(CoordinatorStore.notify_version, version=0))
        self.round.version = 0
        log.info("run %s: published version 0", self.run.name)

    def _reload(self) -> None:
        """Make the in-memory model and optimiser exactly the database's newest version."""
        self.round.reset(*self.checkpoints.restore(self.store, self.screening))

    # -- the loop ----------------------------------------------------------------------------

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
                try:
                    if self.store.closed:
                        # After a restart of the database, or a network cut: ownership is
                        # taken again (retried, with backoff, while a session of ours from
                        # before the cut lingers on the server).
                        self.store = CoordinatorStore.open(self.dsn, self.run.id)
                        self._acquire_ownership()
                        self._reload()
                    self._serve_connected(should_stop, backoff)
                    return
                except (*CONNECTION_ERRORS, OwnershipRefused) as e:
                    self.store.close()
                    backoff.wait(e)
        finally:
            sweeper.stop()
            sweeper.join(5)
            self.close()

    def _serve_connected(self, should_stop: Callable[[], bool], backoff: Backoff) -> None:
        """Tick while connected, until the run ends or `should_stop`."""
        listener = CoordinatorStore.results_listener(self.dsn)
        try:
            backoff.reset()
            pace = Pace(TICKS_PER_S)
            while not should_stop():
                self.on_event("woke", self.version)
                self.collect()
                self.on_event("collected", self.version)
                if self.tick():
                    return
                if listener.wait(self.poll_s):
                    # Notifications are hints, and anyone may send them: however many
                    # arrive, TICKS_PER_S passes a second at most, and a backlog is one
                    # wake-up.
                    pace.wait()
                    listener.drain()
        finally:
            listener.close()

    def collect(self) -> None:
        """Read and check the results that landed since the last call (serve() does this
        before each tick)."""
        self.round.collect(self.store)

    def close(self) -> None:
        """Close the connection, which also gives up ownership of the run."""
        self.store.close()

    def tick(self) -> bool:
        """One pass of the protocol; returns True when the run is over."""
        before = self.version
        self.round.dirty = False
        try:
            with self.store.holding_run(give_way=True) as run:
                over = self._play(run)
        except LockHeld as e:
            # A row some student holds locked: never wait on it. Nothing was committed; the
            # next tick tries again (by then the row is usually free, or skipped).
            log.warning("tick gave way to a lock held elsewhere (%s); retrying", e)
            self.round.announcements.clear()
            if self.round.dirty:
                self._reload()
            return False
        except Exception:
            # The transaction rolled back: drop any in-memory step that did not commit.
            # (With the connection gone, serve() reloads after reconnecting.)
            self.round.announcements.clear()
            if not self.store.broken and not self.store.closed:
                self._reload()
            raise
        self._announce()
        self._after_commit(before, over)
        return over

    def _play(self, run: RunRow) -> bool:
        if run.status in RUN_OVER:
            return True
        if run.status != RunStatus.RUNNING:
            self.waiting.set(
                run.status, f"the run is {run.status}: waiting for `ganpool run resume`",
                ended="the run is running again",
            )  # fmt: skip
            return False
        self.waiting.clear()
        return self.round.play(self.store, run)

    def _after_commit(self, before: int, over: bool) -> None:
        """Committed: the workers are already on the new version. The rest can wait a
        little: the sample grid, a checkpoint, the quality metric, a vacuum."""
        published = self.version != before
        if published:
            self.on_event("published", self.version)
            if self.version % self.outputs.sample_every == 0:
                self.outputs.store_sample(self.store, self.state.g, self.version)
        if self.checkpoints.due(self.version, published, over):
            self.checkpoints.save(self.store, self.state, self.version)
        if self.outputs.quality_due(before, self.version):
            self.outputs.measure_quality(self.store, self.state.g, self.version)
        if self.version // VACUUM_EVERY != before // VACUUM_EVERY:
            # Deleted payloads and pruned weights leave dead blobs behind; vacuuming them
            # (outside the step's transaction) lets new blobs reuse that space.
            self.store.vacuum_blobs()

    def _announce(self) -> None:
        """Send the NOTIFYs of what just committed. Never inside the step's transaction: a
        notification is a hint (workers poll too), and a notification queue held full by a
        listener idle in a transaction would otherwise make the commit itself fail."""
        pending, self.round.announcements = self.round.announcements, []
        for send in pending:
            try:
                send(self.store)
            except NotificationFailed as e:
                log.warning("could not notify the workers (%s); they poll instead", e)
