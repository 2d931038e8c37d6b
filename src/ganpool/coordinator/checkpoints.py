"""Checkpoints, and getting back to the database's newest version after a restart.

A checkpoint is the Adam state of one version, saved with the deletion of the payloads it
has absorbed, at most every `checkpoint_s`, after a step's commit. Applied payloads stay
until then, so a restart loads the checkpoint and replays the versions after it from the
very results that formed them, and checks it reproduces their published weights."""

from __future__ import annotations

import logging
import time

import torch

from ganpool.aggregation.robust import aggregate
from ganpool.coordinator.screening import Screening
from ganpool.errors import GanpoolError
from ganpool.runs import Run
from ganpool.serialization.tensors import Packer, manifest_of, unpack
from ganpool.store.coordinator import CoordinatorStore
from ganpool.training.state import TrainingState

log = logging.getLogger(__name__)


class Checkpoints:
    def __init__(self, run: Run, every_s: float):
        self.run, self.cfg = run, run.config
        self.every_s = every_s  # at most this long between checkpoints
        self.saved = -1  # the version whose Adam state is saved
        self.at = time.monotonic()
        self._packer: Packer | None = None  # reused buffers for the Adam state

    def due(self, version: int, published: bool, over: bool) -> bool:
        """Only right after a publication (or at the end), when the workers have just
        started on the new version: never while the last result of a step may be landing."""
        recent = published and time.monotonic() - self.at >= self.every_s
        return version != self.saved and (over or recent)

    def save(self, store: CoordinatorStore, state: TrainingState, version: int) -> None:
        """Save the Adam state of `version` and drop the payloads it has absorbed."""
        tensors = state.optimizer_tensors()
        if self._packer is None:
            self._packer = Packer(manifest_of(tensors))
        keep_from = version - self.cfg.keep_versions + 1  # replays now start from here
        store.save_checkpoint(version, self._packer.pack(tensors), keep_from)
        self.saved = version
        self.at = time.monotonic()

    def restore(self, store: CoordinatorStore, screening: Screening) -> tuple[TrainingState, int]:
        """A model and optimiser exactly at the database's newest version, and that version:
        the checkpoint, then the versions published after it replayed from their results."""
        state = TrainingState(self.cfg)
        saved = store.checkpoint()
        if saved is None:
            raise GanpoolError(f"run {self.run.name!r} has no checkpoint to resume from")
        state.load_weights(self.weights(store, state, saved.version))
        state.load_optimizer(unpack(saved.optimizer, manifest_of(state.optimizer_tensors())))
        self.saved = version = saved.version
        for v in range(saved.version + 1, store.current_version() + 1):
            self._replay(store, screening, state, v)
            version = v
        screening.reload_history(store)
        return state, version

    def weights(
        self, store: CoordinatorStore, state: TrainingState, version: int
    ) -> dict[str, torch.Tensor]:
        blob = store.weights(version)
        if blob is None:
            raise GanpoolError(f"run {self.run.name!r}: the weights of version {version} are gone")
        return unpack(blob, manifest_of(state.weights()))

    def _replay(
        self, store: CoordinatorStore, screening: Screening, state: TrainingState, v: int
    ) -> None:
        """Redo the step that produced version v from the results it applied."""
        results = []
        for r in store.contributions(v):
            blob = store.payload(r.result_id)
            if blob is None:
                raise GanpoolError(f"cannot replay version {v}: result {r.result_id} is gone")
            results.append((screening.check(blob, r.phase), float(r.samples)))
        c = self.cfg
        if results:  # none: a G phase refused everywhere, republished as it was
            state.apply(aggregate(results, c.aggregation, c.trim_fraction, c.clip_factor))
        published = self.weights(store, state, v)
        for k, t in state.weights().items():
            if not torch.allclose(t.double(), published[k].double(), rtol=1e-4, atol=1e-7):
                raise GanpoolError(f"replaying version {v} does not reproduce its weights ({k})")
        state.load_weights(published)  # what the workers were sent is authoritative
        log.info("replayed version %d from %d result(s)", v, len(results))
