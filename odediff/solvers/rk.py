"""Explicit Runge–Kutta methods as Butcher tableaux: fixed-step and adaptive (embedded pair).

For dx̄/dσ = f(x̄, σ) and a step h = σ' − σ:

    k_j = f(x̄ + h Σ_{l<j} a_jl k_l, σ + c_j h),   x̄' = x̄ + h Σ_j b_j k_j

A new method is a :class:`Tableau`. The adaptive solver only proposes a step and its error
estimate; accepting it and choosing the next h is the :class:`Controller`'s, in the loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from .base import Solver, StepGen, check_nfe

__all__ = ["DOPRI5", "EULER", "HEUN", "AdaptiveRungeKutta", "Controller", "RungeKutta", "Tableau"]


@dataclass(frozen=True)
class Tableau:
    a: tuple[tuple[float, ...], ...]  # a[j] holds a_j0 … a_j,j−1
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int
    b_low: tuple[float, ...] | None = None  # embedded lower-order weights, for error control
    fsal: bool = False  # last stage is f at the step's end

    @property
    def stages(self) -> int:
        return len(self.b)


EULER = Tableau(a=((),), b=(1.0,), c=(0.0,), order=1)
HEUN = Tableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2)
# Dormand & Prince (1980), RK5(4)7FM
DOPRI5 = Tableau(
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    order=5,
    b_low=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    fsal=True,
)


def _combine(x: Tensor, h: float, weights: tuple[float, ...], ks: list[Tensor]) -> Tensor:
    """x + h Σ w_j k_j, skipping zero weights; always a new tensor."""
    out = None
    for w, k in zip(weights, ks):
        if w != 0.0:
            out = torch.add(x, k, alpha=h * w) if out is None else out.add_(k, alpha=h * w)
    return x.clone() if out is None else out


def _stages(tab: Tableau, x: Tensor, s0: float, h: float, k0: Tensor | None = None):
    """Yield the stage points of one step; return the stage values k_j."""
    ks = [(yield x, s0) if k0 is None else k0]
    for j in range(1, tab.stages):
        ks.append((yield _combine(x, h, tab.a[j], ks), s0 + tab.c[j] * h))
    return ks


class RKState(NamedTuple):
    euler: frozenset[float]  # the upper σ of the intervals taken by Euler to meet the budget


@dataclass(frozen=True)
class RungeKutta(Solver):
    """Fixed-step explicit Runge–Kutta, one tableau step per interval.

    Budget: a full step costs s = ``stages`` evaluations and the interval into σ = 0 one, so
    n intervals cost s(n − 1) + 1. A budget s does not divide is met by taking the first steps
    at high σ (where trajectories are nearly straight) by Euler, saving s − 1 each.
    """

    tableau: Tableau = HEUN
    name: str = "heun"

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.tableau.order

    def intervals(self, nfe: int) -> int:
        nfe = check_nfe(nfe, self.name)
        return 1 + math.ceil((nfe - 1) / self.tableau.stages)

    def init(self, sigmas, *, nfe=None, generator=None) -> RKState:
        n, s = len(sigmas) - 1, self.tableau.stages
        full = [i for i in range(n) if sigmas[i] != 0 and sigmas[i + 1] != 0]
        full.sort(key=lambda i: -max(sigmas[i], sigmas[i + 1]))  # highest σ first, either direction
        if nfe is None or s == 1:
            return RKState(frozenset())
        excess = s * len(full) + (n - len(full)) - nfe
        if excess < 0 or excess % (s - 1) or excess // (s - 1) > len(full):
            raise ValueError(f"nfe: {self.name} cannot spend exactly {nfe} on a grid of {n} intervals")
        return RKState(frozenset(max(sigmas[i], sigmas[i + 1]) for i in full[: excess // (s - 1)]))

    def step(self, s0, s1, xbar, state: RKState) -> StepGen:
        tab = EULER if max(s0, s1) in state.euler else self.tableau
        ks = yield from _stages(tab, xbar, s0, s1 - s0)
        return _combine(xbar, s1 - s0, tab.b, ks), state


@dataclass(frozen=True)
class Controller:
    """Integral step-size controller: h' = h·clip(safety·err^(−1/(p+1)), lo, hi), err the RMS
    of the error estimate over atol + rtol·|x̄|; a step is accepted when err ≤ 1."""

    rtol: float = 1e-4
    atol: float = 1e-4
    safety: float = 0.9
    lo: float = 0.2
    hi: float = 10.0

    def error(self, x: Tensor, x_new: Tensor, err: Tensor) -> float:
        scale = self.atol + self.rtol * torch.maximum(x.abs(), x_new.abs())
        return float((err / scale).square().mean().sqrt())

    def next_h(self, h: float, err: float, order: int) -> float:
        factor = self.hi if err == 0 else self.safety * err ** (-1 / (order + 1))
        return h * min(self.hi, max(self.lo, factor))

    def initial_h(self, x: Tensor, f0: Tensor, span: float) -> float:
        """Hairer's first guess h = 0.01·‖x‖/‖f‖ in the error norm, towards the span's end."""
        scale = self.atol + self.rtol * x.abs()
        d0 = float((x / scale).square().mean().sqrt())
        d1 = float((f0 / scale).square().mean().sqrt())
        h = 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-6 * abs(span)
        return math.copysign(min(h, abs(span)), span)


class AdaptiveState(NamedTuple):
    known: tuple[tuple[float, Tensor], ...] = ()  # (σ, ε there) of the last trial: its start, FSAL end
    error: Tensor | None = None  # the last trial's error estimate x̄_high − x̄_low


@dataclass(frozen=True)
class AdaptiveRungeKutta(Solver):
    """Embedded Runge–Kutta pair (default Dormand–Prince 5(4)); the loop's :class:`Controller`
    accepts its steps. Raises :class:`~odediff.BudgetExceeded` rather than exceed ``max_nfe``."""

    rtol: float = 1e-4
    atol: float = 1e-4
    max_nfe: int = 2000
    tableau: Tableau = DOPRI5
    name: str = "rk45"
    adaptive: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"rtol, atol: expected positive tolerances, got {self.rtol}, {self.atol}")
        check_nfe(self.max_nfe, self.name)

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.tableau.order

    @property
    def controller(self) -> Controller:
        return Controller(self.rtol, self.atol)

    def intervals(self, nfe: int) -> int:
        raise ValueError(f"nfe: {self.name} is adaptive; set rtol/atol and max_nfe instead of nfe")

    def init(self, sigmas, *, nfe=None, generator=None) -> AdaptiveState:
        return AdaptiveState()

    def remember(self, state: AdaptiveState, sigma: float, eps: Tensor) -> AdaptiveState:
        """The state knowing ε at σ (the loop evaluates it for the first step size)."""
        return state._replace(known=((sigma, eps),))

    def step(self, s0, s1, xbar, state: AdaptiveState) -> StepGen:
        """One trial step σ0 → σ1; ε at σ0 is reused if the last trial knew it (FSAL or retry)."""
        tab, h = self.tableau, s1 - s0
        k0 = next((k for s, k in state.known if s == s0), None)
        ks = yield from _stages(tab, xbar, s0, h, k0)
        x_new = _combine(xbar, h, tab.b, ks)
        err = _combine(torch.zeros_like(xbar), h, tuple(b - bl for b, bl in zip(tab.b, tab.b_low)), ks)
        known = ((s0, ks[0]), (s1, ks[-1])) if tab.fsal else ((s0, ks[0]),)
        return x_new, AdaptiveState(known, err)
