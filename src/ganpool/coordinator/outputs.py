"""What the coordinator makes for people, after a step's commit and off the workers'
critical path: a sample grid every `sample_every` steps (in the database, and as a PNG file
when there is an output folder) and, every `quality_every` steps, the generator's KID and FID
against the run's images."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ganpool.data.datasets import check_fingerprint, open_dataset
from ganpool.errors import GanpoolError
from ganpool.evaluation.grid import sample_grid
from ganpool.models.dcgan import Generator
from ganpool.protocol.schedule import sample_seed
from ganpool.protocol.vocabulary import step_to_version, version_to_step
from ganpool.runs import Run
from ganpool.store.coordinator import CoordinatorStore

log = logging.getLogger(__name__)


class Outputs:
    def __init__(self, run: Run, out_dir: Path | None, data_path: Path | None):
        self.run, self.cfg = run, run.config
        self.out_dir = out_dir
        self.data_path = data_path  # only for the quality metric (the coordinator trains blind)
        gen = torch.Generator().manual_seed(sample_seed(self.cfg.seed))
        self.sample_noise = torch.randn(64, self.cfg.nz, generator=gen)
        self.sample_every = step_to_version(self.cfg.sample_every, self.cfg.versions_per_step)
        self.quality_every = step_to_version(self.cfg.quality_every, self.cfg.versions_per_step)
        self._quality = None  # (Inception features, the real images' features), made on first use

    def store_sample(self, store: CoordinatorStore, g: Generator, version: int) -> None:
        png = sample_grid(g, self.sample_noise)
        store.insert_sample(version, png)
        if self.out_dir:
            folder = self.out_dir / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            step = version_to_step(version, self.cfg.versions_per_step)
            (folder / f"step_{step:06d}.png").write_bytes(png)

    def quality_due(self, before: int, version: int) -> bool:
        every = self.quality_every
        return bool(every) and version // every != before // every

    def measure_quality(self, store: CoordinatorStore, g: Generator, version: int) -> None:
        """KID/FID of the generator against the run's images, stored per version. Slow
        (Inception on the CPU). A metric that cannot run is switched off with one warning."""
        from ganpool.evaluation.quality import generator_quality

        try:
            features, real = self._features()
        except GanpoolError as e:
            log.warning("quality_every is set but the metric cannot run: %s", e)
            self.quality_every = 0
            return
        c = self.cfg
        q = generator_quality(
            g, None, c.nz, c.quality_samples, c.seed, features=features, real_features=real
        )
        store.insert_quality(version, **q.as_dict())
        log.info("version %d: KID %.4f ± %.4f, FID %.1f", version, q.kid, q.kid_std, q.fid)

    def _features(self):
        if self._quality is None:
            from ganpool.evaluation.quality import InceptionFeatures

            c = self.cfg
            dataset = open_dataset(c.dataset, c.image_size, c.channels, self.data_path)
            check_fingerprint(dataset, self.run.fingerprint, self.run.dataset_size)
            n = min(len(dataset), c.quality_samples)
            features = InceptionFeatures()
            picks = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
            self._quality = (features, features(dataset.batch(picks[:n].tolist())))
        return self._quality
