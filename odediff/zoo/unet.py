"""A compact UNet ε_θ(x_t, t) for small images (1×8×8 digits, 1×16×16 photo patches).

Resolution levels H → H/2 → H/4 (8×8 → 4×4 → 2×2 for the digits, 16×16 → 8×8 → 4×4 for the photo
patches) with GroupNorm+SiLU residual blocks, skip connections between matching levels, and a
sinusoidal embedding of the real (possibly fractional) timestep t.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResBlock", "UNet", "timestep_embedding"]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """[sin(t·ω_k), cos(t·ω_k)] with ω_k = max_period^(−k/(dim/2)), k = 0 … dim/2 − 1.

    ``t`` is a real tensor of shape (batch,); the result has shape (batch, dim).
    """
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    angles = t.float()[:, None] * torch.exp(-math.log(max_period) * k / half)[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + W·e;  out = skip(x) + conv(SiLU(GN(h)))."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int = 8, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (on its skip path)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class UNet(nn.Module):
    """ε_θ(x_t, t): ``forward(x, t)`` with x of shape (batch, channels, H, W) and real t of shape
    (batch,) (a scalar is broadcast). H and W must be divisible by 2^(len(mults) − 1).

    Level i works at resolution H/2^i with ``width·mults[i]`` channels; the decoder mirrors the
    encoder and concatenates its activations (the skip connections).
    """

    def __init__(
        self,
        channels: int = 1,
        width: int = 32,
        mults: Sequence[int] = (1, 2, 2),
        groups: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [width * m for m in mults]
        emb_dim = 4 * width
        self.width = width
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv2d(channels, widths[0], 3, padding=1)

        block = lambda c_in, c_out: ResBlock(c_in, c_out, emb_dim, groups, dropout)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = widths[0]
        for i, w in enumerate(widths):
            self.down.append(block(c, w))
            c = w
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid = block(c, c)
        self.up = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(block(c + w, w))
            c = w
        self.out = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        emb = F.silu(self.time_mlp(timestep_embedding(t, self.width).to(x.dtype)))
        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            if i < len(self.downsample):
                skips.append(h)
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        for block in self.up:
            # nearest-neighbour upsampling; the block's first conv does the mixing
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
