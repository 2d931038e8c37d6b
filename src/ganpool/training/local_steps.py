"""The local update rule (DiLoCo for a GAN): many steps per unit, one weight change sent.

A unit holds up to H = `local_steps` batches of `unit_size` images (the last unit of an
epoch may hold fewer, and its last batch may be short). On the unit's base version the
worker runs, batch after batch, one step of the DCGAN paper's loop with a fresh Adam per
network (the run's lr_g / lr_d and betas):

  z from the unit's noise generator; fake = G(z)
  D step: BCE(D(x), 1) + BCE(D(fake.detach()), 0), Adam step on D
  G step: BCE(D(fake), 1) through the updated D, frozen; Adam step on G

and sends the change of every parameter, base - local (the outer pseudo-gradient), with the
final BatchNorm statistics. The coordinator averages the changes by images and takes one
outer SGD step with Nesterov momentum on the mean (`OuterSGD`); it adopts the averaged
statistics as the other rules do.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ganpool.models.dcgan import Discriminator, Generator
from ganpool.serialization import deltas
from ganpool.serialization.tensors import Manifest
from ganpool.settings import RunConfig
from ganpool.training.gradients import UnitResult, float_buffers, result_manifest


def local_unit(
    g: Generator, d: Discriminator, real: torch.Tensor, noise_seed: int, cfg: RunConfig
) -> UnitResult:
    """Train `g` and `d` in place on the unit's batches; return their weight change.
    The reported losses and D outputs are the means over the unit's steps, by images."""
    g.train()
    d.train()
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=betas)
    base = {f"G.{n}": p.detach().clone() for n, p in g.named_parameters()}
    base |= {f"D.{n}": p.detach().clone() for n, p in d.named_parameters()}
    noise = torch.Generator().manual_seed(noise_seed)  # one stream, drawn batch after batch
    totals = torch.zeros(4, dtype=torch.float64)  # g_loss, d_loss, d_real, d_fake, by images
    for x in real.split(cfg.unit_size):
        b = x.shape[0]
        ones = torch.ones(b, device=x.device)
        z = torch.randn(b, cfg.nz, generator=noise, device="cpu").to(x.device)
        fake = g(z)
        opt_d.zero_grad(set_to_none=True)
        out_real, out_fake = d(x), d(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(out_real, ones)
        d_loss = d_loss + F.binary_cross_entropy_with_logits(out_fake, torch.zeros_like(ones))
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        d.requires_grad_(False)  # D's parameters receive nothing from the generator's loss
        try:
            g_loss = F.binary_cross_entropy_with_logits(d(fake), ones)
            g_loss.backward()
        finally:
            d.requires_grad_(True)
        opt_g.step()
        step = torch.stack(
            [
                g_loss.detach(),
                d_loss.detach(),
                torch.sigmoid(out_real.detach()).mean(),
                torch.sigmoid(out_fake.detach()).mean(),
            ]
        )
        totals += b * step.double().cpu()
    means = (totals / real.shape[0]).tolist()
    tensors = {}
    with torch.no_grad():
        for prefix, net in (("G", g), ("D", d)):
            for n, p in net.named_parameters():
                tensors[f"grad.{prefix}.{n}"] = (base[f"{prefix}.{n}"] - p).cpu()
            tensors |= {f"buf.{prefix}.{n}": t.cpu().clone() for n, t in float_buffers(net).items()}
    return UnitResult(tensors, g_loss=means[0], d_loss=means[1], d_real=means[2], d_fake=means[3])


class OuterSGD:
    """The coordinator's outer optimiser: SGD with (Nesterov) momentum on the averaged
    pseudo-gradient Δ, written out so its state is plain tensors (checkpointed and replayed
    like Adam's):  m = μ m + Δ;  θ -= lr (Δ + μ m)  with Nesterov,  θ -= lr m  without.
    With μ = 0 and lr = 1 it is plain averaging of the workers' weights."""

    def __init__(
        self, params: dict[str, torch.nn.Parameter], lr: float, momentum: float, nesterov: bool
    ):
        self.params, self.lr, self.mu, self.nesterov = params, lr, momentum, nesterov
        # Zero momentum to start: the first step then moves by lr x Δ (x (1 + μ) with
        # Nesterov), as torch's SGD does, and the state has the same names from version 0 on.
        self.momentum = {k: torch.zeros_like(p) for k, p in params.items()}

    @torch.no_grad()
    def step(self, pseudo: dict[str, torch.Tensor]) -> None:
        for key, p in self.params.items():
            delta = pseudo[key].to(p.dtype)
            m = self.momentum[key].mul_(self.mu).add_(delta)
            update = delta.add(m, alpha=self.mu) if self.nesterov else m
            p.add_(update, alpha=-self.lr)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{k}.momentum": m for k, m in self.momentum.items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.momentum = {k: tensors[f"{k}.momentum"].clone() for k in self.params}


def payload_manifest(
    cfg: RunConfig, g: Generator, d: Discriminator, phase: str = "both"
) -> Manifest:
    """Names, shapes and dtypes of a result's payload as it travels, for the run's rule."""
    if cfg.update_rule != "local":
        return result_manifest(g, d, phase, cfg.transport_dtype)
    return deltas.wire_manifest(result_manifest(g, d, "both"), cfg.delta_dtype)


def payload_tensors(cfg: RunConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A result's tensors ready for `payload_manifest`'s packer (which casts the rest)."""
    if cfg.update_rule != "local":
        return tensors
    return deltas.encode(tensors, cfg.delta_dtype)


def received_tensors(cfg: RunConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checked payload's float32 tensors, as the aggregation takes them."""
    if cfg.update_rule != "local":
        return tensors
    return deltas.decode(tensors, cfg.delta_dtype)
