"""The reference for equality tests: the simultaneous DCGAN update in plain PyTorch.

A distributed run and `train-local` share WeightedMean, TrainingState.apply and
unit_gradients, so comparing one with the other cannot see a bug in any of them. This loop
shares only the model definition and the images with them: the losses, the gradients, the
sample-weighted average, the BatchNorm statistics and the Adam step are written here again,
the way a reader of the DCGAN paper would write them."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ganpool.models.dcgan import build_models
from ganpool.settings import RunConfig

# One unit: its image indices and its noise seed.
Unit = tuple[Sequence[int], int]


def statistics_of(net: nn.Module) -> dict[str, torch.Tensor]:
    """BatchNorm running means and variances (not the integer batch counters)."""
    return {k: v.clone() for k, v in net.named_buffers() if v.is_floating_point()}


def one_unit(g: nn.Module, d: nn.Module, images: torch.Tensor, seed: int, nz: int) -> dict:
    """What a worker sends for one unit, on throwaway copies of the networks:
    gradients of the D loss for D, of the G loss for G, and the BatchNorm statistics
    after D's two passes (real, then fake) and G's one."""
    g, d = copy.deepcopy(g), copy.deepcopy(d)
    g.train(), d.train()
    n = images.shape[0]
    z = torch.randn(n, nz, generator=torch.Generator().manual_seed(seed))
    fake = g(z)
    real_logits, fake_logits = d(images), d(fake.detach())
    d_loss = F.binary_cross_entropy_with_logits(real_logits, torch.ones(n))
    d_loss = d_loss + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros(n))
    d_grads = torch.autograd.grad(d_loss, list(d.parameters()))
    out = {f"buf.G.{k}": v for k, v in statistics_of(g).items()}
    out |= {f"buf.D.{k}": v for k, v in statistics_of(d).items()}
    # Asking for G's parameters only: D's weights get nothing from the generator's loss.
    g_loss = F.binary_cross_entropy_with_logits(d(fake), torch.ones(n))
    g_grads = torch.autograd.grad(g_loss, list(g.parameters()))
    out |= {"metric.g_loss": g_loss.detach(), "metric.d_loss": d_loss.detach()}
    out |= {"metric.d_real": torch.sigmoid(real_logits).mean().detach()}
    out |= {"metric.d_fake": torch.sigmoid(fake_logits).mean().detach()}
    out |= {f"grad.D.{k}": t for (k, _), t in zip(d.named_parameters(), d_grads, strict=True)}
    out |= {f"grad.G.{k}": t for (k, _), t in zip(g.named_parameters(), g_grads, strict=True)}
    return out


def train_plain(
    cfg: RunConfig, dataset, steps: Iterable[list[Unit]], metrics: list | None = None
) -> dict[str, torch.Tensor]:
    """Weights after the given steps, each a list of units averaged by their image counts.
    `metrics`, if given, receives each step's losses and D's outputs, averaged the same way."""
    g, d = build_models(cfg.model, cfg.seed)
    # Same arithmetic as the coordinator, not the same code: its fused Adam kernel, and the
    # float64 sum divided in float32. A GAN step is chaotic where a gradient is near Adam's
    # eps, so one ulp of difference grows to ~1e-5 in three steps; matching the order of
    # operations keeps the comparison tight enough to see a misweighted result.
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=betas, fused=True)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=betas, fused=True)
    for units in steps:
        sums: dict[str, torch.Tensor] = {}
        images = 0
        for indices, seed in units:
            n = len(indices)
            for k, t in one_unit(g, d, dataset.batch(list(indices)), seed, cfg.nz).items():
                sums[k] = sums.get(k, 0) + n * t.double()
            images += n
        mean = {k: s.float() / images for k, s in sums.items()}
        if metrics is not None:
            metrics.append({k[7:]: float(v) for k, v in mean.items() if k.startswith("metric.")})
        for prefix, net, opt in (("G", g, opt_g), ("D", d, opt_d)):
            for name, p in net.named_parameters():
                p.grad = mean[f"grad.{prefix}.{name}"]
            opt.step()
            with torch.no_grad():
                for name, buf in net.named_buffers():
                    if buf.is_floating_point():
                        buf.copy_(mean[f"buf.{prefix}.{name}"])
    return {f"G.{k}": v for k, v in g.state_dict().items()} | {
        f"D.{k}": v for k, v in d.state_dict().items()
    }


def local_round_unit(g: nn.Module, d: nn.Module, images: torch.Tensor, seed: int, cfg) -> dict:
    """The local rule's unit, as the DCGAN paper's loop (pytorch/examples' dcgan) writes it:
    on copies of the base networks, with a fresh Adam each, for every batch of unit_size
    images: a D step on the real batch and a detached fake one, then a G step through the
    updated D. Returns base - trained for every parameter, and the final statistics."""
    base_g, base_d = g, d
    g, d = copy.deepcopy(g), copy.deepcopy(d)
    g.train(), d.train()
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    noise = torch.Generator().manual_seed(seed)
    for start in range(0, images.shape[0], cfg.unit_size):
        real = images[start : start + cfg.unit_size]
        n = real.shape[0]
        fake = g(torch.randn(n, cfg.nz, generator=noise))
        d.zero_grad()
        d_loss = F.binary_cross_entropy_with_logits(d(real), torch.ones(n))
        d_loss = d_loss + F.binary_cross_entropy_with_logits(d(fake.detach()), torch.zeros(n))
        d_loss.backward()
        opt_d.step()
        g.zero_grad()
        # Only G's parameters are asked for: the updated D is a fixed function here.
        g_loss = F.binary_cross_entropy_with_logits(d(fake), torch.ones(n))
        for p, grad in zip(
            g.parameters(), torch.autograd.grad(g_loss, list(g.parameters())), strict=True
        ):
            p.grad = grad
        opt_g.step()
    out = {f"buf.G.{k}": v for k, v in statistics_of(g).items()}
    out |= {f"buf.D.{k}": v for k, v in statistics_of(d).items()}
    for prefix, before, after in (("G", base_g, g), ("D", base_d, d)):
        for (name, p0), p1 in zip(before.named_parameters(), after.parameters(), strict=True):
            out[f"grad.{prefix}.{name}"] = (p0 - p1).detach()
    return out


def train_plain_local(cfg, dataset, rounds: Iterable[list[Unit]]) -> dict[str, torch.Tensor]:
    """Weights after the given rounds of the local rule: each round's weight changes are
    averaged by images and applied by torch's SGD with (Nesterov) momentum, the outer
    optimiser of DiLoCo; with outer_delay 1 a round trains on the version before the one it
    is applied to."""
    g, d = build_models(cfg.model, cfg.seed)
    params = list(g.parameters()) + list(d.parameters())
    outer = torch.optim.SGD(
        params, lr=cfg.outer_lr, momentum=cfg.outer_momentum, nesterov=cfg.outer_nesterov
    )
    history = [copy.deepcopy((g, d))]  # the versions published so far
    for r, units in enumerate(rounds):
        base_g, base_d = history[max(0, r - cfg.outer_delay)]
        sums: dict[str, torch.Tensor] = {}
        images = 0
        for indices, seed in units:
            n = len(indices)
            result = local_round_unit(base_g, base_d, dataset.batch(list(indices)), seed, cfg)
            for k, t in result.items():
                sums[k] = sums.get(k, 0) + n * t.double()
            images += n
        mean = {k: s.float() / images for k, s in sums.items()}
        for prefix, net in (("G", g), ("D", d)):
            for name, p in net.named_parameters():
                p.grad = mean[f"grad.{prefix}.{name}"]
        outer.step()
        with torch.no_grad():
            for prefix, net in (("G", g), ("D", d)):
                for name, buf in net.named_buffers():
                    if buf.is_floating_point():
                        buf.copy_(mean[f"buf.{prefix}.{name}"])
        history.append(copy.deepcopy((g, d)))
    return {f"G.{k}": v for k, v in g.state_dict().items()} | {
        f"D.{k}": v for k, v in d.state_dict().items()
    }
