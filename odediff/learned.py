"""A multistep solver whose grid, per-step weights and network times are learned for one model.

On the grid σ_0 > σ_1 > … > σ_{n−1} > σ_n = 0, with the data prediction D_i = x̄_i − σ_i·ε_i
(ε_i evaluated at x̄_i and the network time τ_i, by default τ_i = σ_i), step i is

    x̄_{i+1} = r_i·x̄_i + (1 − r_i)·Σ_j w_ij·D_{i−j},   r_i = σ_{i+1}/σ_i,   Σ_j w_ij = 1,

the exact solution of d(x̄/σ)/d(1/σ) = D for a D that is the weighted mean of its history: every
step is consistent (a constant D is integrated exactly) whatever the weights. w_i = (1,) is DDIM;
:func:`multistep_weights` gives the weights of any one-evaluation multistep solver (``adams``,
its corrector folded in) on a grid, so a learned solver can start from the best training-free
one. The interval into σ = 0 (r = 0) is x̂_0 = Σ_j w_{n−1,j}·D_{n−1−j}: with no last row of
weights, x̂_0 = D_{n−1} = x̄ − σ_{n−1}·ε, the loop's plain final step; ``adams`` has one, because
its last evaluation also corrects x̄ at σ_{n−1}.

Decoupled times (as LD3 and AMED) feed the network a noise level τ_i other than the σ_i of the
update. While tuning, σ_i, w_ij and τ_i may be 0-d tensors that require grad: the solve is then
differentiable in all of them (:func:`odediff.tune_grid`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from .integrate import drive, interval
from .solvers import Solver, get_solver

__all__ = ["Learned", "multistep_weights", "scalar"]

Number = float | Tensor


def scalar(v: Number) -> float:
    """A float of a number or a 0-d tensor (detached: no autograd warning)."""
    return float(v.detach()) if isinstance(v, Tensor) else float(v)


class LearnedState(NamedTuple):
    index: int = 0  # intervals stepped so far
    history: tuple[Tensor, ...] = ()  # D_i, D_{i−1}, … (newest first)


@dataclass(frozen=True)
class Learned(Solver):
    """The learned multistep solver of the module docstring, tied to its own grid ``sigmas``.

    ``weights[i]`` are step i's weights over D_i, D_{i−1}, … (at most i + 1 of them, summing to
    1): one row per interval, or one per interval but the last (whose step is then x̂_0 = D_{n−1}).
    ``times`` (optional) are τ_0, …, τ_{n−1}.
    """

    sigmas: tuple[Number, ...]
    weights: tuple[tuple[Number, ...], ...]
    times: tuple[Number, ...] | None = None
    name: ClassVar[str] = "learned"
    order: ClassVar[int] = 1  # consistent for any weights; its accuracy is what tuning bought

    def __post_init__(self) -> None:
        sig = [scalar(s) for s in self.sigmas]
        n = len(sig) - 1
        if n < 1 or sig[-1] != 0 or any(b >= a for a, b in itertools.pairwise(sig)):
            raise ValueError(f"sigmas: expected a decreasing grid ending at 0, got {sig}")
        if len(self.weights) not in (n - 1, n):
            raise ValueError(
                f"weights: expected {n - 1} or {n} rows (one per interval, the last one optional), "
                f"got {len(self.weights)}"
            )
        for i, row in enumerate(self.weights):
            total = sum(scalar(w) for w in row)
            if not 1 <= len(row) <= i + 1 or not math.isclose(total, 1.0, rel_tol=0, abs_tol=1e-9):
                raise ValueError(
                    f"weights: row {i} must have 1 to {i + 1} weights summing to 1 (consistency), "
                    f"got {[scalar(w) for w in row]} (sum {total!r})"
                )
        if self.times is not None and len(self.times) != n:
            raise ValueError(
                f"times: expected {n} network noise levels (one per evaluation), got {len(self.times)}"
            )
        object.__setattr__(self, "_floats", tuple(sig))

    @property
    def depth(self) -> int:
        """The longest history a step uses."""
        return max((len(r) for r in self.weights), default=1)

    def intervals(self, nfe: int) -> int:
        n = len(self.sigmas) - 1
        if super().intervals(nfe) != n:
            raise ValueError(
                f"nfe: this learned solver was tuned for nfe={n} and spends exactly that, not {nfe}"
            )
        return n

    def init(self, sigmas, *, nfe=None, generator=None) -> LearnedState:
        if tuple(float(s) for s in sigmas) != self._floats:
            raise ValueError(
                "sigmas: a learned solver runs only on the grid it was tuned on (its weights are per "
                "step); pass its own sigmas, as TunedGrid.kwargs() does"
            )
        return LearnedState()

    def _time(self, i: int) -> Number:
        return self.sigmas[i] if self.times is None else self.times[i]

    def step(self, s0, s1, xbar, state: LearnedState):
        i = state.index
        sig0, sig1 = self.sigmas[i], self.sigmas[i + 1]  # s0, s1 as floats; these may carry grad
        eps = yield xbar, self._time(i)
        row = self.weights[i]
        history = (xbar - sig0 * eps, *state.history)[: self.depth]
        r = sig1 / sig0
        out = r * xbar + (1 - r) * sum(w * d for w, d in zip(row, history))
        return out, LearnedState(i + 1, history)

    def zero_point(self, s0, xbar, state: LearnedState) -> tuple[Tensor, Number]:
        return xbar, self._time(state.index)

    def to_zero(self, s0, s1, xbar, eps, state: LearnedState, sigma_min=0.0):
        i = state.index
        d = xbar - self.sigmas[i] * eps
        if i < len(self.weights):
            d = sum(w * h for w, h in zip(self.weights[i], (d, *state.history)))
        return d, LearnedState(i + 1)

    def to_json(self) -> dict[str, Any]:
        """Floats only (written with repr by ``json``, so they load back bit for bit)."""
        return {
            "sigmas": [scalar(s) for s in self.sigmas],
            "weights": [[scalar(w) for w in row] for row in self.weights],
            "times": None if self.times is None else [scalar(t) for t in self.times],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Learned:
        times = d.get("times")
        return cls(
            tuple(float(s) for s in d["sigmas"]),
            tuple(tuple(float(w) for w in row) for row in d["weights"]),
            None if times is None else tuple(float(t) for t in times),
        )


def multistep_weights(
    solver: str | Solver, sigmas: Tensor | list[float], sigma_min: float = 0.0, **options
) -> tuple[tuple[float, ...], ...]:
    """The weights w_ij (module docstring) with which ``solver`` steps the grid ``sigmas`` for a
    model whose lowest noise level is ``sigma_min`` (the final step may depend on it).

    One row per interval, the last included (x̂_0 = Σ_j w_{n−1,j}·D_{n−1−j}, r = 0). Found by
    running the solver's own steps on a probe: x̄_0 and D_0, D_1, … are the unit
    vectors e_0, e_1, … (ε_i = (x̄_i − e_{i+1})/σ_i), so each x̄_i comes out as the coefficients of
    x̄_0 and the D's, and step i must be x̄_{i+1} = r_i·x̄_i + (1 − r_i)·Σ_j w_ij·e_{i−j+1}. A
    solver that evaluates ε more than once per interval, or whose steps are not of this form, is
    refused.
    """
    s = get_solver(solver, **options)
    sig = [float(v) for v in sigmas]
    n = len(sig) - 1
    if n < 2 or sig[-1] != 0:
        raise ValueError(f"sigmas: expected a decreasing grid of ≥ 2 intervals ending at 0, got {sig}")
    x = torch.zeros(n + 1, dtype=torch.float64)
    x[0] = 1.0
    state = s.init(tuple(sig))
    rows = []
    for i in range(n):
        calls: list[float] = []

        def probe(xbar: Tensor, sigma: float, i: int = i, calls: list[float] = calls) -> Tensor:
            calls.append(sigma)
            unit = torch.zeros_like(xbar)
            unit[i + 1] = 1.0
            return (xbar - unit) / sigma

        x_new, state = drive(interval(s, sig[i], sig[i + 1], x, state, sigma_min), probe)
        if len(calls) != 1 or calls[0] != sig[i]:
            raise ValueError(f"solver: {s.name} evaluates ε at {calls} on interval {i}; multistep weights "
                             "exist for solvers with one evaluation per interval at its start")  # fmt: skip
        r = sig[i + 1] / sig[i]
        rest = (x_new - r * x) / (1 - r)
        w = rest[1 : i + 2].flip(0)  # newest first
        stray = torch.cat([rest[:1], rest[i + 2 :]]).abs().max()
        if stray > 1e-9 or abs(float(w.sum()) - 1) > 1e-9:
            raise ValueError(f"solver: {s.name}'s step {i} is not a consistent multistep step in D")
        k = int(w.abs().gt(1e-14).nonzero().max()) + 1
        w = w[:k]
        w[0] = 1.0 - w[1:].sum()  # the constraint to round-off
        rows.append(tuple(w.tolist()))
        x = x_new
    return tuple(rows)
