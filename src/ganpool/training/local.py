"""`ganpool train-local`: the reference trainer. One process, no database.

It plays the coordinator's and the workers' parts in order: the same unit plan
(ganpool.protocol.schedule), the same per-unit computation on a fresh copy of the current
version, the same sample-weighted mean and the same Adam step. A fault-free distributed run
with `units_per_step == results_per_step` must end with the same weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ganpool.data.datasets import Dataset
from ganpool.models.dcgan import build_models
from ganpool.protocol.schedule import EpochState, plan_units
from ganpool.settings import RunConfig
from ganpool.training.gradients import round_for_transport, unit_gradients
from ganpool.training.state import TrainingState, WeightedMean, load_weights


@dataclass
class LocalStep:
    step: int
    g_loss: float
    d_loss: float
    d_real: float
    d_fake: float
    images: int
    epochs: float


def train_local(
    cfg: RunConfig,
    dataset: Dataset,
    steps: int,
    on_step: Callable[[LocalStep, TrainingState], None] | None = None,
) -> TrainingState:
    state = TrainingState(cfg)
    worker_g, worker_d = build_models(cfg.model, cfg.seed)  # the "worker's" copies
    epochs: list[EpochState] = []
    seq = 0
    images_done = 0
    for step in range(1, steps + 1):
        units = plan_units(
            epochs,
            len(epochs),
            cfg.units_issued_per_step,
            cfg.unit_size,
            cfg.seed,
            len(dataset),
            seq,
        )
        seq += len(units)
        totals = dict.fromkeys(("g_loss", "d_loss", "d_real", "d_fake"), 0.0)
        # Simultaneous: one phase computing both. Alternating (the paper's loop): a D step on
        # the real images and fresh fakes, then a G step on the same noise through the new D.
        phases = ("D", "G") if cfg.update_rule == "alternating" else ("both",)
        for phase in phases:
            version = state.weights()
            mean = WeightedMean()
            for unit in units:
                load_weights(worker_g, worker_d, version)
                real = None if phase == "G" else dataset.batch(unit.indices)
                r = unit_gradients(
                    worker_g, worker_d, real, unit.noise_seed, cfg.nz, phase, len(unit.indices)
                )
                n = len(unit.indices)
                mean.add(round_for_transport(r.tensors, cfg.transport_dtype), float(n))
                for k in totals:
                    value = getattr(r, k)
                    totals[k] += value * n if value == value else 0.0  # NaN: not computed
            state.apply(mean.mean())
        n_images = sum(len(u.indices) for u in units)
        images_done += n_images
        if on_step:
            on_step(
                LocalStep(
                    step,
                    *(totals[k] / n_images for k in totals),
                    n_images,
                    images_done / len(dataset),
                ),
                state,
            )
    return state
