"""What a worker has done so far, as its `on_unit` callback and the CLI read it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ganpool.protocol.vocabulary import Phase
from ganpool.store.worker import ClaimedUnit, Rejection, Standing, Verdict
from ganpool.throughput import RecentImages

log = logging.getLogger(__name__)


@dataclass
class WorkerProgress:
    version: int = -1
    units: int = 0
    images: int = 0
    rejected: int = 0
    place: int = 0  # on the run's leaderboard (0 = not ranked yet)
    of_workers: int = 0
    compute_s: float = 0.0
    started: float = 0.0
    last_message: str = ""
    recent: RecentImages = field(default_factory=RecentImages)

    @property
    def images_per_s(self) -> float:
        """This worker's share of the run's speed, measured the run's way (ganpool.throughput)."""
        return self.recent.rate()

    def count(self, unit: ClaimedUnit, verdict: Verdict) -> None:
        """A submitted unit's answer (a refusal is counted from `rejections`)."""
        self.version = unit.version
        if not verdict.accepted:
            return
        self.units += 1
        if unit.phase != Phase.G:  # a G phase reuses its D phase's images
            self.images += len(unit.indices)
            self.recent.add(len(unit.indices))

    def note_rejections(self, rejections: list[Rejection]) -> None:
        """Refusals at submission and at aggregation alike, each with its reason."""
        self.last_message = "; ".join(f"unit {r.unit_id} rejected: {r.reason}" for r in rejections)
        for r in rejections:
            self.rejected += 1
            log.warning("unit %s rejected: %s", r.unit_id, r.reason)

    def note_standing(self, standing: Standing | None) -> None:
        if standing:
            self.place, self.of_workers = standing.place, standing.of_workers
