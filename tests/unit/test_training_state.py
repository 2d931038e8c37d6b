"""The coordinator's state and a unit's result, piece by piece: Adam's saved state, one
network stepped per phase, BatchNorm statistics reset, the transport rounding, manifests,
and what each phase of a unit computes (checked against autograd written out here)."""

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from ganpool.models.dcgan import build_models
from ganpool.settings import load_run_config
from ganpool.training.gradients import (
    payload_limit,
    result_manifest,
    round_for_transport,
    unit_gradients,
)
from ganpool.training.state import TrainingState, reset_buffers, weights_of

CFG = load_run_config(overrides={"nz": 16, "ngf": 8, "ndf": 8})


def fake_mean(state: TrainingState, seed: int, nets: str = "GD") -> dict[str, torch.Tensor]:
    """Made-up averaged gradients (and statistics) for `nets`, the shape of a real mean."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, net in (("G", state.g), ("D", state.d)):
        if prefix not in nets:
            continue
        for name, p in net.named_parameters():
            out[f"grad.{prefix}.{name}"] = torch.randn(p.shape, generator=gen) * 1e-2
        for name, b in net.named_buffers():
            if b.is_floating_point():
                out[f"buf.{prefix}.{name}"] = torch.rand(b.shape, generator=gen) + 0.5
    return out


def test_saved_adam_state_resumes_the_same_steps():
    first = TrainingState(CFG)
    before = {k: v.shape for k, v in first.optimizer_tensors().items()}
    first.apply(fake_mean(first, 1))
    saved = {k: v.clone() for k, v in first.optimizer_tensors().items()}
    # Same names and shapes from version 0 on (a checkpoint always fits).
    assert {k: v.shape for k, v in saved.items()} == before
    assert saved["G.main.0.weight.step"] == 1.0

    resumed, forgetful = TrainingState(CFG), TrainingState(CFG)
    for s in (resumed, forgetful):
        s.load_weights(first.weights())
    resumed.load_optimizer(saved)
    for s in (first, resumed, forgetful):
        s.apply(fake_mean(s, 2))
    for k, v in first.weights().items():
        assert torch.equal(resumed.weights()[k], v), k
    assert any(not torch.equal(forgetful.weights()[k], v) for k, v in first.weights().items())


def test_a_phase_steps_only_the_network_whose_gradients_it_carries():
    state = TrainingState(CFG)
    start = {k: v.clone() for k, v in state.weights().items()}
    mean = fake_mean(state, 3, nets="D")
    state.apply(mean)
    after = state.weights()
    assert all(torch.equal(after[k], v) for k, v in start.items() if k.startswith("G."))
    moved = [k for k, v in start.items() if k.startswith("D.") and not torch.equal(after[k], v)]
    assert moved
    steps = state.optimizer_tensors()
    assert steps["G.main.0.weight.step"] == 0.0 and steps["D.main.0.weight.step"] == 1.0
    # The D phase's statistics were adopted, exactly.
    for name, buf in state.d.named_buffers():
        if buf.is_floating_point():
            assert torch.equal(buf, mean[f"buf.D.{name}"]), name


def test_reset_buffers_puts_back_the_versions_statistics():
    g, d = build_models(CFG.model, 0)
    version = {k: v.clone() for k, v in weights_of(g, d).items()}
    g.train(), d.train()
    d(g(torch.randn(4, CFG.nz)))  # a training-mode pass moves the running statistics
    moved = [k for k, v in weights_of(g, d).items() if not torch.equal(v, version[k])]
    assert any(k.startswith("G.") for k in moved) and any(k.startswith("D.") for k in moved)
    reset_buffers(g, d, version)
    for k, v in weights_of(g, d).items():
        assert torch.equal(v, version[k]), k


def test_transport_rounds_gradients_only():
    value = torch.tensor([1.0 + 2**-10])  # not representable in bfloat16 (8-bit mantissa)
    tensors = {"grad.G.w": value.clone(), "buf.G.m": value.clone()}
    sent = round_for_transport(tensors, torch.bfloat16)
    assert sent["grad.G.w"].dtype == torch.float32
    assert sent["grad.G.w"].item() == 1.0
    assert torch.equal(sent["buf.G.m"], value)
    assert round_for_transport(tensors, torch.float32) is tensors


def test_manifests_follow_the_phase_and_the_size_limit_follows_the_manifest():
    g, d = build_models(CFG.model, 0)
    both = result_manifest(g, d, "both", torch.bfloat16)
    d_phase = result_manifest(g, d, "D", torch.bfloat16)
    g_phase = result_manifest(g, d, "G", torch.bfloat16)
    assert set(g_phase) == {f"grad.G.{n}" for n, _ in g.named_parameters()}
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in d_phase} == {
        "grad.D",
        "buf.G",
        "buf.D",
    }
    assert both == d_phase | g_phase
    assert all(dtype == torch.bfloat16 for k, (_, dtype) in both.items() if k.startswith("grad."))
    assert all(dtype == torch.float32 for k, (_, dtype) in both.items() if k.startswith("buf."))
    assert both["grad.G.main.0.weight"][0] == tuple(g.main[0].weight.shape)
    assert payload_limit({"a": ((2, 3), torch.float32), "b": ((4,), torch.bfloat16)}) == (
        2 * 4 * (6 + 4) + 65536
    )


def _by_hand(g, d, real, seed):
    """The unit's losses and probabilities, on copies, in the worker's order."""
    g, d = copy.deepcopy(g), copy.deepcopy(d)
    n = real.shape[0]
    fake = g(torch.randn(n, CFG.nz, generator=torch.Generator().manual_seed(seed)))
    out_real, out_fake = d(real), d(fake.detach())
    d_loss = F.binary_cross_entropy_with_logits(out_real, torch.ones(n))
    d_loss = d_loss + F.binary_cross_entropy_with_logits(out_fake, torch.zeros(n))
    g_loss = F.binary_cross_entropy_with_logits(d(fake), torch.ones(n))
    return {
        "d_loss": d_loss.item(),
        "g_loss": g_loss.item(),
        "d_real": torch.sigmoid(out_real).mean().item(),
        "d_fake": torch.sigmoid(out_fake).mean().item(),
    }


def test_each_phase_computes_its_part_and_reports_the_rest_as_not_computed():
    g, d = build_models(CFG.model, 4)
    real = torch.rand(5, 1, 32, 32) * 2 - 1
    want = _by_hand(g, d, real, 11)

    both = unit_gradients(g, d, real, 11, CFG.nz)
    for k, v in want.items():
        assert getattr(both, k) == pytest.approx(v, rel=1e-5), k
    assert set(both.tensors) == set(result_manifest(g, d, "both"))

    d_only = unit_gradients(g, d, real, 11, CFG.nz, phase="D")
    assert set(d_only.tensors) == set(result_manifest(g, d, "D"))
    assert math.isnan(d_only.g_loss)
    assert d_only.d_loss == pytest.approx(want["d_loss"], rel=1e-5)

    g_only = unit_gradients(g, d, None, 11, CFG.nz, phase="G", batch=5)
    assert set(g_only.tensors) == set(result_manifest(g, d, "G"))
    assert all(math.isnan(getattr(g_only, k)) for k in ("d_loss", "d_real", "d_fake"))
    # In training mode BatchNorm normalises by the batch, so the G phase alone gives the
    # same loss and gradients as the G half of "both".
    assert g_only.g_loss == pytest.approx(want["g_loss"], rel=1e-5)
    for name, t in g_only.tensors.items():
        torch.testing.assert_close(t, both.tensors[name], rtol=1e-5, atol=1e-7, msg=name)
