"""A round's results read and checked as they land, between ticks and outside any
transaction, so that a step only waits for its last result: each result's tensors (or why
its payload is refused) and, under the mean rule, the running weighted sum of the valid
ones, a unit and its backup copies counted once."""

from __future__ import annotations

import torch

from ganpool.coordinator.screening import Arrived, Screening
from ganpool.errors import PayloadError
from ganpool.settings import RunConfig
from ganpool.store.coordinator import CoordinatorStore
from ganpool.training.gradients import float_buffers
from ganpool.training.state import TrainingState, WeightedMean


class Arrivals:
    def __init__(self, cfg: RunConfig, screening: Screening):
        self.cfg, self.screening = cfg, screening
        self.results: dict[int, Arrived] = {}  # by result id
        self._version = -1  # the version `results` belong to
        self._sum = WeightedMean()
        self._summed: set[int] = set()
        self._summed_families: set[int] = set()
        self._prior: tuple[int, dict[str, torch.Tensor]] | None = None  # a version's buffers

    def collect(self, store: CoordinatorStore, version: int, state: TrainingState) -> None:
        """Read and check the version's results that landed since the last call; under the
        mean rule, fold each valid one into the running sum at once."""
        if self._version != version:
            self.forget()
            self._version = version
        prior = self.prior(version, state)
        for r in store.arrived_results(version):
            if r.id in self.results:
                continue
            known = self.results[r.id] = self.screening.read(store, r.id, r.phase, prior)
            if isinstance(known, PayloadError):
                continue  # the step records the refusal
            # A unit's backup copies: only the first valid result can be applied.
            if (
                self.cfg.aggregation == "mean"
                and r.twin_of is None
                and r.family not in self._summed_families
            ):
                self._sum.add(known[0], float(r.samples))
                self._summed.add(r.id)
                self._summed_families.add(r.family)

    def mean_of(self, result_ids: set[int]) -> dict[str, torch.Tensor] | None:
        """The running sum's mean, if it holds exactly these results (else None)."""
        if self.cfg.aggregation == "mean" and result_ids == self._summed:
            return self._sum.mean()
        return None

    def prior(self, version: int, state: TrainingState) -> dict[str, torch.Tensor]:
        """The version's BatchNorm statistics: every result starts from them."""
        if self._prior is None or self._prior[0] != version:
            buffers = {f"buf.G.{k}": v.clone() for k, v in float_buffers(state.g).items()}
            buffers |= {f"buf.D.{k}": v.clone() for k, v in float_buffers(state.d).items()}
            self._prior = (version, buffers)
        return self._prior[1]

    def forget(self) -> None:
        self.results.clear()
        self._sum.reset()
        self._summed.clear()
        self._summed_families.clear()
