"""Creating and finding runs (shared by the CLI, the coordinator, workers and the demo)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg

from ganpool.data.datasets import Dataset, check_images
from ganpool.errors import GanpoolError
from ganpool.models.dcgan import build_models
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
