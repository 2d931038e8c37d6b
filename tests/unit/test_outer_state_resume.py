"""Under the local rule the coordinator's optimiser state is the outer step's momentum: a
resumed coordinator loads it from the checkpoint and goes on exactly where it stopped."""

from __future__ import annotations

import torch

from ganpool.settings import load_run_config
from ganpool.training.state import TrainingState


def test_the_outer_momentum_survives_a_checkpoint_and_reload():
    cfg = load_run_config(preset="small", overrides={"update_rule": "local", "outer_momentum": 0.9})
    before = TrainingState(cfg)
    torch.manual_seed(0)
    before.outer.step({k: torch.randn_like(p) for k, p in before.outer.params.items()})
    saved = {k: v.clone() for k, v in before.optimizer_tensors().items()}
    assert saved and all(v.abs().sum() > 0 for v in saved.values())

    after = TrainingState(cfg)
    after.load_optimizer(saved)
    loaded = after.optimizer_tensors()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
