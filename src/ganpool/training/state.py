"""The trainable state of a run: both networks and their optimisers (Adam, or under the
local rule the outer SGD).

`TrainingState` is what the coordinator holds in memory and publishes after each step, and
what `train-local` drives directly. Weights and optimiser state serialise to safetensors.
"""

from __future__ import annotations

import torch

from ganpool.models.dcgan import Discriminator, Generator, build_models
from ganpool.settings import RunConfig
from ganpool.training.gradients import float_buffers
from ganpool.training.local_steps import OuterSGD


class WeightedMean:
    """A running, sample-weighted sum of result tensors.

    Sums are kept in float64, where adding a few hundred fp32 values weighted by sample
    counts is exact in practice: the mean is then the same whatever order results arrive in,
    so the coordinator can fold each result in as it lands. Buffers are allocated once and
    reused across steps (`reset`)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.live: set[str] = set()  # keys added since the last reset
        self.weight = 0.0

    def reset(self) -> None:
        for k in self.live:
            self.sums[k].zero_()
        self.live.clear()
        self.weight = 0.0

    def add(self, tensors: dict[str, torch.Tensor], weight: float) -> None:
        for k, t in tensors.items():
            total = self.sums.get(k)
            if total is None:
                total = self.sums[k] = torch.zeros(t.shape, dtype=torch.float64)
            total.add_(t, alpha=weight)
            self.live.add(k)
        self.weight += weight

    def mean(self) -> dict[str, torch.Tensor]:
        return {k: self.sums[k].to(torch.float32).div_(self.weight) for k in self.live}


def load_weights(g: Generator, d: Discriminator, tensors: dict[str, torch.Tensor]) -> None:
    g.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("G.")})
    d.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("D.")})


def reset_buffers(g: Generator, d: Discriminator, tensors: dict[str, torch.Tensor]) -> None:
    """Put BatchNorm statistics back to a version's (a forward pass in training mode moves
    them): every unit starts from the version's statistics, as if freshly loaded."""
    with torch.no_grad():
        for prefix, net in (("G", g), ("D", d)):
            for name, buf in net.named_buffers():
                buf.copy_(tensors[f"{prefix}.{name}"])


def weights_of(g: Generator, d: Discriminator) -> dict[str, torch.Tensor]:
    out = {f"G.{k}": v for k, v in g.state_dict().items()}
    out |= {f"D.{k}": v for k, v in d.state_dict().items()}
    return out


class TrainingState:
    def __init__(self, cfg: RunConfig):
        self.g, self.d = build_models(cfg.model, cfg.seed)
        self.outer: OuterSGD | None = None
        if cfg.update_rule == "local":
            # The workers' Adams are theirs (fresh per unit); here only the outer step.
            params = {f"G.{n}": p for n, p in self.g.named_parameters()}
            params |= {f"D.{n}": p for n, p in self.d.named_parameters()}
            self.outer = OuterSGD(params, cfg.outer_lr, cfg.outer_momentum, cfg.outer_nesterov)
            return
        betas = (cfg.beta1, cfg.beta2)
        # fused: one kernel over all parameters, ~4x quicker than the loop on a CPU. It sits
        # between a step's last result and the next version's publication.
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr_g, betas=betas, fused=True)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d, betas=betas, fused=True)
        # Create Adam's state up front (as its first step would), so a saved optimiser always
        # has the same tensor names and shapes, from version 0 on.
        for _, p, opt in self._named():
            opt.state[p] = {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p),
            }

    def _named(self):
        for prefix, net, opt in (("G", self.g, self.opt_g), ("D", self.d, self.opt_d)):
            for name, p in net.named_parameters():
                yield f"{prefix}.{name}", p, opt

    def apply(self, mean: dict[str, torch.Tensor]) -> None:
        """One Adam step for each network whose averaged gradients are in `mean` (both under
        the simultaneous rule, D or G alone in an alternating phase), or under the local rule
        one outer step on the averaged weight changes; adopt averaged BN stats."""
        if self.outer is not None:
            self.outer.step({k: mean[f"grad.{k}"] for k in self.outer.params})
            self._adopt_buffers(mean)
            return
        for opt in (self.opt_g, self.opt_d):
            named = [(k, p) for k, p, o in self._named() if o is opt]
            if f"grad.{named[0][0]}" not in mean:
                continue
            for key, p in named:
                p.grad = mean[f"grad.{key}"].to(p.dtype)
            opt.step()
            opt.zero_grad(set_to_none=True)
        self._adopt_buffers(mean)

    def _adopt_buffers(self, mean: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for prefix, net in (("G", self.g), ("D", self.d)):
                for name, buf in float_buffers(net).items():
                    if f"buf.{prefix}.{name}" in mean:
                        buf.copy_(mean[f"buf.{prefix}.{name}"])

    def weights(self) -> dict[str, torch.Tensor]:
        return weights_of(self.g, self.d)

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        load_weights(self.g, self.d, tensors)

    def optimizer_tensors(self) -> dict[str, torch.Tensor]:
        if self.outer is not None:
            return self.outer.state_tensors()
        out = {}
        for key, p, opt in self._named():
            for field, value in opt.state[p].items():
                out[f"{key}.{field}"] = value
        return out

    def load_optimizer(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.outer is not None:
            self.outer.load_state(tensors)
            return
        for key, p, opt in self._named():
            opt.state[p] = {f: tensors[f"{key}.{f}"].clone() for f in opt.state[p]}
