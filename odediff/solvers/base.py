"""The one solver interface.

A solver is an immutable object (a frozen dataclass whose fields are its options; what it *is*
— ``name``, ``order``, ``adaptive``, ``reversible``, ``stochastic`` — is declared on the class).
It steps one interval at a time; the integrate loop (:mod:`odediff.integrate`) owns the grid:

    state = solver.init(sigmas, nfe=…, generator=…)              # once per solve
    x̄', state = yield from solver.step(σ0, σ1, x̄, state)         # one interval σ0 → σ1

``step`` is a generator: it yields each point ``(x̄, σ)`` where it needs ε and is sent ε back,
and returns the new x̄ and state. So whoever drives it decides where ε comes from: the loop
calls the counted network, diffusers' pipelines deliver one UNet output per call. Direction is
the sign of σ1 − σ0, nothing else.

The interval touching σ = 0 is never given to ``step`` (the model does not exist below σ_min):
the loop evaluates ε once at the interval's start and hands it to :meth:`Solver.to_zero`,
an Euler step unless a solver needs the same ε combined otherwise (the reversible ones).
"""

from __future__ import annotations

import numbers
from collections.abc import Generator
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = ["FIELD", "Solver", "StepGen", "check_nfe"]

# what ``step`` yields: a point (x̄, σ) to evaluate, or FIELD to be sent the field itself
# (for integrators that call ε themselves, such as torchdiffeq's)
StepGen = Generator[Any, Any, tuple[Tensor, Any]]
FIELD = object()


def check_nfe(nfe: Any, name: str, minimum: int = 1) -> int:
    """``nfe`` as an int if it is a whole number ≥ ``minimum`` (numpy and 0-d tensors too)."""
    if isinstance(nfe, Tensor) and nfe.numel() == 1 and not nfe.is_floating_point():
        nfe = int(nfe)
    if isinstance(nfe, bool) or not isinstance(nfe, numbers.Integral) or nfe < minimum:
        raise ValueError(f"nfe: {name} needs a whole number of evaluations ≥ {minimum}, got {nfe!r}")
    return int(nfe)


class Solver:
    """Base of all solvers. Subclasses are frozen dataclasses whose fields are their options."""

    name: ClassVar[str]
    order: ClassVar[int]  # the convergence order it declares (a property where an option sets it)
    adaptive: ClassVar[bool] = False
    reversible: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False

    def intervals(self, nfe: int) -> int:
        """The budget rule: how many grid intervals spend exactly ``nfe`` evaluations (the one
        into σ = 0 costs one)."""
        return check_nfe(nfe, self.name)

    def init(
        self, sigmas: tuple[float, ...], *, nfe: int | None = None, generator: torch.Generator | None = None
    ) -> Any:
        """The state before the first interval of the grid ``sigmas``."""
        return None

    def step(self, s0: float, s1: float, xbar: Tensor, state: Any) -> StepGen:
        raise NotImplementedError

    def zero_point(self, s0: float, xbar: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Where the interval touching σ = 0 evaluates ε: (x̄, σ0), unless a solver feeds the
        network another noise level (a learned solver's decoupled time)."""
        return xbar, s0

    def to_zero(
        self, s0: float, s1: float, xbar: Tensor, eps: Tensor, state: Any, sigma_min: float = 0.0
    ) -> tuple[Tensor, Any]:
        """The interval touching σ = 0 with the one ε at its start: Euler, x̄ + (σ1 − σ0)·ε.
        ``sigma_min`` is the model's lowest noise level (its t = 0), where the ODE itself ends;
        below it ε is frozen at its value there (the loop's rule)."""
        return xbar.add(eps, alpha=s1 - s0), state
