"""Creating, finding, controlling and reading runs (shared by the CLI, the dashboard, the
coordinator, workers and the demo).

Every function takes any role's `Store`: it reads and writes through the instructor's
methods on that store's connection (`InstructorStore.of`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ganpool.data.datasets import Dataset, check_images
from ganpool.errors import AlreadyExists, GanpoolError
from ganpool.models.dcgan import Discriminator, Generator, build_models
from ganpool.protocol.vocabulary import RunStatus
from ganpool.serialization.tensors import manifest_of, unpack
from ganpool.settings import RunConfig
from ganpool.store import Store
from ganpool.store.instructor import (
    InstructorStore,
    QuarantinedUnit,
    RecentStep,
    RunListing,
    RunRecord,
    RunSummary,
    WorkerTally,
)
from ganpool.throughput import run_images_per_s
from ganpool.training.gradients import payload_limit, result_manifest
from ganpool.training.state import load_weights, weights_of


@dataclass(frozen=True)
class Run:
    id: int
    name: str
    config: RunConfig
    fingerprint: str
    dataset_size: int

    @classmethod
    def from_record(cls, record: RunRecord) -> Run:
        return cls(
            id=record.id,
            name=record.name,
            config=RunConfig.from_dict(record.config),
            fingerprint=record.fingerprint,
            dataset_size=record.dataset_size,
        )


def create_run(store: Store, name: str, cfg: RunConfig, dataset: Dataset) -> Run:
    check_images(dataset)  # a file no worker could decode is named now, not mid-run
    if not cfg.max_payload_bytes:  # the database enforces it at submission: store it explicit
        g, d = build_models(cfg.model, cfg.seed)
        cfg = cfg.replace(max_payload_bytes=payload_limit(result_manifest(g, d)))
    try:
        InstructorStore.of(store).insert_run(
            name, json.dumps(cfg.to_dict()), dataset.fingerprint, len(dataset)
        )
    except AlreadyExists:
        raise GanpoolError(
            f"a run named {name!r} already exists; choose another --run name"
        ) from None
    return find_run(store, name)


def find_run(store: Store, name: str | None) -> Run:
    """The run of that name, or the newest one when `name` is None."""
    db = InstructorStore.of(store)
    if name is None:
        name = db.latest_run_name()
        if name is None:
            raise GanpoolError("there is no run yet: create one with `ganpool run create`")
    record = db.run_by_name(name)
    if record is None:
        raise GanpoolError(f"run {name!r} does not exist: check --run, or `ganpool status`")
    return Run.from_record(record)


# What each instructor action does, and the states it applies to. A finished or stopped
# run is over: nothing turns it back into a running one.
CONTROLS = {
    "pause": (RunStatus.PAUSED, (RunStatus.CREATED, RunStatus.RUNNING)),
    "resume": (RunStatus.RUNNING, (RunStatus.PAUSED,)),
    "stop": (RunStatus.STOPPED, (RunStatus.CREATED, RunStatus.RUNNING, RunStatus.PAUSED)),
}


def control_run(store: Store, run: Run, action: str) -> str:
    """Pause, resume or stop a run (and wake its workers); returns the new status, or says
    in one line why the run is not in a state the action applies to."""
    db = InstructorStore.of(store)
    status, allowed = CONTROLS[action]
    if db.set_run_status(run.id, status, allowed):
        return status
    now = db.run_state(run.id).status
    if now == status:
        raise GanpoolError(f"run {run.name!r} is already {now}")
    raise GanpoolError(f"run {run.name!r} is {now}: it cannot be {action}d")


def coordinator_alive(store: Store, run_id: int) -> bool:
    """Whether a live session owns the run's coordinator (see `owners`, migration 0006);
    any login of the class may ask, students included."""
    return InstructorStore.of(store).coordinator_alive(run_id)


@dataclass(frozen=True)
class RunLine:
    """A run as `run list` shows it: its steps in the paper's sense and its target."""

    listing: RunListing
    steps: int
    target: int | None


def list_runs(store: Store) -> list[RunLine]:
    """Every run, newest first."""
    out = []
    for row in InstructorStore.of(store).list_runs():
        cfg = RunConfig.from_dict(row.config)
        out.append(RunLine(row, cfg.steps_of(row.current_version), cfg.max_steps))
    return out


def delete_run(store: Store, run: Run, force: bool = False) -> None:
    """Delete a run and everything recorded for it. A run that is running, or that a
    coordinator still holds, is refused unless `force`: its class would lose its work."""
    db = InstructorStore.of(store)
    status = db.run_state(run.id).status
    busy = status in (RunStatus.RUNNING, RunStatus.PAUSED) or db.coordinator_alive(run.id)
    if busy and not force:
        raise GanpoolError(
            f"run {run.name!r} is {status}"
            + (" and its coordinator is running" if db.coordinator_alive(run.id) else "")
            + ": stop it first (`ganpool run stop`), or pass --force to delete it anyway"
        )
    if not db.delete_run(run.id):
        raise GanpoolError(f"run {run.name!r} no longer exists")


@dataclass(frozen=True)
class RunReport:
    """What `ganpool status` shows of a run."""

    summary: RunSummary
    images_per_s: float
    coordinator_alive: bool
    quarantined: list[QuarantinedUnit]
    leaderboard: list[WorkerTally]
    recent: list[RecentStep]


def run_report(store: Store, run: Run) -> RunReport:
    db = InstructorStore.of(store)
    return RunReport(
        summary=db.run_summary(run.id),
        images_per_s=run_images_per_s(db, run.id),
        coordinator_alive=db.coordinator_alive(run.id),
        quarantined=db.quarantined_units(run.id, limit=20),
        leaderboard=db.leaderboard(run.id),
        recent=db.recent_steps(run.id, run.config.versions_per_step, limit=5),
    )


def load_version(
    store: Store, run: Run, version: int | None = None, *, not_kept: str = ""
) -> tuple[int, Generator, Discriminator]:
    """A kept version of the run's networks (the newest by default), and its number;
    `not_kept` ends the line that refuses a version no longer kept."""
    db = InstructorStore.of(store)
    if version is None:
        newest = db.current_weights(run.id)
        if newest is None:
            raise GanpoolError(f"run {run.name!r} has no published weights yet")
        version, blob = newest.version, newest.blob
    else:
        blob = db.weights_at(run.id, version)
        if blob is None:
            raise GanpoolError(f"version {version} of run {run.name!r} is not kept{not_kept}")
    g, d = build_models(run.config.model, run.config.seed)
    load_weights(g, d, unpack(blob, manifest_of(weights_of(g, d))))
    return version, g, d
