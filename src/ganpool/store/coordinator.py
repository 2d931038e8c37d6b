"""What the coordinator reads and writes, one method per operation, each returning a small
record. The only place that knows the coordinator's query names and how each value travels:
weights, checkpoints and payloads by binary COPY, sample images as binary parameters, the
rest as plain parameters. Methods run in the caller's transaction when one is open
(`holding_run`), else each on its own."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg

from ganpool.errors import LockHeld, NotAllowed, NotificationFailed
from ganpool.store.connection import Store, connect
from ganpool.store.notifications import Listener
from ganpool.store.reconnect import CONNECTION_ERRORS


@dataclasses.dataclass(frozen=True)
class RunRow:
    """The run's row, locked for the transaction."""

    status: str
    current_version: int
    units_issued: int
    version_age_s: float | None  # since the current version was published
    running_s: float | None  # since the run started


@dataclasses.dataclass(frozen=True)
class Ownership:
    taken: bool
    holder_pid: int | None  # the server process that owns the run


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    version: int
    optimizer: bytes  # the packed Adam state


@dataclasses.dataclass(frozen=True)
class Contribution:
    """A result that formed a version, in the order its step took them."""

    result_id: int
    samples: int
    phase: str


@dataclasses.dataclass(frozen=True)
class ArrivedResult:
    """A result of the current version that has landed, read before its step."""

    id: int
    samples: int
    phase: str
    family: int  # its unit, or the unit it is a backup copy of
    twin_of: int | None


@dataclasses.dataclass(frozen=True)
class WaitingResult:
    """A result locked for the step that may apply it."""

    id: int
    unit_id: int
    worker_id: int
    samples: int
    phase: str
    family: int
    twin_of: int | None
    seq: int  # the unit plan's order: results are combined in it
    epoch: int
    g_loss: float | None
    d_loss: float | None
    d_real: float | None
    d_fake: float | None


@dataclasses.dataclass(frozen=True)
class StaleResult:
    """A result computed on a version the run has moved past."""

    id: int
    worker_id: int
    version: int


@dataclasses.dataclass(frozen=True)
class Waiting:
    open: int  # units (with their copies) still in play
    n: int  # units with a result waiting
    twins_computing: int  # spot checks still worth waiting for


@dataclasses.dataclass(frozen=True)
class QuarantinedUnit:
    id: int
    epoch: int
    indices: list[int]
    phase: str
    twin_of: int | None
    images_returned: bool
    bad: list[int]  # the images workers named bad (none: the whole unit)


@dataclasses.dataclass(frozen=True)
class RecentUnits:
    n: int
    seconds: float | None  # median claim-to-submission time


@dataclasses.dataclass(frozen=True)
class OpenEpoch:
    epoch: int
    seed: int
    size: int
    cursor: int
    returned: list[int]


@dataclasses.dataclass(frozen=True)
class NewUnit:
    id: int
    noise_seed: int


class CoordinatorStore(Store):
    """The coordinator's connection, bound to one run (`run_id`; None for the sweeper)."""

    def __init__(self, conn: psycopg.Connection, run_id: int | None = None):
        super().__init__(conn)
        self.run_id = run_id

    @classmethod
    def open(cls, dsn: str, run_id: int | None = None) -> CoordinatorStore:
        return cls(connect(dsn), run_id)

    # -- transactions, ownership, notifications ------------------------------------------

    @contextmanager
    def holding_run(self, give_way: bool = False) -> Iterator[RunRow]:
        """One transaction holding the run's row lock, around the coordinator's own logic
        (its start, and each tick). With `give_way`, a statement that would wait more than
        a second for a lock some student holds rolls the whole transaction back instead, as
        LockHeld (the tick is simply tried again)."""
        try:
            with self.tx():
                if give_way:
                    self.execute("set_tick_lock_timeout")
                yield self.lock_run()
        except psycopg.errors.LockNotAvailable as e:
            raise LockHeld(str(e).strip()) from e

    def lock_run(self) -> RunRow:
        """The run's row, locked (again: a no-op) and read afresh."""
        row = self.one("lock_run", run_id=self.run_id)
        age, running = row["version_age_s"], row["running_s"]  # numeric: seconds
        return RunRow(
            row["status"],
            row["current_version"],
            row["units_issued"],
            None if age is None else float(age),
            None if running is None else float(running),
        )

    def take_ownership(self, previous_pid: int | None) -> Ownership:
        with self.tx():
            got = self.one(
                "take_ownership", what=f"coordinator:{self.run_id}", previous_pid=previous_pid
            )
        return Ownership(got["taken"], got["holder_pid"])

    @staticmethod
    def results_listener(dsn: str) -> Listener:
        """A connection that wakes when a worker submits a result."""
        return Listener(dsn, "listen_results")

    def notify_version(self, version: int) -> None:
        self._notify("notify_version", version=version)

    def notify_run_status(self) -> None:
        self._notify("notify_run_status")

    def _notify(self, query: str, **params: int) -> None:
        try:
            self.execute(query, run_id=self.run_id, **params)
        except psycopg.Error as e:
            raise NotificationFailed(str(e).strip()) from e

    def end_stalled_sessions(self, idle_s: float, active_s: float) -> int:
        """End student sessions stalled that long; how many. Connection errors pass through
        (try again later); a refusal (not the class's instructor) is NotAllowed."""
        try:
            return self.one("end_stalled_sessions", idle_s=idle_s, active_s=active_s)["ended"]
        except CONNECTION_ERRORS:
            raise
        except psycopg.Error as e:
            raise NotAllowed(str(e).strip()) from e

    def vacuum_blobs(self) -> None:
        self.execute("vacuum_blobs")

    # -- the run ---------------------------------------------------------------------------

    def start_run(self) -> None:
        self.execute("start_run", run_id=self.run_id)

    def current_version(self) -> int:
        return self.one("run_state", run_id=self.run_id)["current_version"]

    def set_run_status(self, status: str) -> None:
        self.execute("set_run_status", run_id=self.run_id, status=status)

    def epochs_completed(self) -> float:
        return self.one("epochs_completed", run_id=self.run_id)["epochs"]

    # -- versions and checkpoints ----------------------------------------------------------

    def publish_version(
        self,
        version: int,
        weights: memoryview,
        images: int,
        epochs: float,
        milestone: bool,
        keep_from: int,
    ) -> None:
        """Record the version, its weights (by COPY) and make it current; drop weights older
        than `keep_from` that are not milestones."""
        self.execute(
            "insert_version",
            run_id=self.run_id,
            version=version,
            images=images,
            epoch=epochs,
            is_milestone=milestone,
        )
        self.copy_in("copy_weights", ["int8", "int4", "bytea"], row=(self.run_id, version, weights))
        self.execute("publish_version", run_id=self.run_id, version=version, images=images)
        self.execute("prune_weights", run_id=self.run_id, keep_from=keep_from)

    def weights(self, version: int) -> bytes | None:
        """A version's packed weights, or None once pruned."""
        return self.blob("weights_at", "weights", run_id=self.run_id, version=version)

    def save_checkpoint(self, version: int, optimizer: memoryview, keep_from: int) -> None:
        """Replace the checkpoint (by COPY), drop the payloads it has absorbed and the
        weights a replay no longer needs, in one transaction."""
        with self.tx():
            self.execute("delete_coordinator_state", run_id=self.run_id)
            self.copy_in(
                "copy_coordinator_state",
                ["int8", "int4", "bytea"],
                row=(self.run_id, version, optimizer),
            )
            self.execute("delete_checkpointed_payloads", run_id=self.run_id, version=version)
            self.execute("prune_weights", run_id=self.run_id, keep_from=keep_from)

    def checkpoint(self) -> Checkpoint | None:
        row = self.one_binary("coordinator_state", run_id=self.run_id)
        return None if row is None else Checkpoint(row["version"], row["optimizer"])

    def contributions(self, version: int) -> list[Contribution]:
        rows = self.all("replay_contributions", run_id=self.run_id, version=version)
        return [Contribution(r["id"], r["samples"], r["phase"]) for r in rows]

    def insert_step_metrics(self, version: int, **metrics: float | int | None) -> None:
        """g_loss, d_loss, d_real, d_fake, workers, units, images and epoch of a version."""
        self.execute("insert_step_metrics", run_id=self.run_id, version=version, **metrics)

    def insert_sample(self, version: int, png: bytes) -> None:
        self.execute_binary("insert_sample", run_id=self.run_id, version=version, png=png)

    def insert_quality(self, version: int, **quality: float | int) -> None:
        """kid, kid_std, fid, n_real and n_fake of a version's generator."""
        self.execute("insert_quality", run_id=self.run_id, version=version, **quality)

    # -- results ---------------------------------------------------------------------------

    def payload(self, result_id: int) -> bytes | None:
        """A result's payload, streamed out by COPY; None if none was uploaded (or kept)."""
        return self.copy_out_blob("copy_result_payload", result_id=result_id)

    def arrived_results(self, version: int) -> list[ArrivedResult]:
        rows = self.all("arrived_results", run_id=self.run_id, version=version)
        return [
            ArrivedResult(r["id"], r["samples"], r["phase"], r["family"], r["twin_of"])
            for r in rows
        ]

    def waiting_results(self, version: int) -> list[WaitingResult]:
        """The version's undecided results in unit order, locked; rows a student holds
        locked are skipped."""
        rows = self.all("waiting_results", run_id=self.run_id, version=version)
        fields = [f.name for f in dataclasses.fields(WaitingResult)]
        return [WaitingResult(**{k: r[k] for k in fields}) for r in rows]

    def count_waiting(self, version: int, patience_s: float) -> Waiting:
        row = self.one(
            "count_waiting_results", run_id=self.run_id, version=version, patience_s=patience_s
        )
        return Waiting(row["open"], row["n"], row["twins_computing"])

    def stale_results(self, version: int) -> list[StaleResult]:
        rows = self.all("stale_results", run_id=self.run_id, version=version)
        return [StaleResult(r["id"], r["worker_id"], r["version"]) for r in rows]

    def set_norms(
        self, result_id: int, grad_norm: float, norm_g: float | None, norm_d: float | None
    ) -> None:
        self.execute(
            "set_grad_norm", result_id=result_id, grad_norm=grad_norm, norm_g=norm_g, norm_d=norm_d
        )

    def recent_norms(self, phase: str, limit: int) -> list[tuple[float | None, float | None]]:
        """(G's norm, D's norm) of the phase's most recent results, newest first."""
        rows = self.all("recent_norms", run_id=self.run_id, phase=phase, limit=limit)
        return [(r["norm_g"], r["norm_d"]) for r in rows]

    def apply_result(self, version: int, result_id: int, weight: float) -> None:
        """Record the result as applied to `version` (its payload stays until a checkpoint
        has absorbed it)."""
        self.execute(
            "apply_result", run_id=self.run_id, version=version, result_id=result_id, weight=weight
        )

    def reject_result(self, result_id: int, reason: str) -> None:
        """Refuse a result with its reason, and drop its payload."""
        self.execute("reject_result", run_id=self.run_id, result_id=result_id, reason=reason)
        self.execute("delete_payload", result_id=result_id)

    def supersede_result(self, result_id: int) -> None:
        """A valid copy's result, another of its family first: dropped, not refused."""
        self.execute("supersede_result", result_id=result_id)
        self.execute("delete_payload", result_id=result_id)

    def verify_result(self, result_id: int) -> None:
        """A spot-check twin done with (agreed, or its original gone): never applied."""
        self.execute("verify_result", result_id=result_id)
        self.execute("delete_payload", result_id=result_id)

    def record_spot_check(
        self,
        unit_id: int,
        twin_id: int,
        workers: tuple[int, int],
        cosine: float,
        rel_norm: float,
        agreed: bool,
    ) -> None:
        self.execute(
            "record_spot_check",
            run_id=self.run_id,
            unit_id=unit_id,
            twin_id=twin_id,
            worker_a=workers[0],
            worker_b=workers[1],
            cosine=cosine,
            rel_norm=rel_norm,
            agreed=agreed,
        )

    def update_trust(self, worker_id: int, agreed: bool, disable_below: float) -> None:
        """After a spot check; with `disable_below`, disable a worker (and its student) whose
        trust fell under it after disagreeing with two or more peers."""
        self.execute("update_trust", worker_id=worker_id, agreed=agreed)
        if disable_below:
            self.execute("disable_untrusted", worker_id=worker_id, below=disable_below)

    def count_epoch_images(self, epoch: int, images: int) -> None:
        self.execute("count_epoch_images", run_id=self.run_id, epoch=epoch, images=images)

    # -- units -----------------------------------------------------------------------------

    def expire_leases(self) -> int:
        """Units whose lease ran out go back to pending; how many."""
        return len(self.all("expire_leases", run_id=self.run_id))

    def cancel_stale_units(self, version: int) -> None:
        self.execute("cancel_stale_units", run_id=self.run_id, version=version)

    def give_back_unapplied(self, version: int) -> None:
        """Images of units before `version` out of play with nothing applied go back."""
        self.execute("give_back_unapplied", run_id=self.run_id, version=version)

    def recent_units(self) -> RecentUnits:
        row = self.one("recent_unit_seconds", run_id=self.run_id)
        return RecentUnits(row["n"], None if row["seconds"] is None else float(row["seconds"]))

    def abandon_unclaimed_copies(self, version: int, after_s: float) -> None:
        self.execute(
            "abandon_unclaimed_copies", run_id=self.run_id, version=version, after_s=after_s
        )

    def reissue_refused(self, version: int, max_copies: int) -> int:
        """Units refused everywhere go out again to other students; how many."""
        rows = self.all(
            "reissue_refused", run_id=self.run_id, version=version, max_copies=max_copies
        )
        return len(rows)

    def issue_backups(self, version: int, after_s: float, max_copies: int) -> int:
        """Backup copies of units held longer than `after_s`; how many."""
        rows = self.all(
            "issue_backups",
            run_id=self.run_id,
            version=version,
            after_s=after_s,
            max_copies=max_copies,
        )
        return len(rows)

    def quarantine_units(self, after: int) -> list[QuarantinedUnit]:
        """Set aside units `after` students could not compute."""
        rows = self.all("quarantine_units", run_id=self.run_id, after=after)
        return [
            QuarantinedUnit(
                r["id"],
                r["epoch"],
                list(r["indices"]),
                r["phase"],
                r["twin_of"],
                r["images_returned"],
                list(r["bad"]),
            )
            for r in rows
        ]

    def give_back(self, epoch: int, indices: Sequence[int]) -> None:
        self.execute("give_back", run_id=self.run_id, epoch=epoch, indices=list(indices))

    def quarantine_images(self, epoch: int, images: int) -> None:
        self.execute("quarantine_images", run_id=self.run_id, epoch=epoch, images=images)

    def mark_images_returned(self, unit_id: int) -> None:
        self.execute("mark_images_returned", unit_id=unit_id)

    def insert_g_units(self, version: int) -> list[NewUnit]:
        rows = self.all("insert_g_units", run_id=self.run_id, version=version)
        return [NewUnit(r["id"], r["noise_seed"]) for r in rows]

    def insert_twin(self, unit_id: int) -> None:
        self.execute("insert_twin", unit_id=unit_id)

    def count_live_units(self, version: int) -> int:
        return self.one("count_live_units", run_id=self.run_id, version=version)["n"]

    def open_epochs(self) -> list[OpenEpoch]:
        rows = self.all("open_epochs", run_id=self.run_id)
        return [
            OpenEpoch(e["epoch"], e["seed"], e["size"], e["cursor"], list(e["returned"]))
            for e in rows
        ]

    def last_epoch(self) -> int | None:
        return self.one("last_epoch", run_id=self.run_id)["epoch"]

    def quarantined_images(self) -> frozenset[int]:
        return frozenset(r["idx"] for r in self.all("quarantined_images", run_id=self.run_id))

    def insert_epoch(self, epoch: int, seed: int, size: int) -> None:
        self.execute("insert_epoch", run_id=self.run_id, epoch=epoch, seed=seed, size=size)

    def save_epoch(self, epoch: int, cursor: int, returned: list[int]) -> None:
        self.execute(
            "save_epoch", run_id=self.run_id, epoch=epoch, cursor=cursor, returned=returned
        )

    def insert_unit(
        self, seq: int, version: int, epoch: int, indices: list[int], noise_seed: int, phase: str
    ) -> int:
        row = self.one(
            "insert_unit",
            run_id=self.run_id,
            seq=seq,
            version=version,
            epoch=epoch,
            indices=indices,
            noise_seed=noise_seed,
            phase=phase,
        )
        return row["id"]

    def set_units_issued(self, units_issued: int) -> None:
        self.execute("set_units_issued", run_id=self.run_id, units_issued=units_issued)
