"""Shared fixtures: a closed-form Gaussian model and a tiny random network."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from odediff.schedules import DiscreteSchedule

torch.set_num_threads(1)


class GaussianData:
    """Data x_0 ~ N(μ, s²I): ε = σ(x̄ − μ)/(s² + σ²), and the exact flow
    x̄(σ) − μ = (x̄(σ₀) − μ)·sqrt((s² + σ²)/(s² + σ₀²))."""

    def __init__(self, mu: float = 0.3, s: float = 0.5, schedule: DiscreteSchedule | None = None):
        self.mu, self.s2 = mu, s * s
        self.schedule = schedule or DiscreteSchedule.linear()
        self.calls = 0

    def eps(self, xbar, sigma):
        self.calls += 1
        return sigma * (xbar - self.mu) / (self.s2 + sigma * sigma)

    def parameters_like(self):
        return None

    def flow(self, xbar0, sigma0: float, sigma1: float):
        return self.mu + (xbar0 - self.mu) * math.sqrt((self.s2 + sigma1**2) / (self.s2 + sigma0**2))


class TinyNet(nn.Module):
    """A small conv net with a sinusoidal embedding of (real) t, random weights.

    ε = x_t + 0.1·tanh(conv(…)): like a trained predictor, ε ≈ x_t at high noise, so samples
    stay O(1) rather than growing with σ_max."""

    def __init__(self, channels: int = 1, width: int = 16):
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.emb = nn.Linear(16, width)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, t):
        freqs = torch.exp(-math.log(1000.0) * torch.arange(8, dtype=torch.float32) / 8)
        ang = t.float()[:, None] * freqs[None]
        e = self.emb(torch.cat([ang.sin(), ang.cos()], 1).to(x.dtype))
        h = torch.tanh(self.inp(x) + e[:, :, None, None])
        return x + 0.1 * torch.tanh(self.out(torch.tanh(self.mid(h))))


@pytest.fixture
def gauss():
    return GaussianData()


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def unet():
    """A tiny random diffusers UNet2DModel (3 channels, 8×8), the same for every test module."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        in_channels=3, out_channels=3, sample_size=8, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()  # fmt: skip
