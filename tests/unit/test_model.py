import torch
from torch.nn import functional as F

from ganpool.models.dcgan import ModelConfig, build_models
from ganpool.training.gradients import unit_gradients


def test_paper_model_has_the_papers_shapes_and_sizes():
    g, d = build_models(ModelConfig(), seed=0)
    assert sum(p.numel() for p in g.parameters()) == 3_576_704
    assert sum(p.numel() for p in d.parameters()) == 2_765_568
    z = torch.randn(2, 100)
    x = g(z)
    assert x.shape == (2, 3, 64, 64)
    assert x.abs().max() <= 1.0
    assert d(x).shape == (2,)
    assert all(
        not hasattr(m, "bias") or m.bias is None
        for m in g.main
        if isinstance(m, torch.nn.ConvTranspose2d)
    )


def test_small_variant_and_seeded_init_are_deterministic():
    cfg = ModelConfig(32, 1, 64, 32, 32)
    g1, d1 = build_models(cfg, seed=7)
    g2, _ = build_models(cfg, seed=7)
    g3, _ = build_models(cfg, seed=8)
    assert g1(torch.zeros(1, 64)).shape == (1, 1, 32, 32)
    assert d1(torch.zeros(3, 1, 32, 32)).shape == (3,)
    w1, w2, w3 = (next(g.parameters()) for g in (g1, g2, g3))
    assert torch.equal(w1, w2)
    assert not torch.equal(w1, w3)
    assert abs(w1.detach().std().item() - 0.02) < 0.002


def _small():
    cfg = ModelConfig(32, 1, 16, 8, 8)
    g, d = build_models(cfg, seed=1)
    real = torch.rand(6, 1, 32, 32) * 2 - 1
    return cfg, g, d, real


def test_d_gradient_is_the_d_loss_alone_and_g_pass_adds_nothing():
    cfg, g, d, real = _small()
    g_ref, d_ref = build_models(ModelConfig(32, 1, 16, 8, 8), seed=1)
    seed = 1234
    result = unit_gradients(g, d, real, seed, cfg.nz)

    # Reference: autograd of the D loss only, on the same noise.
    z = torch.randn(6, cfg.nz, generator=torch.Generator().manual_seed(seed))
    fake = g_ref(z).detach()
    loss = F.binary_cross_entropy_with_logits(d_ref(real), torch.ones(6))
    loss = loss + F.binary_cross_entropy_with_logits(d_ref(fake), torch.zeros(6))
    expected = torch.autograd.grad(loss, list(d_ref.parameters()))
    for (name, _), want in zip(d_ref.named_parameters(), expected, strict=True):
        torch.testing.assert_close(result.tensors[f"grad.D.{name}"], want, rtol=1e-5, atol=1e-7)
    # The networks' own .grad after the call hold no generator-loss contribution either.
    for (name, p), want in zip(d.named_parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7, msg=name)


def test_g_gradient_flows_through_a_frozen_d():
    cfg, g, d, real = _small()
    g_ref, d_ref = build_models(ModelConfig(32, 1, 16, 8, 8), seed=1)
    seed = 99
    result = unit_gradients(g, d, real, seed, cfg.nz)
    z = torch.randn(6, cfg.nz, generator=torch.Generator().manual_seed(seed))
    fake = g_ref(z)
    # D sees real and detached fake first (its BatchNorm state advances as in the worker).
    d_ref(real)
    d_ref(fake.detach())
    loss = F.binary_cross_entropy_with_logits(d_ref(fake), torch.ones(6))
    expected = torch.autograd.grad(loss, list(g_ref.parameters()))
    for (name, _), want in zip(g_ref.named_parameters(), expected, strict=True):
        torch.testing.assert_close(result.tensors[f"grad.G.{name}"], want, rtol=1e-5, atol=1e-7)
    assert all(p.requires_grad for p in d.parameters()), "D must be unfrozen after the unit"


def test_batchnorm_statistics_travel_with_the_gradients():
    cfg, g, d, real = _small()
    before = {k: v.clone() for k, v in g.named_buffers() if v.is_floating_point()}
    result = unit_gradients(g, d, real, 5, cfg.nz)
    for k, v in before.items():
        assert f"buf.G.{k}" in result.tensors
        assert not torch.equal(result.tensors[f"buf.G.{k}"], v), f"{k} did not move"
    assert any(k.startswith("buf.D.") and k.endswith("running_var") for k in result.tensors)
