"""Sample grids: images in [-1, 1] tiled into one PNG with numpy and Pillow."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image


def to_grid(images: torch.Tensor, padding: int = 2) -> np.ndarray:
    """N x C x H x W in [-1, 1] -> a uint8 grid, about square, with a dark border."""
    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.uint8)
    pixels = ((images.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = pixels[i]
    return grid


def grid_png(images: torch.Tensor, scale: int = 1) -> bytes:
    arr = to_grid(images)
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@torch.no_grad()
def sample_grid(g: torch.nn.Module, noise: torch.Tensor, scale: int = 2) -> bytes:
    """G in eval mode (its running BatchNorm statistics) on fixed noise, as PNG bytes."""
    was_training = g.training
    g.eval()
    try:
        return grid_png(g(noise), scale=scale)
    finally:
        g.train(was_training)
