"""The instructor's and the dashboard's store: runs, students, viewers, what a class reads.

`InstructorStore` is what the CLI, the dashboard, `runs`, `students`, the exports and the
demo know of the database: one method per operation, each returning a small frozen record
(or a plain value). Query names, transfers (a binary cursor for a blob) and the psycopg
errors a caller must react to stay in here; those become `ganpool.errors` exceptions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Self

import psycopg

from ganpool.errors import AlreadyExists, LoginExists, NotAllowed, NotFound
from ganpool.store.connection import Store, connect
from ganpool.store.migrate import check_schema, migrate


def _record(cls, row: dict[str, Any]):
    """A record of `cls` from the row's columns of the same names."""
    return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class ClassRoles:
    """The class's name and its group roles (for pg_hba.conf)."""

    key: str
    owner: str
    instructor: str
    worker: str
    viewer: str


@dataclasses.dataclass(frozen=True)
class Target:
    """Where this connection points: what a join string for this class must name."""

    host: str
    port: int
    dbname: str


@dataclasses.dataclass(frozen=True)
class RunRecord:
    id: int
    name: str
    config: dict
    fingerprint: str
    dataset_size: int


@dataclasses.dataclass(frozen=True)
class RunState:
    status: str
    current_version: int


@dataclasses.dataclass(frozen=True)
class RunListing:
    id: int
    name: str
    status: str
    current_version: int
    config: dict
    images_applied: int
    created_at: datetime


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """A run's key figures, for `status`, the demo and the model card."""

    name: str
    status: str
    current_version: int
    images_applied: int
    epochs: float
    workers_online: int
    units_applied: int
    units_rejected: int
    units_reissued: int
    units_copied: int
    units_quarantined: int


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Images that entered a step in the run's last minute, and the seconds it ran of it."""

    images: float
    seconds: float | None


@dataclasses.dataclass(frozen=True)
class QuarantinedUnit:
    id: int
    version: int
    indices: list[int]
    bad_images: list[int] | None
    reason: str | None
    reported_by: int


@dataclasses.dataclass(frozen=True)
class WorkerTally:
    """One leaderboard line: a worker name's accepted images and units, and rejections."""

    name: str
    images: int
    units: int
    rejected: int


@dataclasses.dataclass(frozen=True)
class RecentStep:
    """A completed step's metrics (the paper's step: both phases of the alternating rule)."""

    step: int
    g_loss: float | None
    d_loss: float | None
    d_real: float | None
    d_fake: float | None
    workers: int
    images: int
    epoch: int


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """A completed step's metrics as exported, with its units and when it was taken."""

    step: int
    g_loss: float | None
    d_loss: float | None
    d_real: float | None
    d_fake: float | None
    workers: int
    units: int
    images: int
    epoch: int
    created_at: datetime


@dataclasses.dataclass(frozen=True)
class QualityRecord:
    step: int
    kid: float
    kid_std: float
    fid: float
    n_fake: int


@dataclasses.dataclass(frozen=True)
class Weights:
    version: int
    blob: bytes


@dataclasses.dataclass(frozen=True)
class Student:
    name: str
    role_name: str
    disabled: bool
    created_at: datetime
    trust: float
    last_seen: datetime | None
    units_applied: int


# -- what the dashboard reads -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunProgress:
    id: int
    name: str
    status: str
    current_version: int
    images_applied: int
    dataset_size: int
    config: dict
    epochs: float
    workers_online: int


@dataclasses.dataclass(frozen=True)
class Contributor:
    """The dashboard's leaderboard line: what `WorkerTally` says, and share, presence, trust."""

    name: str
    images: int
    units: int
    rejected: int
    reasons: list[str]
    share: float
    online: bool
    trust: float


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    step: int
    g_loss: float | None
    d_loss: float | None
    d_real: float | None
    d_fake: float | None


@dataclasses.dataclass(frozen=True)
class WorkerActivity:
    name: str
    device: str
    seconds_since_heartbeat: float
    current_unit: int | None
    images_last_minute: int
    seconds: float | None
    present: bool


class InstructorStore(Store):
    """The operations of the instructor's tools and the class's dashboard."""

    @classmethod
    def open(cls, dsn: str, *, check: bool = True) -> Self:
        """Connect; with `check`, refuse a database whose schema is not this program's."""
        store = cls(connect(dsn))
        if check:
            try:
                check_schema(store.conn)
            except BaseException:
                store.close()
                raise
        return store

    def atomically(self):
        """What is done inside commits together or not at all (a whole roster of students):
        for a unit that spans the caller's own logic."""
        return self.tx()

    # -- the schema and this login ------------------------------------------------------------

    def migrate(self, class_key: str | None = None) -> list[str]:
        """Apply the missing migrations; the names applied (see `ganpool.store.migrate`)."""
        return migrate(self.conn, class_key=class_key)

    def class_roles(self) -> ClassRoles:
        return _record(ClassRoles, self.one("class_roles"))

    def login_name(self) -> str:
        """This login's student name ('' for the instructor or another non-student login)."""
        return self.one("whoami")["name"]

    def can_read_dashboard(self) -> bool:
        return self.one("can_read_dashboard")["readable"]

    def target(self) -> Target:
        info = self.conn.info
        return Target(host=info.host, port=info.port, dbname=info.dbname)

    def scram_verifier(self, role: str, password: str) -> str:
        """The SCRAM verifier of `password`, hashed here by libpq: only it reaches the server."""
        return self.conn.pgconn.encrypt_password(
            password.encode(), role.encode(), b"scram-sha-256"
        ).decode()

    # -- runs ---------------------------------------------------------------------------------

    def insert_run(self, name: str, config: str, fingerprint: str, dataset_size: int) -> int:
        """Record a new run (`config` as JSON); AlreadyExists when the name is taken."""
        try:
            row = self.one(
                "insert_run",
                name=name,
                config=config,
                fingerprint=fingerprint,
                dataset_size=dataset_size,
            )
        except psycopg.errors.UniqueViolation as e:
            raise AlreadyExists(str(e)) from None
        return row["id"]

    def latest_run_name(self) -> str | None:
        row = self.one("latest_run")
        return None if row is None else row["name"]

    def run_by_name(self, name: str) -> RunRecord | None:
        row = self.one("run_by_name", name=name)
        if row is None:
            return None
        return RunRecord(
            id=row["id"],
            name=row["name"],
            config=row["config"],
            fingerprint=row["dataset_fingerprint"],
            dataset_size=row["dataset_size"],
        )

    def list_runs(self) -> list[RunListing]:
        """Every run, newest first."""
        return [_record(RunListing, row) for row in self.all("list_runs")]

    def run_state(self, run_id: int) -> RunState:
        return _record(RunState, self.one("run_state", run_id=run_id))

    def set_run_status(self, run_id: int, status: str, allowed: Iterable[str]) -> bool:
        """Move a run to `status` if it is in one of the `allowed` states, and wake every
        listener (workers notice a pause or the end at once); False if it was in none."""
        with self.tx():
            changed = self.one(
                "change_run_status", run_id=run_id, status=status, allowed=list(allowed)
            )
            if changed:
                self.execute("notify_run_status", run_id=run_id)
        return bool(changed)

    def coordinator_alive(self, run_id: int) -> bool:
        """Whether a live session owns the run's coordinator (any login of the class may ask)."""
        return self.one("coordinator_alive", run_id=run_id)["alive"]

    def delete_run(self, run_id: int) -> bool:
        """Delete a run and, by cascade, all recorded for it; False if it was gone already."""
        with self.tx():
            return self.one("delete_run", run_id=run_id) is not None

    def run_summary(self, run_id: int) -> RunSummary:
        return _record(RunSummary, self.one("run_summary", run_id=run_id))

    def run_throughput(self, run_id: int) -> Throughput | None:
        row = self.one("run_throughput", run_id=run_id)
        return None if row is None else _record(Throughput, row)

    def quarantined_units(self, run_id: int, limit: int) -> list[QuarantinedUnit]:
        """Units set aside because workers could not compute them, newest first."""
        rows = self.all("quarantined_units", run_id=run_id, limit=limit)
        return [_record(QuarantinedUnit, row) for row in rows]

    def leaderboard(self, run_id: int) -> list[WorkerTally]:
        return [_record(WorkerTally, row) for row in self.all("leaderboard", run_id=run_id)]

    def recent_steps(self, run_id: int, per_step: int, limit: int) -> list[RecentStep]:
        """The last `limit` completed steps' metrics, newest last."""
        rows = self.all("recent_metrics", run_id=run_id, limit=limit, per_step=per_step)
        return [_record(RecentStep, row) for row in rows]

    def all_steps(self, run_id: int, per_step: int) -> list[StepRecord]:
        rows = self.all("all_metrics", run_id=run_id, per_step=per_step)
        return [_record(StepRecord, row) for row in rows]

    def quality(self, run_id: int, per_step: int) -> list[QualityRecord]:
        """The quality measured over the run, by step."""
        rows = self.all("dashboard_quality", run_id=run_id, per_step=per_step)
        return [_record(QualityRecord, row) for row in rows]

    def record_quality(
        self, run_id: int, version: int, *, kid, kid_std, fid, n_real, n_fake
    ) -> None:
        """Store (or replace) a version's KID and FID."""
        self.execute(
            "insert_quality",
            run_id=run_id,
            version=version,
            kid=kid,
            kid_std=kid_std,
            fid=fid,
            n_real=n_real,
            n_fake=n_fake,
        )

    def weights_at(self, run_id: int, version: int) -> bytes | None:
        """One version's weights (None when not kept), read in binary."""
        return self.blob("weights_at", "weights", run_id=run_id, version=version)

    def current_weights(self, run_id: int) -> Weights | None:
        """The newest published version and its weights, or None before the first."""
        row = self.one_binary("current_weights", run_id=run_id)
        return None if row is None else Weights(version=row["version"], blob=row["weights"])

    # -- students and viewers -----------------------------------------------------------------

    def student_role(self, name: str) -> str:
        """The login role a student of this class gets."""
        return self.one("student_role", name=name)["role_name"]

    def viewer_role(self, name: str) -> str:
        return self.one("viewer_role", name=name)["role_name"]

    def add_student(self, name: str, verifier: str) -> None:
        """Create a student's login from a SCRAM verifier. AlreadyExists: a student of that
        name; LoginExists: a role of that name on the server; NotAllowed: this login may
        not create roles."""
        try:
            with self.tx():
                self.one("add_student", name=name, verifier=verifier)
        except psycopg.errors.UniqueViolation as e:
            raise AlreadyExists(str(e)) from None
        except psycopg.errors.DuplicateObject as e:
            raise LoginExists(str(e)) from None
        except psycopg.errors.InsufficientPrivilege as e:
            raise NotAllowed(str(e)) from None

    def reissue_student(self, name: str, verifier: str) -> None:
        """A new password for a student's login. NotFound, NotAllowed."""
        try:
            with self.tx():
                self.one("reissue_student", name=name, verifier=verifier)
        except psycopg.errors.NoDataFound as e:
            raise NotFound(str(e)) from None
        except psycopg.errors.InsufficientPrivilege as e:
            raise NotAllowed(str(e)) from None

    def _student_call(self, query: str, name: str) -> None:
        try:
            with self.tx():
                self.one(query, name=name)
        except psycopg.errors.NoDataFound as e:
            raise NotFound(str(e)) from None

    def disable_student(self, name: str) -> int:
        """Refuse the student from their next call on and close their login, then end their
        open sessions; returns how many ended. NotFound."""
        self._student_call("disable_student", name)
        return self.one("end_student_sessions", name=name)["ended"]

    def enable_student(self, name: str) -> None:
        """NotFound."""
        self._student_call("enable_student", name)

    def remove_student(self, name: str) -> None:
        """Drop the login (their past work stays). NotFound."""
        self._student_call("remove_student", name)

    def list_students(self) -> list[Student]:
        return [_record(Student, row) for row in self.all("list_students")]

    def add_viewer(self, name: str, verifier: str) -> None:
        """A read-only login. LoginExists, NotAllowed."""
        try:
            with self.tx():
                self.one("add_viewer", name=name, verifier=verifier)
        except psycopg.errors.DuplicateObject as e:
            raise LoginExists(str(e)) from None
        except psycopg.errors.InsufficientPrivilege as e:
            raise NotAllowed(str(e)) from None

    def remove_viewer(self, name: str) -> None:
        """NotFound."""
        try:
            with self.tx():
                self.one("remove_viewer", name=name)
        except psycopg.errors.NoDataFound as e:
            raise NotFound(str(e)) from None

    # -- the dashboard ------------------------------------------------------------------------

    def run_progress(self, run_name: str) -> RunProgress | None:
        row = self.one("dashboard_progress", run=run_name)
        return None if row is None else _record(RunProgress, row)

    def contributors(self, run_id: int, limit: int) -> list[Contributor]:
        rows = self.all("dashboard_leaderboard", run_id=run_id, limit=limit)
        return [_record(Contributor, row) for row in rows]

    def loss_curves(self, run_id: int, per_step: int, max_points: int) -> list[CurvePoint]:
        """The losses by step, averaged into at most `max_points` buckets of steps."""
        rows = self.all(
            "dashboard_metrics", run_id=run_id, max_points=max_points, per_step=per_step
        )
        return [_record(CurvePoint, row) for row in rows]

    def sample_steps(self, run_id: int, per_step: int) -> list[int]:
        """The steps that have a sample grid."""
        rows = self.all("dashboard_sample_steps", run_id=run_id, per_step=per_step)
        return [row["step"] for row in rows]

    def sample_png(self, run_id: int, step: int, per_step: int) -> bytes | None:
        """A step's sample grid, read in binary."""
        return self.blob("dashboard_sample", "png", run_id=run_id, step=step, per_step=per_step)

    def worker_activity(self, run_id: int, limit: int) -> list[WorkerActivity]:
        rows = self.all("dashboard_workers", run_id=run_id, limit=limit)
        return [_record(WorkerActivity, row) for row in rows]
