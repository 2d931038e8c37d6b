"""`train-local` against a plain PyTorch loop written apart from ganpool.training, with
units whose sizes differ (unit_size 30 on 100 faces: 30, 30, 30, then 10 closes the epoch)."""

import pytest
import torch

from ganpool.data.datasets import builtin_faces
from ganpool.protocol.schedule import EpochState, plan_units
from ganpool.settings import load_run_config
from ganpool.training.local import train_local
from tests.plain_dcgan import train_plain, train_plain_local


def test_train_local_with_uneven_units_equals_a_plain_pytorch_loop():
    cfg = load_run_config(
        overrides={"unit_size": 30, "results_per_step": 2, "update_rule": "simultaneous"}
    )
    dataset = builtin_faces(cfg.image_size, cfg.channels)
    epochs: list[EpochState] = []
    steps = []
    for step in range(3):
        units = plan_units(epochs, len(epochs), 2, 30, cfg.seed, len(dataset), 2 * step)
        steps.append([(u.indices, u.noise_seed) for u in units])
    sizes = [[len(indices) for indices, _ in units] for units in steps]
    assert sizes == [[30, 30], [30, 10], [30, 30]]  # unequal weights, by design

    metrics = []
    want = train_plain(cfg, dataset, steps, metrics)
    reports, seen = [], []

    def on_step(report, state):
        reports.append(report)
        seen.append({k: v.clone() for k, v in state.weights().items()})

    got = train_local(cfg, dataset, steps=3, on_step=on_step).weights()
    # Each step hands on the state it reached (`ganpool train-local` draws its samples from it).
    assert all(torch.equal(seen[-1][k], v) for k, v in got.items())
    assert any(not torch.equal(seen[0][k], v) for k, v in got.items())
    # What it reports per step: the images it used and the epochs done so far.
    assert [(r.step, r.images, r.epochs) for r in reports] == [
        (1, 60, 0.6),
        (2, 40, 1.0),
        (3, 60, 1.6),
    ]
    # ...and its losses and D's outputs, averaged by images like everything else.
    for r, m in zip(reports, metrics, strict=True):
        for k, v in m.items():
            assert getattr(r, k) == pytest.approx(v, rel=1e-5), (r.step, k)
    assert set(got) == set(want)
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, rtol=1e-5, atol=1e-6, msg=name)
    # Every BatchNorm statistic, G's and D's, moved (and the loop above agrees on where to).
    start = train_plain(cfg, dataset, [])
    for name in want:
        if "running_" in name:
            assert not torch.equal(want[name], start[name]), name


@pytest.mark.parametrize(
    ("outer_delay", "outer"),
    [(0, (0.7, 0.9)), (1, (1.0, 0.0))],
    ids=["synchronous-nesterov", "delayed-averaging"],
)
def test_train_local_local_rule_equals_a_plain_pytorch_loop(outer_delay, outer):
    """H = 3 local steps of unit_size 10: units of 30 images, and the epoch's last unit holds
    10 (one local step, not three): rounds of [30, 30], [30, 10], [30, 30]."""
    cfg = load_run_config(
        overrides={
            "update_rule": "local",
            "unit_size": 10,
            "local_steps": 3,
            "results_per_step": 2,
            "delta_dtype": "float32",
            "outer_delay": outer_delay,
            "outer_lr": outer[0],  # DiLoCo's outer step, and plain averaging
            "outer_momentum": outer[1],
        }
    )
    dataset = builtin_faces(cfg.image_size, cfg.channels)
    epochs: list[EpochState] = []
    rounds = []
    for r in range(3):
        units = plan_units(epochs, len(epochs), 2, 30, cfg.seed, len(dataset), 2 * r)
        rounds.append([(u.indices, u.noise_seed) for u in units])
    assert [[len(i) for i, _ in units] for units in rounds] == [[30, 30], [30, 10], [30, 30]]

    want = train_plain_local(cfg, dataset, rounds)
    got = train_local(cfg, dataset, steps=3).weights()
    assert set(got) == set(want)
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, rtol=1e-5, atol=1e-6, msg=name)
    # The reference itself moved every network and every BatchNorm statistic.
    start = train_plain_local(cfg, dataset, [])
    for name in want:
        if "num_batches" not in name:
            assert not torch.equal(want[name], start[name]), name
