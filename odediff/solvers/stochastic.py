"""The η family of the DDIM paper, in x̄ coordinates, both directions.

With x̂_0 = x̄ − σε and s the standard deviation of fresh noise z (in x̄ units):

    x̄' = x̂_0 + sqrt(σ'² − s²)·ε + s·z,   s = η·σ'·sqrt(|σ² − σ'²|) / max(σ, σ')

Towards σ = 0 this is DDIM's σ_t(η) = η·sqrt((1−ᾱ')/(1−ᾱ))·sqrt(1−ᾱ/ᾱ') divided by sqrt(ᾱ');
η = 0 is Euler (the ODE), η = 1 over all T steps is DDPM ancestral sampling. Away from σ = 0,
η = 1 is exact forward noising x̄' = x̄ + sqrt(σ'² − σ²)·z. Each step keeps x̄ | x_0 ~ N(x_0, σ'²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .base import Solver, StepGen

__all__ = ["DDIM", "Generators", "check_generators", "randn"]

Generators = torch.Generator | list[torch.Generator] | tuple[torch.Generator, ...] | None


def check_generators(generator: Generators, batch: int) -> None:
    """Refuse a list of generators that is not one ``torch.Generator`` per batch item."""
    if not isinstance(generator, list | tuple):
        return
    if len(generator) != batch:
        raise ValueError(
            f"generator: a list of {len(generator)} generators for a batch of {batch}; "
            "expected one generator per batch item (or a single torch.Generator)"
        )
    bad = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
    if bad:
        raise TypeError(f"generator: expected a list of torch.Generator, got an item of type {bad[0]}")


def randn(
    shape: tuple[int, ...], generator: Generators, *, dtype: torch.dtype, device: torch.device | str
) -> Tensor:
    """Standard normal noise of ``shape`` from one generator, or from a list of them, one per
    batch item (item i is drawn from generator i alone, as diffusers' pipelines draw theirs)."""
    if not isinstance(generator, list | tuple):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    check_generators(generator, shape[0])
    one = (1, *shape[1:])
    return torch.cat([torch.randn(one, generator=g, dtype=dtype, device=device) for g in generator])


@dataclass(frozen=True)
class DDIM(Solver):
    """DDIM with stochasticity η ∈ [0, 1]; reproducible given a ``generator``.

    Each step draws its noise after its one evaluation, from the solve's ``generator`` (the
    state; a list of generators draws batch item i from generator i) or torch's global one.
    """

    eta: float = 0.0
    name: ClassVar[str] = "ddim"
    order: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if isinstance(self.eta, bool) or not isinstance(self.eta, int | float) or not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta: expected a value in [0, 1], got {self.eta!r}")

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta > 0

    def coefficients(self, s0: float, s1: float) -> tuple[float, float]:
        """(c_ε, s) of the step σ0 → σ1, so that x̄' = x̄ + c_ε·ε + s·z."""
        s = self.eta * s1 * math.sqrt(abs(s0 * s0 - s1 * s1)) / max(s0, s1)
        return math.sqrt(s1 * s1 - s * s) - s0, s

    def init(self, sigmas, *, nfe=None, generator=None) -> Generators:
        return generator

    def step(self, s0, s1, xbar, state: Generators) -> StepGen:
        return self.to_zero(s0, s1, xbar, (yield xbar, s0), state)

    def to_zero(self, s0, s1, xbar, eps, state: Generators, sigma_min=0.0):
        c_eps, s = self.coefficients(s0, s1)
        out = xbar.add(eps, alpha=c_eps)
        if s > 0:
            z = randn(tuple(xbar.shape), state, device=xbar.device, dtype=xbar.dtype)
            out = out.add_(z, alpha=s)
        return out, state
