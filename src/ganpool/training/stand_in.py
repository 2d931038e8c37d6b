"""A stand-in for a unit's computation, for benchmarks that simulate a GPU.

`stand_in(images_per_s)` returns a `compute_unit` for `Worker(..., compute_unit=...)`: it
sleeps `images / images_per_s` seconds instead of training and returns a result of the real
size and shape that the coordinator's screening accepts (finite values of similar norms,
BatchNorm statistics of the unit's base version), for whichever update rule the run uses.
Nothing it returns trains the model: a benchmark measures transfers and waits with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ganpool.models.dcgan import Discriminator, Generator
from ganpool.settings import RunConfig
from ganpool.store.worker import ClaimedUnit
from ganpool.training.gradients import UnitResult, float_buffers, result_manifest

SCALE = 1e-4  # of the stand-in gradients or weight changes: small, so nothing diverges


def stand_in(images_per_s: float) -> Callable[..., UnitResult]:
    made: dict[str, dict[str, torch.Tensor]] = {}  # random tensors, drawn once per phase

    def compute_unit(
        g: Generator,
        d: Discriminator,
        real: torch.Tensor | None,
        unit: ClaimedUnit,
        cfg: RunConfig,
    ) -> UnitResult:
        phase = "both" if cfg.update_rule == "local" else unit.phase
        if phase not in made:
            noise = torch.Generator().manual_seed(len(made))
            made[phase] = {
                k: SCALE * torch.randn(shape, generator=noise)
                for k, (shape, _) in result_manifest(g, d, phase).items()
                if k.startswith("grad.")
            }
        time.sleep(len(unit.indices) / images_per_s)
        tensors = dict(made[phase])
        if phase != "G":  # the base version's statistics: what some batch could give
            for prefix, net in (("G", g), ("D", d)):
                tensors |= {f"buf.{prefix}.{n}": t.cpu() for n, t in float_buffers(net).items()}
        return UnitResult(tensors, g_loss=0.7, d_loss=1.4, d_real=0.5, d_fake=0.5)

    return compute_unit
