"""Creating and finding runs (shared by the CLI, the coordinator, workers and the demo)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg

from ganpool.data.datasets import Dataset, check_images
from ganpool.errors import GanpoolError
from ganpool.models.dcgan import build_models
from ganpool.protocol.vocabulary import RunStatus
from ganpool.settings import RunConfig
from ganpool.store import Store
from ganpool.training.gradients import payload_limit, result_manifest


@dataclass(frozen=True)
class Run:
    id: int
    name: str
    config: RunConfig
    fingerprint: str
    dataset_size: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Run:
        return cls(
            id=row["id"],
            name=row["name"],
            config=RunConfig.from_dict(row["config"]),
            fingerprint=row["dataset_fingerprint"],
            dataset_size=row["dataset_size"],
        )


def create_run(store: Store, name: str, cfg: RunConfig, dataset: Dataset) -> Run:
    check_images(dataset)  # a file no worker could decode is named now, not mid-run
    if not cfg.max_payload_bytes:  # the database enforces it at submission: store it explicit
        g, d = build_models(cfg.model, cfg.seed)
        cfg = cfg.replace(max_payload_bytes=payload_limit(result_manifest(g, d)))
    try:
        store.one(
            "insert_run",
            name=name,
            config=json.dumps(cfg.to_dict()),
            fingerprint=dataset.fingerprint,
            dataset_size=len(dataset),
        )
    except psycopg.errors.UniqueViolation:
        raise GanpoolError(
            f"a run named {name!r} already exists; choose another --run name"
        ) from None
    return find_run(store, name)


def find_run(store: Store, name: str | None) -> Run:
    if name is None:
        latest = store.one("latest_run")
        if latest is None:
            raise GanpoolError("there is no run yet: create one with `ganpool run create`")
        name = latest["name"]
    row = store.one("run_by_name", name=name)
    if row is None:
        raise GanpoolError(f"run {name!r} does not exist: check --run, or `ganpool status`")
    return Run.from_row(row)


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
    status, allowed = CONTROLS[action]
    with store.tx():
        changed = store.one(
            "change_run_status", run_id=run.id, status=status, allowed=list(allowed)
        )
        if changed:
            store.execute("notify_run_status", run_id=run.id)
    if changed:
        return status
    now = store.one("run_state", run_id=run.id)["status"]
    if now == status:
        raise GanpoolError(f"run {run.name!r} is already {now}")
    raise GanpoolError(f"run {run.name!r} is {now}: it cannot be {action}d")


def coordinator_alive(store: Store, run_id: int) -> bool:
    """Whether a live session owns the run's coordinator (see `owners`, migration 0006);
    any login of the class may ask, students included."""
    return store.one("coordinator_alive", run_id=run_id)["alive"]


def list_runs(store: Store) -> list[dict[str, Any]]:
    """Every run, newest first, with its steps in the paper's sense and its target."""
    out = []
    for row in store.all("list_runs"):
        cfg = RunConfig.from_dict(row["config"])
        out.append({**row, "steps": cfg.steps_of(row["current_version"]), "target": cfg.max_steps})
    return out


def delete_run(store: Store, run: Run, force: bool = False) -> None:
    """Delete a run and everything recorded for it. A run that is running, or that a
    coordinator still holds, is refused unless `force`: its class would lose its work."""
    status = store.one("run_state", run_id=run.id)["status"]
    busy = status in (RunStatus.RUNNING, RunStatus.PAUSED) or coordinator_alive(store, run.id)
    if busy and not force:
        raise GanpoolError(
            f"run {run.name!r} is {status}"
            + (" and its coordinator is running" if coordinator_alive(store, run.id) else "")
            + ": stop it first (`ganpool run stop`), or pass --force to delete it anyway"
        )
    with store.tx():
        if store.one("delete_run", run_id=run.id) is None:
            raise GanpoolError(f"run {run.name!r} no longer exists")
