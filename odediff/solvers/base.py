"""The one solver interface.

A solver is an immutable object. ``init(sigmas, xbar, ...)`` returns an explicit state;
``step(field, xbar, state)`` returns the new x̄ and the new state. The integrate loop calls
``step`` until ``state.done``. Direction is the sign of the grid, nothing else: every solver
integrates increasing and decreasing grids alike. The interval touching σ = 0 is special:
the model does not exist below σ_min, so a solver may not evaluate inside it.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

__all__ = ["GridState", "Solver", "check_nfe"]


class GridState(NamedTuple):
    """State of a solver marching over a fixed grid."""

    sigmas: tuple[float, ...]
    index: int = 0  # the interval [sigmas[index], sigmas[index+1]] is next
    memory: Any = ()  # solver-specific: history of ε, pending noise, …
    generator: torch.Generator | None = None

    @property
    def done(self) -> bool:
        return self.index >= len(self.sigmas) - 1

    @property
    def sigma(self) -> float:
        return self.sigmas[self.index]

    @property
    def moved(self) -> bool:
        return True

    @property
    def total(self) -> int:
        return len(self.sigmas) - 1


def check_nfe(nfe: Any, name: str, minimum: int = 1) -> int:
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < minimum:
        raise ValueError(f"nfe: {name} needs a whole number of evaluations ≥ {minimum}, got {nfe!r}")
    return nfe


def touches_zero(s0: float, s1: float) -> bool:
    return s0 == 0.0 or s1 == 0.0


class Solver:
    """Base of all solvers. Subclasses are frozen dataclasses."""

    name: ClassVar[str]
    order: int
    adaptive: ClassVar[bool] = False
    reversible: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False

    def intervals(self, nfe: int) -> int:
        """How many grid intervals this solver takes to spend exactly ``nfe`` evaluations."""
        raise NotImplementedError

    def init(self, sigmas: Tensor, xbar: Tensor, *, nfe: int | None = None, generator=None) -> Any:
        raise NotImplementedError

    def step(self, field, xbar: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError
