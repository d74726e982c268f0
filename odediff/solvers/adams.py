"""Variable-step Adams–Bashforth on the σ-ODE, one network evaluation per step.

Step i goes from u_i to u_{i+1} with the polynomial P through the last k values of ε at
u_i, u_{i−1}, …, u_{i−k+1} (k ramps up from 1 as history accumulates):

    x̄_{i+1} = x̄_i + Σ_j b_ij ε_{i−j},   b_ij = ∫_{u_i}^{u_{i+1}} ℓ_j(u) w(u) du

with ℓ_j the Lagrange basis. In σ (``variable="sigma"``) w = 1. In λ = log σ
(``variable="log_sigma"``) w = e^λ, since dσ = e^λ dλ: the exponential-integrator form.
``weights="fixed"`` uses the constant-step weights (as if the past steps had the size of the
current one) on the actual grid, as iPNDM does. ``blend`` (one β_i per interval, e.g. found by
:func:`odediff.tune_grid` with ``tune_weights=True``) mixes the orders of each step,
b_i = β_i·b_i^(k) + (1 − β_i)·b_i^(k−1); any β keeps the step consistent (Σ_j b_ij = ∫ w du),
β_i = 1 is plain Adams. All b_ij are computed once per grid in float64.
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


def ab_weights(nodes: list[float], u_next: float, variable: str, start: float | None = None) -> list[float]:
    """Weights b_j for ∫_{start}^{u_next} P(u) w(u) du, P interpolating at ``nodes`` (newest first).

    ``start`` defaults to the newest node (Adams–Bashforth); the Adams–Moulton corrector
    integrates up to the newest node instead. Solved as b = V^{−T} M with V the Vandermonde
    matrix of the nodes relative to ``start``, scaled by the step so that it stays well conditioned.
    """
    u0, k = (nodes[0] if start is None else start), len(nodes)
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
    corrector: bool = False
    blend: tuple[float, ...] = ()
    name: str = "adams"

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3, 4):
            raise ValueError(f"order: expected 1, 2, 3 or 4, got {self.order!r}")
        if self.variable not in ("sigma", "log_sigma"):
            raise ValueError(f"variable: expected 'sigma' or 'log_sigma', got {self.variable!r}")
        if self.weights not in ("exact", "fixed"):
            raise ValueError(f"weights: expected 'exact' or 'fixed', got {self.weights!r}")
        if not isinstance(self.corrector, bool):
            raise ValueError(f"corrector: expected True or False, got {self.corrector!r}")
        try:  # a list (e.g. from a JSON file) becomes a tuple, so the solver stays hashable
            blend = tuple(float(b) for b in self.blend)
        except (TypeError, ValueError):
            raise ValueError(f"blend: expected a sequence of numbers, got {self.blend!r}") from None
        if not all(math.isfinite(b) for b in blend):
            raise ValueError(f"blend: expected finite numbers, got {blend}")
        object.__setattr__(self, "blend", blend)

    def intervals(self, nfe: int) -> int:
        return check_nfe(nfe, self.name)

    @lru_cache(maxsize=64)  # noqa: B019 — solvers are immutable and hashable; grids repeat
    def coefficients(self, sigmas: tuple[float, ...], moulton: bool = False) -> tuple[tuple[float, ...], ...]:
        """Per step, the weights of the newest ε first: Adams–Bashforth for σ_i → σ_{i+1}, or
        with ``moulton`` the Adams–Moulton corrector for σ_{i−1} → σ_i through ε_i … ε_{i−k}."""
        log = self.variable == "log_sigma"
        u = [(math.log(s) if s > 0 else math.nan) if log else s for s in sigmas]
        out = []
        for i in range(len(sigmas) - 1):
            lo, hi = (i - 1, i) if moulton else (i, i + 1)  # the interval the weights integrate
            if lo < 0 or sigmas[lo] == 0 or sigmas[hi] == 0:
                # the interval touching 0 is Euler, uncorrected; ε at σ = 0 joins no polynomial
                out.append(() if moulton else (sigmas[hi] - sigmas[lo],))
                continue
            k, most = 1 + moulton, self.order + moulton
            while k < most and i - k >= 0 and sigmas[i - k] != 0:
                k += 1
            if self.weights == "fixed":
                nodes = [u[i] - j * (u[hi] - u[lo]) for j in range(k)]
            else:
                nodes = u[i - k + 1 : i + 1][::-1]
            b = ab_weights(nodes, u[hi], self.variable, start=u[lo])
            beta = self.blend[i] if self.blend and not moulton else 1.0
            if beta != 1.0 and k > 1:
                lower = [*ab_weights(nodes[:-1], u[hi], self.variable, start=u[lo]), 0.0]
                b = [beta * x + (1 - beta) * y for x, y in zip(b, lower)]
            out.append(tuple(b))
        return tuple(out)

    def init(self, sigmas, xbar, *, nfe=None, generator=None) -> GridState:
        sig = tuple(float(s) for s in sigmas)
        if self.blend and len(self.blend) != len(sig) - 1:
            raise ValueError(
                f"blend: expected one value per interval of the grid ({len(sig) - 1}), got {len(self.blend)}"
            )
        am = self.coefficients(sig, moulton=True) if self.corrector else None
        return GridState(sig, 0, (self.coefficients(sig), (), am, None))

    def step(self, field, xbar, state: GridState):
        """x̄ is the predicted state. With the corrector (PEC, as UniPC's UniC does) the one
        evaluation at the predicted point also corrects it by Adams–Moulton before the next
        prediction: x̄_i ← x̄_{i−1} + Σ_j c_ij ε_{i−j}; the ε history keeps the evaluations."""
        i = state.index
        coeffs, history, am, corrected_prev = state.memory
        keep = self.order if am is None else self.order + 1
        history = (field(xbar, state.sigmas[i]), *history[: keep - 1])
        if am is not None and am[i]:
            xbar = _accumulate(corrected_prev, am[i], history)
        out = _accumulate(xbar, coeffs[i], history)
        return out, state._replace(
            index=i + 1, memory=(coeffs, history, am, xbar if am is not None else None)
        )


def _accumulate(x, weights, history):
    """x + Σ_j w_j ε_j as a new tensor (the first term allocates, the rest accumulate)."""
    out = x.add(history[0], alpha=weights[0])
    for w, e in zip(weights[1:], history[1:]):
        out.add_(e, alpha=w)
    return out
