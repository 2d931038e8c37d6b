"""The DCGAN of Radford et al. (2015), parameterised for 64x64 RGB and a 32x32 CPU variant.

Generator: z -> ConvTranspose stack (kernel 4, stride 2) with BatchNorm + ReLU, Tanh out.
Discriminator: the mirror image, LeakyReLU(0.2), BatchNorm on every layer but the first,
down to a single logit (the sigmoid lives in BCE-with-logits). No biases anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 64  # 64 for the paper's model, 32 for the CPU variant
    channels: int = 3  # 3 for RGB faces, 1 for the built-in grayscale faces
    nz: int = 100  # length of the noise vector z
    ngf: int = 64  # generator feature maps in its last hidden layer
    ndf: int = 64  # discriminator feature maps in its first layer

    @property
    def n_stages(self) -> int:
        # 4x4 -> image_size in stride-2 steps: 4 for 64x64, 3 for 32x32
        return int(math.log2(self.image_size)) - 2


class Generator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        top = cfg.ngf * 2 ** (cfg.n_stages - 1)  # 512 for 64x64 with ngf=64
        layers: list[nn.Module] = [
            # input: nz x 1 x 1
            nn.ConvTranspose2d(cfg.nz, top, 4, 1, 0, bias=False),
            nn.BatchNorm2d(top),
            nn.ReLU(True),
            # state: top x 4 x 4  (512 x 4 x 4 at 64px)
        ]
        ch = top
        for _ in range(cfg.n_stages - 1):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
            # state after each stage, 64px: 256 x 8 x 8 -> 128 x 16 x 16 -> 64 x 32 x 32
            # 32px variant (ngf=32):        64 x 8 x 8 -> 32 x 16 x 16
        layers += [
            nn.ConvTranspose2d(ch, cfg.channels, 4, 2, 1, bias=False),
            nn.Tanh(),
            # output: channels x image_size x image_size, values in [-1, 1]
        ]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(z.shape[0], -1, 1, 1))


class Discriminator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = [
            # input: channels x image_size x image_size
            nn.Conv2d(cfg.channels, cfg.ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            # state: ndf x image_size/2 x image_size/2  (64 x 32 x 32 at 64px)
        ]
        ch = cfg.ndf
        for _ in range(cfg.n_stages - 1):
            layers += [
                nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch * 2),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            ch *= 2
            # state after each stage, 64px: 128 x 16 x 16 -> 256 x 8 x 8 -> 512 x 4 x 4
            # 32px variant (ndf=32):         64 x 8 x 8 -> 128 x 4 x 4
        layers += [
            nn.Conv2d(ch, 1, 4, 1, 0, bias=False),
            # output: 1 x 1 x 1, one logit per image
        ]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """The paper's init: conv weights ~ N(0, 0.02), BatchNorm gamma ~ N(1, 0.02), beta = 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            with torch.no_grad():
                m.weight.normal_(0.0, 0.02, generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.normal_(1.0, 0.02, generator=generator)
                m.bias.zero_()


def build_models(cfg: ModelConfig, seed: int) -> tuple[Generator, Discriminator]:
    """Both networks, initialised deterministically from `seed` (same on every machine)."""
    rng = torch.Generator().manual_seed(seed)
    g, d = Generator(cfg), Discriminator(cfg)
    init_weights(g, rng)
    init_weights(d, rng)
    return g, d
