"""Pictures: sample grids."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def image_grid(x: Tensor, nrow: int | None = None, pad: int = 1) -> Tensor:
    """Tile a batch (N, C, H, W) in [−1, 1] into one (H', W', C) image in [0, 1]."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    n, h, w, c = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    out = torch.ones(ncol * (h + pad) + pad, nrow * (w + pad) + pad, c)
    for i in range(n):
        top, left = (pad + k * (size + pad) for k, size in zip(divmod(i, nrow), (h, w)))
        out[top : top + h, left : left + w] = x[i]
    return out


def save_grid(x: Tensor, path: str, nrow: int | None = None, scale: int = 4) -> None:
    """Save a batch in [−1, 1] as a PNG grid, each pixel ``scale``×``scale``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = image_grid(x, nrow).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    img = img.squeeze(-1) if img.shape[-1] == 1 else img
    plt.imsave(path, img.numpy(), cmap="gray", vmin=0, vmax=1)
