"""`ganpool train-local`: the reference trainer. One process, no database.

It plays the coordinator's and the workers' parts in order: the same unit plan
(ganpool.protocol.schedule), the same per-unit computation on a fresh copy of the current
version, the same sample-weighted mean and the same Adam step. A fault-free distributed run
with `units_per_step == results_per_step` must end with the same weights.

Under the local rule a step is one round: each unit trains a copy of its base version for
its local steps (ganpool.training.local_steps), the weight changes travel through the run's
delta codec, and the outer step applies their mean. With `outer_delay` 1 round r is
computed on version r - 1 (version 0 for rounds 0 and 1), as the coordinator issues it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ganpool.data.datasets import Dataset
from ganpool.models.dcgan import build_models
from ganpool.protocol.schedule import EpochState, plan_units
from ganpool.serialization import deltas
from ganpool.settings import RunConfig
from ganpool.training.gradients import round_for_transport, unit_gradients
from ganpool.training.local_steps import local_unit
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
    # The local rule's base versions, by number: the last two are all a round can need.
    published = {0: _copy(state.weights())}
    for step in range(1, steps + 1):
        units = plan_units(
            epochs,
            len(epochs),
            cfg.units_issued_per_step,
            cfg.unit_images,
            cfg.seed,
            len(dataset),
            seq,
        )
        seq += len(units)
        totals = dict.fromkeys(("g_loss", "d_loss", "d_real", "d_fake"), 0.0)
        # Simultaneous: one phase computing both. Alternating (the paper's loop): a D step on
        # the real images and fresh fakes, then a G step on the same noise through the new D.
        # Local: one round of local training on the round's base version.
        phases = {"alternating": ("D", "G"), "local": ("local",)}.get(cfg.update_rule, ("both",))
        for phase in phases:
            version = state.weights()
            if phase == "local":
                version = published[cfg.base_version(step - 1)]
            mean = WeightedMean()
            for unit in units:
                load_weights(worker_g, worker_d, version)
                real = None if phase == "G" else dataset.batch(unit.indices)
                r = _compute(cfg, worker_g, worker_d, real, unit.noise_seed, phase, unit.indices)
                n = len(unit.indices)
                mean.add(r.tensors, float(n))
                for k in totals:
                    value = getattr(r, k)
                    totals[k] += value * n if value == value else 0.0  # NaN: not computed
            state.apply(mean.mean())
        if cfg.update_rule == "local":
            published[step] = _copy(state.weights())
            published.pop(step - 2, None)
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


def _compute(cfg: RunConfig, g, d, real, noise_seed: int, phase: str, indices: list[int]):
    """A unit's result as the coordinator receives it (after the transport's rounding)."""
    if phase == "local":
        r = local_unit(g, d, real, noise_seed, cfg)
        r.tensors = deltas.round_trip(r.tensors, cfg.delta_dtype)
        return r
    r = unit_gradients(g, d, real, noise_seed, cfg.nz, phase, len(indices))
    r.tensors = round_for_transport(r.tensors, cfg.transport_dtype)
    return r


def _copy(tensors: dict) -> dict:
    return {k: v.clone() for k, v in tensors.items()}
