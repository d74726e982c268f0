"""Variable-step Adams methods on the σ-ODE, one network evaluation per step.

Step i goes from u_i to u_{i+1} with the polynomial P through the last k values of ε at
u_i, u_{i−1}, …, u_{i−k+1} (k ramps up from 1 as history accumulates):

    x̄_{i+1} = x̄_i + Σ_j b_ij ε_{i−j},   b_ij = ∫_{u_i}^{u_{i+1}} ℓ_j(u) w(u) du

with ℓ_j the Lagrange basis. The variable u:

- ``"sigma"``: u = σ, w = 1;
- ``"log_sigma"``: u = λ = log σ, w = e^λ (dσ = e^λ dλ): the exponential-integrator form;
- ``"index"``: u = the grid index, in which every grid is uniform; w = dσ/du from the
  polynomial through the grid points (dx̄/du = ε·dσ/du).

``predict="x0"`` (with ``"log_sigma"``, as DPM-Solver++) interpolates the data prediction
x̂_0 = x̄ − σε instead and integrates d(x̄/σ)/dλ = −x̂_0·e^{−λ}:
x̄_{i+1} = (σ_{i+1}/σ_i)·x̄_i − σ_{i+1} Σ_j c_ij x̂_0,{i−j}; order 1 is DDIM again.
``weights="fixed"`` uses the constant-step weights (as if the past steps had the size of the
current one) on the actual grid, as iPNDM does. ``corrector=True`` adds the Adams–Moulton
correction (PEC, as UniPC's UniC) with the same one evaluation: the method has order ``order``
with a predictor of order ``order`` − 1 (1 at order 1).

The default, ``adams`` of :data:`odediff.SOLVERS`, is order 3 with the corrector on the data
prediction in log σ with exact weights: chosen on the zoo's trained networks and the mixture
together (README, "How the defaults were chosen"); on a short grid from a high σ_max it runs at
``short_order`` = 2 (:meth:`Adams.order_on`); ``.order`` is the order as the grid is refined.
The final step into σ = 0 adds ``final`` (by default ½ with ``predict="x0"`` on grids of at most
:data:`EXTRAPOLATED` intervals, :meth:`Adams.final_on`) times the linear extrapolation of x̂_0 in σ
from the last two evaluations down to σ_min, where the model's ODE ends (:meth:`Adams.to_zero`).
``blend`` (one β_i per interval) mixes the orders of each step, b_i = β_i·b_i^(k) +
(1 − β_i)·b_i^(k−1); any β keeps the step consistent (Σ_j b_ij = ∫ w du), β_i = 1 is plain Adams.
The b_ij are computed in float64 from the σ history the state carries (cached: grids repeat).
After the interval touching σ = 0 the history starts afresh.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import ClassVar, Literal, NamedTuple

import numpy as np
from torch import Tensor

from ..grids import LOW_SIGMA_MAX
from .base import Solver, StepGen

__all__ = ["EXTRAPOLATED", "SHORT", "Adams", "ab_weights"]

SHORT = 4  # grids of at most this many intervals use ``short_order``
EXTRAPOLATED = 8  # grids of at most this many intervals extrapolate x̂_0 in the final step (``final``)


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


class AdamsState(NamedTuple):
    order: int  # the order on this grid (:meth:`Adams.order_on`), fixed at init
    final: float  # the final step's extrapolation weight on this grid (:meth:`Adams.final_on`)
    sigmas: tuple[float, ...] = ()  # σ of the ε history, newest first
    eps: tuple[Tensor, ...] = ()  # the ε history, newest first
    index: int = 0  # intervals stepped so far (which ``blend`` value applies)
    corrected: Tensor | None = None  # the corrector's x̄ at sigmas[0]


@dataclass(frozen=True)
class Adams(Solver):
    """Adams of order ≤ ``order`` (1–4) with coefficients for the actual grid (module docstring)."""

    order: int = 3
    variable: Literal["sigma", "log_sigma", "index"] = "log_sigma"
    weights: Literal["exact", "fixed"] = "exact"
    corrector: bool = True
    blend: tuple[float, ...] = ()
    predict: Literal["eps", "x0"] = "x0"
    short_order: int | None = 2
    final: float | None = None
    name: ClassVar[str] = "adams"

    def __post_init__(self) -> None:
        if not _is_order(self.order):
            raise ValueError(f"order: expected 1, 2, 3 or 4, got {self.order!r}")
        if self.short_order is not None and not _is_order(self.short_order):
            raise ValueError(f"short_order: expected None, 1, 2, 3 or 4, got {self.short_order!r}")
        if self.variable not in ("sigma", "log_sigma", "index"):
            raise ValueError(f"variable: expected 'sigma', 'log_sigma' or 'index', got {self.variable!r}")
        if self.weights not in ("exact", "fixed"):
            raise ValueError(f"weights: expected 'exact' or 'fixed', got {self.weights!r}")
        if self.predict not in ("eps", "x0"):
            raise ValueError(f"predict: expected 'eps' or 'x0', got {self.predict!r}")
        if self.predict == "x0" and self.variable != "log_sigma":
            raise ValueError(
                f"predict: 'x0' is the exponential-integrator form in log σ; with variable={self.variable!r} "
                "pass predict='eps'"
            )
        final = self.final
        if final is not None and (isinstance(final, bool) or not isinstance(final, (int, float))
                                  or not math.isfinite(final)):  # fmt: skip
            raise ValueError(f"final: expected None or a finite number, got {final!r}")
        if final and self.predict != "x0":
            raise ValueError(f"final: extrapolates x̂_0, so it needs predict='x0'; got {final!r} with 'eps'")
        if not isinstance(self.corrector, bool):
            raise ValueError(f"corrector: expected True or False, got {self.corrector!r}")
        try:  # a list (e.g. from a JSON file) becomes a tuple, so the solver stays hashable
            blend = tuple(float(b) for b in self.blend)
        except (TypeError, ValueError):
            raise ValueError(f"blend: expected a sequence of numbers, got {self.blend!r}") from None
        if not all(math.isfinite(b) for b in blend):
            raise ValueError(f"blend: expected finite numbers, got {blend}")
        object.__setattr__(self, "blend", blend)

    def init(self, sigmas, *, nfe=None, generator=None) -> AdamsState:
        if self.blend and len(self.blend) != len(sigmas) - 1:
            raise ValueError(
                f"blend: expected one value per interval of the grid ({len(sigmas) - 1}), "
                f"got {len(self.blend)}"
            )
        return AdamsState(self.order_on(sigmas), self.final_on(sigmas))

    def order_on(self, sigmas) -> int:
        """The order used on a grid: ``short_order`` on a grid of at most :data:`SHORT` intervals
        that reaches above σ = :data:`odediff.grids.LOW_SIGMA_MAX` (a linear or cosine schedule's
        σ_max), else ``order``. With four evaluations the order-3 polynomial through x̂_0 at σ_max
        and two low-noise points measured worse than order 2 on every such network (README)."""
        short = self.short_order is not None and len(sigmas) - 1 <= SHORT
        return self.short_order if short and max(map(float, sigmas)) > LOW_SIGMA_MAX else self.order

    def _weights(self, nodes: tuple[float, ...], lo: float, hi: float, index: int, moulton: bool):
        """Weights of ε at ``nodes`` (σ, newest first) for ∫ over σ ∈ [lo, hi]."""
        beta = self.blend[index] if self.blend and not moulton else 1.0
        variable = "x0" if self.predict == "x0" else self.variable
        return _weights(nodes, lo, hi, variable, self.weights == "fixed", beta)

    def coefficients(self, sigmas: tuple[float, ...], moulton: bool = False) -> tuple[tuple[float, ...], ...]:
        """Per interval of the grid, the weights :meth:`step` uses (newest ε first): Adams–Bashforth
        for σ_i → σ_{i+1}, or with ``moulton`` the corrector for σ_{i−1} → σ_i (empty if none)."""
        out, hist, k = [], (), self.order_on(sigmas)
        for i, (s0, s1) in enumerate(itertools.pairwise(sigmas)):
            if s0 == 0 or s1 == 0:  # the interval touching 0: Euler, and the history restarts
                out.append(() if moulton else (s1 - s0,))
                hist = ()
                continue
            hist = (s0, *hist)[:k]
            if moulton:
                out.append(self._weights(hist, hist[1], s0, i, True) if len(hist) > 1 else ())
            else:
                out.append(self._weights(hist[: self._ab(k)], s0, s1, i, False))
        return tuple(out)

    def step(self, s0, s1, xbar, state: AdamsState) -> StepGen:
        """x̄ is the predicted state. With the corrector (PEC, as UniPC's UniC does) the one
        evaluation at the predicted point also corrects it by Adams–Moulton before the next
        prediction: x̄_i ← x̄_{i−1} + Σ_j c_ij ε_{i−j}; the ε history keeps the evaluations."""
        eps = yield xbar, s0
        xbar, sig, hist = self._correct(s0, xbar, eps, state)
        start = self._scaled(xbar, s0, s1)
        out = _accumulate(
            start, self._weights(sig[: self._ab(state.order)], s0, s1, state.index, False), hist
        )
        return out, AdamsState(
            state.order, state.final, sig, hist, state.index + 1, xbar if self.corrector else None
        )

    def final_on(self, sigmas) -> float:
        """The final step's extrapolation weight on a grid (:meth:`to_zero`): ``final`` if given; by
        default (None) ½ with ``predict="x0"`` on a grid of at most :data:`EXTRAPOLATED` intervals,
        else 0 (Euler; with ``"eps"`` always, as iPNDM). On longer grids the last σ is small, x̂_0
        moves little below it, and the extrapolation measured worse on the mixture (README)."""
        if self.final is not None:
            return float(self.final)
        return 0.5 if self.predict == "x0" and len(sigmas) - 1 <= EXTRAPOLATED else 0.0

    def _ab(self, order: int) -> int:  # the predictor's order
        return max(1, order - self.corrector)

    def _correct(self, s0: float, xbar: Tensor, eps: Tensor, state: AdamsState):
        """(x̄ at s0 corrected with the new ε, the σ history, the ε or x̂_0 history)."""
        value = xbar.add(eps, alpha=-s0) if self.predict == "x0" else eps  # x̂_0 = x̄ − σε
        sig, hist = (s0, *state.sigmas)[: state.order], (value, *state.eps)[: state.order]
        if self.corrector and len(sig) > 1:
            start = self._scaled(state.corrected, sig[1], s0)
            xbar = _accumulate(start, self._weights(sig, sig[1], s0, state.index, True), hist)
        return xbar, sig, hist

    def _scaled(self, xbar: Tensor, lo: float, hi: float) -> Tensor:
        """With ``predict="x0"`` x̄/σ is what is integrated: x̄ enters the step as (σ_hi/σ_lo)·x̄."""
        return xbar if self.predict == "eps" else xbar * (hi / lo)

    def to_zero(self, s0, s1, xbar, eps, state: AdamsState, sigma_min=0.0):
        """The last evaluation corrects x̄ at σ_k, as in every step; the final step is then
        Euler with the same ε, x̂_0 = x̄_c − σ_k·ε (Euler in x̂_0 would return the network's x̂_0
        at the predicted point and so drop the correction), plus ``final`` times the linear
        extrapolation of x̂_0 in σ from σ_k, σ_{k−1} down to σ_min, where the model's ODE ends:

            x̂_0 += final·(σ_k − σ_min)/(σ_{k−1} − σ_k)·(x̂_0,k − x̂_0,k−1)

        A trailing grid stops at σ_k > σ_min, and Euler from there takes x̂_0 as constant over
        [σ_min, σ_k]; the term vanishes as the grid refines to σ_min (at order 1 there is none: DDIM).
        ε at σ = 0 joins no polynomial: the history restarts after it."""
        done = AdamsState(state.order, state.final, index=state.index + 1)
        if s0 == 0.0 or not state.sigmas:  # out of σ = 0, or the first evaluation: Euler
            return xbar.add(eps, alpha=s1 - s0), done
        xbar, sig, hist = self._correct(s0, xbar, eps, state)
        out = xbar.add(eps, alpha=s1 - s0)
        if state.final and len(sig) > 1 and s0 > sigma_min:
            out.add_(hist[0] - hist[1], alpha=state.final * (s0 - sigma_min) / (sig[1] - s0))
        return out, done


def _is_order(k) -> bool:
    return not isinstance(k, bool) and k in (1, 2, 3, 4)


@lru_cache(maxsize=4096)
def _weights(
    nodes: tuple[float, ...], lo: float, hi: float, variable: str, fixed: bool, beta: float
) -> tuple[float, ...]:
    """Weights for ∫_lo^hi P(u) w(u) du, P through ε at ``nodes`` (σ, newest first), in u = σ,
    log σ or the grid index; ``fixed`` spaces the nodes by the current step (constant-step
    weights); ``beta`` blends order k with order k − 1."""
    b = _plain_weights(nodes, lo, hi, variable, fixed)
    if beta != 1.0 and len(nodes) > 1:
        lower = [*_plain_weights(nodes[:-1], lo, hi, variable, fixed), 0.0]
        b = [beta * x + (1 - beta) * y for x, y in zip(b, lower)]
    return tuple(b)


def _plain_weights(nodes, lo, hi, variable, fixed) -> list[float]:
    if variable == "index":
        return _index_weights(nodes, lo, hi)
    if variable == "x0":  # d(x̄/σ)/dλ = −x̂_0·e^{−λ}: weights −σ_hi·∫ ℓ_j(λ) e^{−λ} dλ, via μ = −λ
        mu = [-math.log(s) for s in nodes]
        m_lo, m_hi = -math.log(lo), -math.log(hi)
        if fixed:
            mu = [mu[0] - j * (m_hi - m_lo) for j in range(len(nodes))]
        return [hi * w for w in ab_weights(mu, m_hi, "log_sigma", start=m_lo)]
    to_u = math.log if variable == "log_sigma" else float
    u_lo, u_hi = to_u(lo), to_u(hi)
    newest = to_u(nodes[0])  # u_lo for Adams–Bashforth, u_hi for the Adams–Moulton corrector
    u = [newest - j * (u_hi - u_lo) for j in range(len(nodes))] if fixed else [to_u(s) for s in nodes]
    return ab_weights(u, u_hi, variable, start=u_lo)


def _index_weights(nodes: tuple[float, ...], lo: float, hi: float) -> list[float]:
    """Adams in the grid index u, where every grid is uniform: dx̄/du = ε·dσ/du. ε's nodes sit at
    u = 0, −1, …, −(k−1) (newest first); σ(u) is the polynomial through the grid points known
    (the nodes, and for Adams–Bashforth the next point at u = 1); b_j = ∫ ℓ_j(u) σ'(u) du over
    [0, 1] (Adams–Bashforth) or [−1, 0] (the corrector, whose newest node is ``hi``)."""
    k = len(nodes)
    us = -np.arange(k, dtype=np.float64)
    moulton = hi == nodes[0] and lo != nodes[0]
    pu = us if moulton else np.concatenate([[1.0], us])
    ps = np.array(nodes if moulton else (hi, *nodes), dtype=np.float64)
    ds = np.polynomial.polynomial.Polynomial.fit(pu, ps, len(pu) - 1, domain=[-1, 1], window=[-1, 1]).deriv()
    a = -1.0 if moulton else 0.0
    x, w = _gauss_legendre(8)
    u = a + 0.5 * (x + 1)
    ell = np.ones((k, len(u)))
    for j in range(k):
        for m in range(k):
            if m != j:
                ell[j] *= (u - us[m]) / (us[j] - us[m])
    return (0.5 * (ell * ds(u) * w).sum(axis=1)).tolist()


def _accumulate(x, weights, history):
    """x + Σ_j w_j ε_j as a new tensor (the first term allocates, the rest accumulate)."""
    out = x.add(history[0], alpha=weights[0])
    for w, e in zip(weights[1:], history[1:]):
        out.add_(e, alpha=w)
    return out
