"""Variable-step Adams–Bashforth on the σ-ODE, one network evaluation per step.

Step i goes from u_i to u_{i+1} with the polynomial P through the last k values of ε at
u_i, u_{i−1}, …, u_{i−k+1} (k ramps up from 1 as history accumulates):

    x̄_{i+1} = x̄_i + Σ_j b_ij ε_{i−j},   b_ij = ∫_{u_i}^{u_{i+1}} ℓ_j(u) w(u) du

with ℓ_j the Lagrange basis. In σ (``variable="sigma"``) w = 1. In λ = log σ
(``variable="log_sigma"``) w = e^λ, since dσ = e^λ dλ: the exponential-integrator form.
``weights="fixed"`` uses the constant-step weights (as if the past steps had the size of the
current one) on the actual grid, as iPNDM does. All b_ij are computed once per grid in float64.
The interval touching σ = 0 is one Euler step, as for every solver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Literal

import numpy as np

from .base import GridState, Solver, check_nfe

__all__ = ["Adams", "ab_weights"]


@cache
def _gauss_legendre(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


def _exp_moments(H: float, k: int) -> np.ndarray:
    """I_m = ∫_0^H e^h h^m dh for m < k, by Gauss–Legendre (exact to round-off for |H| ≲ 10)."""
    x, w = _gauss_legendre()
    h = 0.5 * H * (x + 1)
    return np.array([0.5 * H * np.sum(w * np.exp(h) * h**m) for m in range(k)])


def ab_weights(nodes: list[float], u_next: float, variable: str) -> list[float]:
    """Weights b_j for ∫_{u_0}^{u_next} P(u) w(u) du, P interpolating at ``nodes`` (newest first).

    Solved as b = V^{−T} M with V the Vandermonde matrix of the nodes relative to u_0, scaled
    by the step so that it stays well conditioned.
    """
    u0, k = nodes[0], len(nodes)
    H = u_next - u0
    scale = abs(H)
    r = np.array([(u - u0) / scale for u in nodes])
    V = r[:, None] ** np.arange(k)[None, :]
    if variable == "sigma":
        sgn = math.copysign(1.0, H)
        M = np.array([scale * sgn ** (m + 1) / (m + 1) for m in range(k)])
    else:  # log_sigma: ∫ e^{u0+h} h^m dh, divided by scale^m
        M = math.exp(u0) * _exp_moments(H, k) / scale ** np.arange(k)
    return np.linalg.solve(V.T, M).tolist()


@dataclass(frozen=True)
class Adams(Solver):
    """Adams–Bashforth of order ≤ ``order`` (1–4) with coefficients for the actual grid."""

    order: int = 3
    variable: Literal["sigma", "log_sigma"] = "sigma"
    weights: Literal["exact", "fixed"] = "fixed"
    name: str = "adams"

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3, 4):
            raise ValueError(f"order: expected 1, 2, 3 or 4, got {self.order!r}")
        if self.variable not in ("sigma", "log_sigma"):
            raise ValueError(f"variable: expected 'sigma' or 'log_sigma', got {self.variable!r}")
        if self.weights not in ("exact", "fixed"):
            raise ValueError(f"weights: expected 'exact' or 'fixed', got {self.weights!r}")

    def intervals(self, nfe: int) -> int:
        return check_nfe(nfe, self.name)

    @lru_cache(maxsize=64)  # noqa: B019 — solvers are immutable and hashable; grids repeat
    def coefficients(self, sigmas: tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
        """b_ij for every step of the grid (newest ε first)."""
        log = self.variable == "log_sigma"
        u = [(math.log(s) if s > 0 else math.nan) if log else s for s in sigmas]
        out = []
        for i in range(len(sigmas) - 1):
            if sigmas[i] == 0 or sigmas[i + 1] == 0:  # the interval touching 0 is Euler,
                out.append((sigmas[i + 1] - sigmas[i],))  # and ε at σ = 0 joins no polynomial
                continue
            k = 1
            while k < self.order and i - k >= 0 and sigmas[i - k] != 0:
                k += 1
            if self.weights == "fixed":
                nodes = [u[i] - j * (u[i + 1] - u[i]) for j in range(k)]
            else:
                nodes = u[i - k + 1 : i + 1][::-1]
            out.append(tuple(ab_weights(nodes, u[i + 1], self.variable)))
        return tuple(out)

    def init(self, sigmas, xbar, *, nfe=None, generator=None) -> GridState:
        sig = tuple(float(s) for s in sigmas)
        return GridState(sig, 0, (self.coefficients(sig), ()))

    def step(self, field, xbar, state: GridState):
        i = state.index
        coeffs, history = state.memory
        history = (field(xbar, state.sigmas[i]), *history[: self.order - 1])
        b = coeffs[i]
        out = xbar.add(history[0], alpha=b[0])  # a new tensor; the rest accumulates into it
        for bj, e in zip(b[1:], history[1:]):
            out.add_(e, alpha=bj)
        return out, state._replace(index=i + 1, memory=(coeffs, history))
