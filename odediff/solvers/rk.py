"""Explicit Runge–Kutta methods as Butcher tableaux: fixed-step and adaptive (embedded pair).

For dx̄/dσ = f(x̄, σ) and a step h = σ' − σ:

    k_j = f(x̄ + h Σ_{l<j} a_jl k_l, σ + c_j h),   x̄' = x̄ + h Σ_j b_j k_j

The interval touching σ = 0 is taken by Euler (its stages would lie below σ_min).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from ..integrate import BudgetExceeded
from .base import GridState, Solver, check_nfe, touches_zero

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


def _stages(tab: Tableau, field, x: Tensor, s0: float, h: float, k0: Tensor | None = None) -> list[Tensor]:
    ks = [field(x, s0) if k0 is None else k0]
    for j in range(1, tab.stages):
        ks.append(field(_combine(x, h, tab.a[j], ks), s0 + tab.c[j] * h))
    return ks


@dataclass(frozen=True)
class RungeKutta(Solver):
    """Fixed-step explicit Runge–Kutta on the σ grid.

    With an ``nfe`` budget that the tableau's stage count does not divide, the first steps
    (at high σ, where trajectories are nearly straight) are taken by Euler instead.
    """

    tableau: Tableau = HEUN
    name: str = "heun"

    @property
    def order(self) -> int:
        return self.tableau.order

    def intervals(self, nfe: int) -> int:
        check_nfe(nfe, self.name)
        s = self.tableau.stages
        return 1 + math.ceil((nfe - 1) / s)

    def init(self, sigmas, xbar, *, nfe=None, generator=None) -> GridState:
        sig = tuple(float(s) for s in sigmas)
        n = len(sig) - 1
        low = [touches_zero(sig[i], sig[i + 1]) for i in range(n)]
        if nfe is not None:
            s = self.tableau.stages
            excess = sum(1 if lo else s for lo in low) - nfe
            for i in range(n):  # each Euler step in place of a full one saves s − 1
                if s > 1 and excess >= s - 1 and not low[i]:
                    low[i], excess = True, excess - (s - 1)
            if excess:
                raise ValueError(f"nfe: {self.name} cannot spend exactly {nfe} on a grid of {n} intervals")
        return GridState(sig, 0, tuple(low))

    def step(self, field, xbar, state: GridState):
        i, sig = state.index, state.sigmas
        s0, h = sig[i], sig[i + 1] - sig[i]
        tab = EULER if state.memory[i] else self.tableau
        ks = _stages(tab, field, xbar, s0, h)
        return _combine(xbar, h, tab.b, ks), state._replace(index=i + 1)


@dataclass(frozen=True)
class Controller:
    """Integral step-size controller: h' = h·clip(safety·err^(−1/(p+1)), lo, hi)."""

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


class AdaptiveState(NamedTuple):
    sigmas: tuple[float, ...]  # segment ends; the adaptive march is within a segment
    segment: int
    sigma: float
    h: float
    k0: Tensor | None  # FSAL: f at (x̄, σ) if known
    moved: bool
    rejected: int

    @property
    def done(self) -> bool:
        return self.segment >= len(self.sigmas) - 1

    @property
    def index(self) -> int:
        return self.segment

    @property
    def total(self) -> None:
        return None


@dataclass(frozen=True)
class AdaptiveRungeKutta(Solver):
    """Embedded Runge–Kutta pair with error control (default Dormand–Prince 5(4)).

    A step is accepted when the RMS of err/(atol + rtol·|x̄|) is ≤ 1. Raises
    :class:`BudgetExceeded` rather than exceed ``max_nfe``.
    """

    rtol: float = 1e-4
    atol: float = 1e-4
    max_nfe: int = 2000
    tableau: Tableau = DOPRI5
    name: str = "rk45"
    adaptive: ClassVar[bool] = True

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def controller(self) -> Controller:
        return Controller(self.rtol, self.atol)

    def intervals(self, nfe: int) -> int:
        raise ValueError(f"nfe: {self.name} is adaptive; set rtol/atol and max_nfe instead of nfe")

    def init(self, sigmas, xbar, *, nfe=None, generator=None) -> AdaptiveState:
        if self.rtol <= 0 or self.atol <= 0:
            raise ValueError(f"rtol, atol: expected positive tolerances, got {self.rtol}, {self.atol}")
        sig = tuple(float(s) for s in sigmas)
        return AdaptiveState(sig, 0, sig[0], 0.0, None, False, 0)

    def step(self, field, xbar, state: AdaptiveState):
        seg, s, sig = state.segment, state.sigma, state.sigmas
        end = sig[seg + 1]
        if touches_zero(sig[seg], end):  # Euler across the interval touching 0
            x_new = _combine(xbar, end - s, EULER.b, [field(xbar, s)])
            return x_new, state._replace(segment=seg + 1, sigma=end, h=0.0, k0=None, moved=True)
        tab, ctl = self.tableau, self.controller
        k0 = state.k0 if state.k0 is not None else field(xbar, s)
        h = state.h or self._initial_h(xbar, k0, end - s)
        h = math.copysign(min(abs(h), abs(end - s)), end - s)
        if field.nfe + tab.stages - 1 > self.max_nfe:
            raise BudgetExceeded(
                f"max_nfe: {self.name} used {field.nfe} evaluations and reached σ={s:.6g} of "
                f"{end:.6g}; raise max_nfe={self.max_nfe} or loosen rtol={self.rtol}, atol={self.atol}"
            )
        ks = _stages(tab, field, xbar, s, h, k0)
        x_new = _combine(xbar, h, tab.b, ks)
        err_vec = _combine(torch.zeros_like(xbar), h, tuple(b - bl for b, bl in zip(tab.b, tab.b_low)), ks)
        err = ctl.error(xbar, x_new, err_vec)
        h_next = ctl.next_h(h, err, tab.order - 1)
        if err > 1.0:
            return xbar, state._replace(h=h_next, k0=k0, moved=False, rejected=state.rejected + 1)
        s_new = end if abs(end - (s + h)) <= 1e-12 * abs(end - sig[seg]) else s + h
        k_next = ks[-1] if tab.fsal else None
        if s_new == end:
            seg, h_next, k_next = seg + 1, 0.0, None  # next segment starts afresh
        return x_new, state._replace(segment=seg, sigma=s_new, h=h_next, k0=k_next, moved=True)

    def _initial_h(self, x: Tensor, f0: Tensor, span: float) -> float:
        """Hairer's first guess h = 0.01·‖x‖/‖f‖ in the error norm."""
        scale = self.atol + self.rtol * x.abs()
        d0 = float((x / scale).square().mean().sqrt())
        d1 = float((f0 / scale).square().mean().sqrt())
        h = 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-6 * abs(span)
        return min(h, abs(span))
