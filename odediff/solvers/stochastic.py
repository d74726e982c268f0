"""The η family of the DDIM paper, in x̄ coordinates, both directions.

With x̂_0 = x̄ − σε and s the standard deviation of fresh noise z (in x̄ units):

    x̄' = x̂_0 + sqrt(σ'² − s²)·ε + s·z,   s = η·σ'·sqrt(|σ² − σ'²|) / max(σ, σ')

Towards σ = 0 this is DDIM's σ_t(η) = η·sqrt((1−ᾱ')/(1−ᾱ))·sqrt(1−ᾱ/ᾱ') divided by sqrt(ᾱ');
η = 0 is Euler (the ODE), η = 1 over all T steps is DDPM ancestral sampling. Away from σ = 0,
η = 1 is exact forward noising x̄' = x̄ + sqrt(σ'² − σ²)·z. Each step keeps x̄ | x_0 ~ N(x_0, σ'²).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from .base import GridState, Solver, check_nfe

__all__ = ["DDIM"]


@dataclass(frozen=True)
class DDIM(Solver):
    """DDIM with stochasticity η ∈ [0, 1]; reproducible given a ``generator``."""

    eta: float = 0.0
    name: str = "ddim"
    order: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta: expected a value in [0, 1], got {self.eta!r}")

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta > 0

    def intervals(self, nfe: int) -> int:
        return check_nfe(nfe, self.name)

    def coefficients(self, sigmas: tuple[float, ...]) -> tuple[tuple[float, float], ...]:
        """(c_ε, s) per step, so that x̄' = x̄ + c_ε·ε + s·z."""
        out = []
        for s0, s1 in itertools.pairwise(sigmas):
            s = self.eta * s1 * math.sqrt(abs(s0 * s0 - s1 * s1)) / max(s0, s1)
            out.append((math.sqrt(s1 * s1 - s * s) - s0, s))
        return tuple(out)

    def init(self, sigmas, xbar, *, nfe=None, generator=None) -> GridState:
        sig = tuple(float(s) for s in sigmas)
        return GridState(sig, 0, self.coefficients(sig), generator)

    def step(self, field, xbar, state: GridState):
        i = state.index
        c_eps, s = state.memory[i]
        out = xbar.add(field(xbar, state.sigmas[i]), alpha=c_eps)
        if s > 0:
            z = torch.randn(xbar.shape, generator=state.generator, device=xbar.device, dtype=xbar.dtype)
            out = out.add_(z, alpha=s)
        return out, state._replace(index=i + 1)
