"""Algebraically reversible two-step solvers: decode undoes encode to round-off, for any network.

On the decreasing (sampling) grid σ_0 > σ_1 > … > σ_N = 0 every step after the first is

    x̄_{k+1} = a_k x̄_{k−1} + (1 − a_k) x̄_k + b_k ε(x̄_k, σ_k),   b_k = h_k + a_k h_{k−1}

with h_k = σ_{k+1} − σ_k (this b_k makes the step exact for x̄ linear in σ). Given x̄_k and
x̄_{k+1} the same relation gives x̄_{k−1} explicitly, with the one evaluation ε(x̄_k, σ_k):
encoding (an increasing grid) runs that inverse, so the pair (x̄_N, x̄_{N−1}) at σ_max
decodes back to the image exactly, whatever ε is. The pair's second member is the state a
reversible latent carries beyond x_T (:class:`odediff.Latent`).

- ``bdia`` (BDIA, Zhang et al. 2023): a_k = γ. The published form has γ constant (γ = 1 is
  the leapfrog x̄_{k+1} = x̄_{k−1} + (σ_{k+1} − σ_{k−1})ε_k; γ → 0 tends to DDIM, which is not
  invertible); odediff's default γ_k = σ_{k+1}/σ_k is chosen for stability (see :class:`BDIA`).
- ``belm`` (O-BELM, Wang et al. 2024): a_k = (h_k / h_{k−1})², the one choice that also makes
  the step exact for x̄ quadratic in σ: second order on any grid.

Stability: the two-step recursion has a parasitic root ≈ −a_k/(1 + h_k ∂ε/∂x̄). Decoding
damps it when that is below 1 in size; encoding runs the recursion backwards and amplifies it
by the inverse. Amplification never costs exactness (decoding undoes it), but it shows in the
latent: O-BELM's a_k ≪ 1 on fine non-uniform grids grows it when encoding at high NFE.

The first decode step has no predecessor: from fresh noise it is an Euler (DDIM) step; from a
latent it is the carried x̄_1, at no evaluation. Encoding starts with the mirror Euler step from
the image at σ = 0 (ε taken at σ_min). Costs: encode N evaluations, decode from noise N, decode
from a latent N − 1. No evaluation ever falls inside the interval touching σ = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

from torch import Tensor

from .base import Solver, StepGen, check_nfe

__all__ = ["BDIA", "BELM", "TwoStepReversible"]


class ReversibleState(NamedTuple):
    prev: Tensor | None = None  # x̄ one grid point back (the latent's carried state at the end)
    prev_sigma: float | None = None
    carry: Tensor | None = None  # a latent's x̄_1: the first decode step, at no evaluation


@dataclass(frozen=True)
class TwoStepReversible(Solver):
    """Base of the reversible two-step family; subclasses choose the mixing weight a_k."""

    reversible: ClassVar[bool] = True
    order: ClassVar[int] = 2

    def mixing(self, s_prev: float, s: float, s_next: float) -> float:
        """a_k for the step σ_k → σ_{k+1} that follows σ_{k−1} → σ_k (decreasing σ)."""
        raise NotImplementedError

    def intervals(self, nfe: int) -> int:
        return check_nfe(nfe, self.name, minimum=2)

    def relation(self, s_prev: float, s: float, s_next: float) -> tuple[float, float]:
        """(a_k, b_k) of the two-step relation through σ_{k−1} > σ_k > σ_{k+1}."""
        # a ≤ 1 keeps the parasitic root −a from growing while decoding; where the steps
        # grow towards σ = 0 the cap costs that step its second order, not its reversibility
        a = min(1.0, self.mixing(s_prev, s, s_next))
        if not a > 0.0:
            raise ValueError(f"{self.name}: mixing weight {a!r} at σ={s:.4g}; expected a > 0")
        return a, (s_next - s) + a * (s - s_prev)

    def coefficients(self, sigmas: tuple[float, ...]) -> tuple[tuple[float, float], ...]:
        """(a_k, b_k) of every two-step relation, k = 1 … N−1, in decreasing-σ orientation."""
        down = sigmas if sigmas[0] > sigmas[-1] else sigmas[::-1]
        return tuple(self.relation(*down[k - 1 : k + 2]) for k in range(1, len(down) - 1))

    def init(self, sigmas, *, nfe=None, generator=None, carry: Tensor | None = None) -> ReversibleState:
        if len(sigmas) < 3:
            raise ValueError(f"{self.name}: needs a grid of at least 2 intervals, got {len(sigmas) - 1}")
        if carry is not None and sigmas[0] < sigmas[-1]:
            raise ValueError(f"{self.name}: a carried state only starts a decode (decreasing grid)")
        return ReversibleState(carry=carry)

    def _two_step(self, s0, s1, xbar, eps, state: ReversibleState) -> Tensor:
        if s1 < s0:  # decode: x̄_{k+1} = a x̄_{k−1} + (1 − a) x̄_k + b ε_k
            a, b = self.relation(state.prev_sigma, s0, s1)
            return state.prev.mul(a).add_(xbar, alpha=1 - a).add_(eps, alpha=b)
        # encode: the same relation solved for x̄_{k−1}, with σ_{k−1} = σ1 and σ_{k+1} behind us
        a, b = self.relation(s1, s0, state.prev_sigma)
        return state.prev.sub(xbar, alpha=1 - a).sub_(eps, alpha=b).div_(a)

    def step(self, s0, s1, xbar, state: ReversibleState) -> StepGen:
        if state.carry is not None:  # a latent's first step is the carried x̄_1
            return state.carry, ReversibleState(xbar, s0)
        eps = yield xbar, s0
        if state.prev is None:  # no predecessor yet (fresh noise): one Euler (DDIM) step
            return xbar.add(eps, alpha=s1 - s0), ReversibleState(xbar, s0)
        return self._two_step(s0, s1, xbar, eps, state), ReversibleState(xbar, s0)

    def to_zero(self, s0, s1, xbar, eps, state: ReversibleState, sigma_min=0.0):
        # decoding into σ = 0 is the last relation (its inverse is encode's second step);
        # encoding out of σ = 0 is the mirror Euler step
        if s1 == 0 and state.prev is not None:
            return self._two_step(s0, s1, xbar, eps, state), ReversibleState(xbar, s0)
        return xbar.add(eps, alpha=s1 - s0), ReversibleState(xbar, s0)

    @staticmethod
    def carried(state: ReversibleState) -> Tensor:
        """The state beyond the end point that a latent must carry: x̄ one grid point back."""
        return state.prev


@dataclass(frozen=True)
class BDIA(TwoStepReversible):
    """BDIA with mixing weight γ_k: a number (the published constant γ ∈ (0, 1]) or ``"neutral"``.

    ``"neutral"`` (the default) takes γ_k = σ_{k+1}/σ_k. Where ε ≈ x̄/σ (high noise, where every
    trajectory heads for the origin) the parasitic root −γ_k/(1 + h_k ∂ε/∂x̄) is then −1: neither
    decoding nor encoding amplifies it, so latents stay Gaussian-sized at any NFE, and
    1 − γ_k = O(h_k) keeps the step second order on grids whose steps vary smoothly. (Into
    σ = 0, where the ratio is 0, it takes BELM's weight.) A constant
    γ < 1 is first order, and over N steps grows the latent by γ^−N when encoding; γ = 1
    (leapfrog) is neutral when encoding but lets the parasitic root grow when decoding with
    few steps.
    """

    gamma: float | Literal["neutral"] = "neutral"
    name: ClassVar[str] = "bdia"

    @property
    def order(self) -> int:  # type: ignore[override]
        return 2 if self.gamma in ("neutral", 1) else 1

    def __post_init__(self) -> None:
        if self.gamma != "neutral" and (
            isinstance(self.gamma, bool) or not isinstance(self.gamma, int | float) or not 0 < self.gamma <= 1
        ):
            raise ValueError(f"gamma: expected 'neutral' or a number in (0, 1], got {self.gamma!r}")

    def mixing(self, s_prev: float, s: float, s_next: float) -> float:
        if self.gamma != "neutral":
            return float(self.gamma)
        return _neutral_weight(s_prev, s, s_next)


def _first_moment(l0: float, l1: float) -> float:
    """∫_{l0}^{l1} e^l (l − l0) dl."""
    d = l1 - l0
    return math.exp(l0) * (math.expm1(d) * (d - 1) + d)


def _neutral_weight(s_prev: float, s: float, s_next: float) -> float:
    """σ_{k+1}/σ_k; into σ = 0, where that is 0 (not invertible), the second-order weight."""
    return s_next / s if s_next > 0.0 else _second_order_weight(s_prev, s, s_next, "sigma")


def _second_order_weight(s_prev: float, s: float, s_next: float, variable: str) -> float:
    """The a_k that cancels the step's leading error: x̄ quadratic in σ, or ε linear in log σ."""
    if variable == "sigma" or s_next == 0.0:
        return ((s_next - s) / (s - s_prev)) ** 2
    lk = math.log(s)
    return _first_moment(lk, math.log(s_next)) / _first_moment(lk, math.log(s_prev))


@dataclass(frozen=True)
class BELM(TwoStepReversible):
    """Second-order BELM: a_k cancels the step's leading error term.

    ``variable="sigma"`` is O-BELM, a_k = (h_k/h_{k−1})²: exact when x̄ is quadratic in σ.
    ``variable="log_sigma"`` makes it exact when ε is linear in λ = log σ instead (the
    exponential-integrator view, dσ = e^λ dλ): a_k = ∫_{λ_k}^{λ_{k+1}} e^λ(λ−λ_k) dλ /
    ∫_{λ_k}^{λ_{k−1}} e^λ(λ−λ_k) dλ. The step into σ = 0 always uses the σ form.

    ``stable=True`` (the default) never lets a_k fall below BDIA's neutral σ_{k+1}/σ_k. On fine
    non-uniform grids O-BELM's a_k is smaller, and encoding amplifies the parasitic mode by
    the ratio: at NFE 1000 on ``quadratic_t`` the published weights grow the digits latent to
    a standard deviation of ~10⁵ and the float64 round trip to ~1e-8. ``stable=False`` is the
    published method.
    """

    variable: Literal["sigma", "log_sigma"] = "log_sigma"
    stable: bool = True
    name: ClassVar[str] = "belm"

    def __post_init__(self) -> None:
        if self.variable not in ("sigma", "log_sigma"):
            raise ValueError(f"variable: expected 'sigma' or 'log_sigma', got {self.variable!r}")
        if not isinstance(self.stable, bool):
            raise ValueError(f"stable: expected True or False, got {self.stable!r}")

    def mixing(self, s_prev: float, s: float, s_next: float) -> float:
        a = _second_order_weight(s_prev, s, s_next, self.variable)
        return max(a, _neutral_weight(s_prev, s, s_next)) if self.stable else a
