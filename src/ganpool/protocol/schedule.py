"""The rules that make a run reproducible: epoch permutations, unit contents and noise seeds.

Both the coordinator (state in the database) and `train-local` (state in memory) use these
functions, so a distributed run and the local reference see the same units in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

_EPOCH_STREAM, _NOISE_STREAM, _SAMPLE_STREAM, _SPOT_STREAM = 1, 2, 3, 4


def _seed(run_seed: int, stream: int, n: int) -> int:
    # SeedSequence mixes its inputs well; 62 bits fit a PostgreSQL bigint and a torch seed.
    state = np.random.SeedSequence([run_seed, stream, n]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(2))


def epoch_seed(run_seed: int, epoch: int) -> int:
    return _seed(run_seed, _EPOCH_STREAM, epoch)


def noise_seed(run_seed: int, unit_seq: int) -> int:
    """The unit's noise: fixed by the run's seed and the unit's issue number."""
    return _seed(run_seed, _NOISE_STREAM, unit_seq)


def sample_seed(run_seed: int) -> int:
    """Fixed noise for sample grids, the same for every version."""
    return _seed(run_seed, _SAMPLE_STREAM, 0)


def spot_check_chosen(run_seed: int, unit_seq: int, rate: float) -> bool:
    """Whether a unit is also issued to a second worker: a fixed, unpredictable draw."""
    return rate > 0 and _seed(run_seed, _SPOT_STREAM, unit_seq) / 2**62 < rate


@lru_cache(maxsize=4)
def permutation(seed: int, size: int) -> tuple[int, ...]:
    return tuple(int(i) for i in np.random.Generator(np.random.PCG64(seed)).permutation(size))


@dataclass
class EpochState:
    """Where an epoch stands: images before `cursor` in its permutation have been handed out;
    `returned` holds images handed back (cancelled, expired or rejected units), reissued first."""

    epoch: int
    seed: int
    size: int
    cursor: int = 0
    returned: list[int] = field(default_factory=list)
    skipped: int = 0  # fresh images passed over because they were quarantined (this plan)

    @classmethod
    def start(cls, run_seed: int, epoch: int, size: int) -> EpochState:
        return cls(epoch=epoch, seed=epoch_seed(run_seed, epoch), size=size)

    @property
    def remaining(self) -> int:
        return len(self.returned) + self.size - self.cursor

    def take(self, n: int, skip: frozenset[int] = frozenset()) -> list[int]:
        """Up to n images for the next unit: given-back images first, then fresh ones.
        Fresh images in `skip` (quarantined: no worker could decode them) are passed over
        and counted in `skipped`."""
        out = self.returned[:n]
        self.returned = self.returned[n:]
        order = permutation(self.seed, self.size)
        while len(out) < n and self.cursor < self.size:
            image = order[self.cursor]
            self.cursor += 1
            if image in skip:
                self.skipped += 1
            else:
                out.append(image)
        return out

    def give_back(self, indices: list[int]) -> None:
        self.returned = self.returned + list(indices)


@dataclass(frozen=True)
class PlannedUnit:
    seq: int
    epoch: int
    indices: list[int]
    noise_seed: int


def plan_units(
    epochs: list[EpochState],
    next_epoch: int,
    count: int,
    unit_size: int,
    run_seed: int,
    dataset_size: int,
    first_seq: int,
    skip: frozenset[int] = frozenset(),
) -> list[PlannedUnit]:
    """The next `count` units. Takes from the oldest epoch with images left and opens a new
    epoch (appended to `epochs`) when none has any; a unit never spans two epochs. Images
    in `skip` are never handed out (see EpochState.take)."""
    if len(skip) >= dataset_size:
        raise ValueError("every image of the dataset is quarantined")
    units = []
    seq = first_seq
    while len(units) < count:
        open_ = next((e for e in epochs if e.remaining > 0), None)
        if open_ is None:
            open_ = EpochState.start(run_seed, next_epoch, dataset_size)
            epochs.append(open_)
            next_epoch += 1
        indices = open_.take(unit_size, skip)
        if not indices:  # the epoch's last images were all quarantined
            continue
        units.append(PlannedUnit(seq, open_.epoch, indices, noise_seed(run_seed, seq)))
        seq += 1
    return units
