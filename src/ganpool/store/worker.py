"""The worker's store: every call a worker (and its image source) makes to the database.

A worker's interface to the database is a handful of functions, each one transaction
(`ganpool_register`, `ganpool_claim`, `ganpool_heartbeat`, `ganpool_submit`, ...; their
text is in schema.sql), plus reading the run's state and a version's weights. `WorkerStore`
gives each one a method returning a small frozen record or a plain value; which transfer
carries a blob (COPY out for weights, a binary cursor for images, a parameter or COPY in
for a result) is chosen in here, not by the worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Self

from ganpool.protocol.vocabulary import Phase, RunStatus
from ganpool.store.connection import Store, connect
from ganpool.store.notifications import Listener
from ganpool.store.submission import upload_result


@dataclass(frozen=True)
class ClaimedUnit:
    """A unit this worker holds under a lease: what to compute, and on which version."""

    unit_id: int
    attempt: int  # the claim's number: a submission names it, so a stale claim is refused
    version: int  # the version its result computes (the weights: RunConfig.base_version)
    phase: Phase
    indices: tuple[int, ...]  # the dataset positions of its images
    noise_seed: int


@dataclass(frozen=True)
class Submission:
    """What a submission sends besides its payload."""

    worker_id: int
    unit_id: int
    attempt: int
    g_loss: float = 0.0
    d_loss: float = 0.0
    d_real: float = 0.5
    d_fake: float = 0.5
    compute_seconds: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """The database's answer to a submission: accepted, or refused with its reason."""

    accepted: bool
    reason: str | None


@dataclass(frozen=True)
class Rejection:
    """A refusal of one of this worker's results, at submission or at aggregation."""

    id: int
    unit_id: int
    version: int
    reason: str


@dataclass(frozen=True)
class Standing:
    """This worker's place on its run's leaderboard."""

    place: int
    of_workers: int
    images: int


def version_listener(dsn: str) -> Listener:
    """A connection that wakes when a version is published or the run's status changes."""
    return Listener(dsn, "listen_versions")


class WorkerStore(Store):
    """The operations of one worker's connection (a worker holds three: fetcher, uploader,
    heartbeat), and of the database's image source."""

    @classmethod
    def open(cls, dsn: str, *, timeout: float = 10) -> Self:
        return cls(connect(dsn, timeout=timeout))

    # -- joining and leaving -------------------------------------------------------------

    def register(self, run_id: int, name: str, hostname: str, device: str) -> int:
        """Join the run; the new worker's id."""
        row = self.one(
            "register_worker", run_id=run_id, name=name, hostname=hostname, device=device
        )
        return row["worker_id"]

    def heartbeat(self, worker_id: int, unit_id: int | None, attempt: int | None) -> bool:
        """Stay alive and extend the lease of a held unit; False: the lease was lost."""
        row = self.one("heartbeat", worker_id=worker_id, unit_id=unit_id, attempt=attempt)
        return bool(row["holds"])

    def leave(self, worker_id: int) -> None:
        """Leave the run, releasing every unit held at once."""
        self.one("leave_run", worker_id=worker_id)

    # -- units -----------------------------------------------------------------------------

    def claim_unit(self, worker_id: int) -> ClaimedUnit | None:
        """The next pending unit, or None (nothing pending, or the run is not running)."""
        row = self.one("claim_unit", worker_id=worker_id)
        if row is None:
            return None
        return ClaimedUnit(
            unit_id=row["unit_id"],
            attempt=row["attempt"],
            version=row["version"],
            phase=Phase(row["phase"]),
            indices=tuple(row["indices"]),
            noise_seed=row["noise_seed"],
        )

    def release_unit(self, worker_id: int, unit: ClaimedUnit) -> bool:
        """Give a held unit back without a result."""
        row = self.one(
            "release_unit", worker_id=worker_id, unit_id=unit.unit_id, attempt=unit.attempt
        )
        return bool(row["released"])

    def report_failure(
        self, worker_id: int, unit: ClaimedUnit, image_index: int | None, reason: str
    ) -> None:
        """Tell the run this worker cannot compute a unit it holds (and give it back)."""
        self.one(
            "report_failure",
            worker_id=worker_id,
            unit_id=unit.unit_id,
            attempt=unit.attempt,
            image_index=image_index,
            reason=reason,
        )

    def submit_result(self, submission: Submission, payload: memoryview | bytes) -> Verdict:
        """Record a result and complete its unit (a small payload as a parameter, a large
        one by COPY in the same transaction: `ganpool.store.submission.upload_result`)."""
        verdict = upload_result(self, asdict(submission), payload)
        return Verdict(accepted=verdict["accepted"], reason=verdict["reason"])

    # -- what a worker reads ---------------------------------------------------------------

    def run_status(self, run_id: int) -> RunStatus:
        return RunStatus(self.one("run_state", run_id=run_id)["status"])

    def coordinator_alive(self, run_id: int) -> bool:
        """Whether a live session owns the run's coordinator (students may ask)."""
        return self.one("coordinator_alive", run_id=run_id)["alive"]

    def weights(self, run_id: int, version: int) -> bytes | None:
        """A version's weights (safetensors bytes, streamed out by COPY); None once pruned."""
        return self.copy_out_blob("copy_weights_at", run_id=run_id, version=version)

    def rejections_after(self, worker_id: int, after_id: int) -> list[Rejection]:
        """This worker's rejections recorded after the one with id `after_id`, oldest first."""
        rows = self.all("worker_rejections", worker_id=worker_id, after_id=after_id)
        return [Rejection(r["id"], r["unit_id"], r["version"], r["reason"]) for r in rows]

    def standing(self, worker_id: int) -> Standing | None:
        row = self.one("my_standing", worker_id=worker_id)
        if row is None:
            return None
        return Standing(row["place"], row["of_workers"], row["images"])

    # -- a dataset served from the database (ganpool.data.database) ------------------------

    def loaded_dataset_size(self, fingerprint: str) -> int | None:
        """How many images a completely loaded dataset holds; None if it is not loaded."""
        row = self.one("dataset_by_fingerprint", fingerprint=fingerprint)
        return None if row is None else row["size"]

    def dataset_images(self, fingerprint: str, indices: Sequence[int]) -> dict[int, bytes]:
        """The encoded images at `indices` (a binary cursor: no hex decoding)."""
        with self.conn.cursor(binary=True) as cur:
            cur.execute(
                self._sql("dataset_images"), {"fingerprint": fingerprint, "indices": list(indices)}
            )
            return {row["idx"]: bytes(row["image"]) for row in cur.fetchall()}
