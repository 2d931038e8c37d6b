"""One work unit's gradients: the computation every worker and `train-local` run.

The update rule ("simultaneous"): on version v, with real images x and noise z,
  D loss = BCE(D(x), 1) + BCE(D(G(z).detach()), 0)   -> gradients of D only
  G loss = BCE(D(G(z)), 1), D frozen                  -> gradients of G only
Both gradients are taken at version v, and the coordinator steps both networks at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ganpool.models.dcgan import Discriminator, Generator
from ganpool.protocol.vocabulary import Phase


@dataclass
class UnitResult:
    tensors: dict[str, torch.Tensor]  # "grad.G.*", "grad.D.*", "buf.G.*", "buf.D.*"
    g_loss: float
    d_loss: float
    d_real: float  # mean D(x), as a probability
    d_fake: float  # mean D(G(z)) before D's update, as a probability


def float_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """BatchNorm running statistics (num_batches_tracked is unused with a fixed momentum)."""
    return {k: v for k, v in module.named_buffers() if v.is_floating_point()}


def unit_gradients(
    g: Generator,
    d: Discriminator,
    real: torch.Tensor | None,
    noise_seed: int,
    nz: int,
    phase: str = Phase.BOTH,
    batch: int | None = None,
) -> UnitResult:
    """A unit's result. `phase` "both" is the simultaneous rule (D and G gradients on the
    same weights); the alternating rule computes "D" (needs `real`) on one version, then "G"
    (needs only `batch`, the same noise) on the next, whose D has already been stepped."""
    g.train()
    d.train()
    g.zero_grad(set_to_none=True)
    d.zero_grad(set_to_none=True)
    b = real.shape[0] if real is not None else batch
    device = real.device if real is not None else next(g.parameters()).device
    ones, zeros = torch.ones(b, device=device), torch.zeros(b, device=device)
    z = torch.randn(b, nz, generator=torch.Generator().manual_seed(noise_seed), device="cpu")
    fake = g(z.to(device))
    tensors: dict[str, torch.Tensor] = {}
    nan = float("nan")
    d_loss = g_loss = out_real = out_fake = None

    if phase in (Phase.BOTH, Phase.D):
        # The fake batch is detached, so the D loss sends nothing into G.
        out_real = d(real)
        out_fake = d(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(out_real, ones)
        d_loss = d_loss + F.binary_cross_entropy_with_logits(out_fake, zeros)
        d_loss.backward()
        tensors |= {f"grad.D.{n}": p.grad.detach().clone() for n, p in d.named_parameters()}
        # D's statistics come from its own phase only: the G pass is not training D.
        tensors |= {f"buf.D.{n}": t.clone() for n, t in float_buffers(d).items()}
        # G's statistics come from its one forward pass, made here.
        tensors |= {f"buf.G.{n}": t.clone() for n, t in float_buffers(g).items()}

    if phase in (Phase.BOTH, Phase.G):
        # Through a frozen D: D's parameters receive nothing from the generator's loss.
        d.requires_grad_(False)
        try:
            g_loss = F.binary_cross_entropy_with_logits(d(fake), ones)
            g_loss.backward()
        finally:
            d.requires_grad_(True)
        tensors |= {f"grad.G.{n}": p.grad.detach().clone() for n, p in g.named_parameters()}

    return UnitResult(
        tensors={k: v.cpu() for k, v in tensors.items()},
        g_loss=g_loss.item() if g_loss is not None else nan,
        d_loss=d_loss.item() if d_loss is not None else nan,
        d_real=torch.sigmoid(out_real.detach()).mean().item() if out_real is not None else nan,
        d_fake=torch.sigmoid(out_fake.detach()).mean().item() if out_fake is not None else nan,
    )


def result_manifest(
    g: Generator, d: Discriminator, phase: str = Phase.BOTH, transport: torch.dtype = torch.float32
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes a unit result must have for this model and phase. Gradients
    travel in the run's transport dtype; BatchNorm statistics (a few KB) always in fp32."""
    m: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    if phase in (Phase.BOTH, Phase.G):
        m |= {f"grad.G.{n}": (tuple(p.shape), transport) for n, p in g.named_parameters()}
    if phase in (Phase.BOTH, Phase.D):
        m |= {f"grad.D.{n}": (tuple(p.shape), transport) for n, p in d.named_parameters()}
        m |= {f"buf.G.{n}": (tuple(t.shape), t.dtype) for n, t in float_buffers(g).items()}
        m |= {f"buf.D.{n}": (tuple(t.shape), t.dtype) for n, t in float_buffers(d).items()}
    return m


def payload_limit(manifest: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> int:
    """Default size limit of a result: twice its fp32 tensors, plus room for the header."""
    return 2 * sum(4 * torch.Size(shape).numel() for shape, _ in manifest.values()) + 65536


def round_for_transport(
    tensors: dict[str, torch.Tensor], transport: torch.dtype
) -> dict[str, torch.Tensor]:
    """What the coordinator receives of a result sent in `transport`: gradients rounded to it
    and back (train-local applies this so that it matches a distributed run exactly)."""
    if transport == torch.float32:
        return tensors
    return {
        k: v.to(transport).to(v.dtype) if k.startswith("grad.") else v for k, v in tensors.items()
    }
