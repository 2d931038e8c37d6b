"""`ganpool evaluate`: a generator (a run's kept version, or an exported one) and the real
images it is scored against; a run's score is recorded with the version it measured."""

from __future__ import annotations

from pathlib import Path

import torch

from ganpool.data.datasets import Dataset, check_fingerprint, open_dataset
from ganpool.evaluation.quality import InceptionFeatures, Quality, generator_quality
from ganpool.models.dcgan import Generator
from ganpool.runs import Run, load_version
from ganpool.store import Store
from ganpool.store.instructor import InstructorStore


def exported_generator(
    path: Path, kind: str | None, data: Path | None
) -> tuple[Generator, int, Dataset]:
    """An exported generator, its z size, and the dataset to score it on (`kind`, else a
    folder when `data` is given, else the built-in faces)."""
    from ganpool.export.model import load_generator

    g, model = load_generator(path)
    kind = kind or ("folder" if data else "faces")
    return g, model.nz, open_dataset(kind, model.image_size, model.channels, data)


def run_generator(
    store: Store, run: Run, version: int | None, data: Path | None
) -> tuple[int, Generator, Dataset]:
    """A kept version of the run (the newest by default), its number, and the run's dataset,
    checked to be the one the run was created with."""
    cfg = run.config
    version, g, _ = load_version(store, run, version)
    dataset = open_dataset(cfg.dataset, cfg.image_size, cfg.channels, data)
    check_fingerprint(dataset, run.fingerprint, run.dataset_size)
    return version, g, dataset


def score(
    g: Generator,
    dataset: Dataset,
    nz: int,
    *,
    n_fake: int,
    max_real: int,
    seed: int,
    features: InceptionFeatures,
) -> Quality:
    """KID and FID of `n_fake` generated images against up to `max_real` real ones (the
    same pick of real images every time)."""
    n_real = min(len(dataset), max_real)
    picks = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:n_real]
    real = dataset.batch(picks.tolist())
    return generator_quality(g, real, nz, n_fake=n_fake, seed=seed, features=features)


def record_score(store: Store, run: Run, version: int, quality: Quality) -> None:
    """Keep the score with the run (the dashboard's quality curve; replaces an earlier one)."""
    InstructorStore.of(store).record_quality(run.id, version, **quality.as_dict())
