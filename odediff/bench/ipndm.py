"""iPNDM (Zhang & Chen, DEIS paper, 2022), written from its formulas as an independent reference.

On a decreasing σ grid σ_0 > … > σ_{n−1} = σ_min > σ_n = 0 of the ODE dx̄/dσ = ε(x̄, σ):

    d_i     = ε(x̄_i, σ_i)                                        one evaluation per step
    x̄_{i+1} = x̄_i + (σ_{i+1} − σ_i) · Σ_j w^{(k)}_j d_{i−j},   k = min(i + 1, 4)

with the constant-step Adams–Bashforth weights w^{(1)} = (1), w^{(2)} = (3/2, −1/2),
w^{(3)} = (23/12, −16/12, 5/12), w^{(4)} = (55/24, −59/24, 37/24, −9/24), used unchanged on a
non-uniform grid. The step to σ = 0 is Euler, x̄_n = x̄_{n−1} − σ_{n−1}·d_{n−1}. It uses nothing of
odediff's solvers, only the model and the counting wrapper, so that a test can hold odediff's
``adams`` (weights="fixed", order=4) against it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from odediff.grids import make_grid
from odediff.integrate import CountedField

__all__ = ["AB_WEIGHTS", "ipndm", "ipndm_method", "ipndm_sample"]

AB_WEIGHTS: tuple[tuple[float, ...], ...] = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def ipndm(field: Callable[[Tensor, float], Tensor], xbar: Tensor, sigmas: list[float]) -> Tensor:
    """Integrate x̄ from sigmas[0] down the grid (which must end at 0) by iPNDM; returns x̄ at 0."""
    if len(sigmas) < 2 or sigmas[-1] != 0 or any(b >= a for a, b in itertools.pairwise(sigmas)):
        raise ValueError("sigmas: expected a strictly decreasing grid ending at 0")
    history: list[Tensor] = []  # newest first
    for s, s_next in itertools.pairwise(sigmas):
        history = [field(xbar, s), *history[:3]]
        h = s_next - s
        w = AB_WEIGHTS[0] if s_next == 0 else AB_WEIGHTS[len(history) - 1]
        xbar = xbar + h * sum(wj * d for wj, d in zip(w, history))
    return xbar


def ipndm_sample(model, noise: Tensor, sigmas: list[float] | Tensor) -> tuple[Tensor, int]:
    """x_0 (float64) from VP noise x_T at sigmas[0]; returns (x_0, counted NFE)."""
    sig = [float(s) for s in sigmas]
    fld = CountedField(model, torch.float64)
    xbar = noise.to(torch.float64) * math.sqrt(1 + sig[0] ** 2)
    return ipndm(fld, xbar, sig), fld.nfe


def ipndm_method(grid: str) -> Callable[[object, Tensor, int], tuple[Tensor, int]]:
    """A method for :func:`odediff.bench.study.nfe_error_study`: iPNDM on an odediff grid family with
    ``nfe`` intervals (``nfe`` evaluations: one per positive σ of the grid)."""

    def run(model, noise: Tensor, nfe: int) -> tuple[Tensor, int]:
        return ipndm_sample(model, noise, make_grid(model.schedule, nfe, grid))

    run.__name__ = f"ipndm_{grid}"
    return run
