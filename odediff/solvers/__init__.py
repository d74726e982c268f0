"""Solvers for dx̄/dσ = ε(x̄, σ) and their registry."""

from __future__ import annotations

import dataclasses

from .adams import Adams
from .base import FIELD, Solver, StepGen
from .external import TorchDiffEq
from .reversible import BDIA, BELM, TwoStepReversible
from .rk import DOPRI5, EULER, HEUN, AdaptiveRungeKutta, Controller, RungeKutta, Tableau
from .stochastic import DDIM

__all__ = [
    "BDIA",
    "BELM",
    "DDIM",
    "DOPRI5",
    "EULER",
    "FIELD",
    "HEUN",
    "SOLVERS",
    "Adams",
    "AdaptiveRungeKutta",
    "Controller",
    "RungeKutta",
    "Solver",
    "StepGen",
    "Tableau",
    "TorchDiffEq",
    "TwoStepReversible",
    "get_solver",
]  # fmt: skip

SOLVERS: dict[str, Solver] = {
    "euler": RungeKutta(EULER, name="euler"),
    "heun": RungeKutta(HEUN, name="heun"),
    "rk45": AdaptiveRungeKutta(),
    "adams": Adams(),
    "ddim": DDIM(),
    "bdia": BDIA(),
    "belm": BELM(),
}


def get_solver(solver: str | Solver, **options) -> Solver:
    """A registry name (or ``"torchdiffeq:METHOD"``) with options applied, or a Solver as is."""
    if isinstance(solver, Solver):
        base = solver
    elif isinstance(solver, str) and solver.startswith("torchdiffeq:"):
        base = TorchDiffEq(method=solver.split(":", 1)[1])
    elif isinstance(solver, str) and solver in SOLVERS:
        base = SOLVERS[solver]
    else:
        raise ValueError(
            f"solver: unknown solver {solver!r}; expected one of {sorted(SOLVERS)} "
            "or 'torchdiffeq:METHOD' (e.g. 'torchdiffeq:dopri5')"
        )
    if not options:
        return base
    valid = {f.name for f in dataclasses.fields(base) if f.init and f.name != "name"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise TypeError(f"{base.name}: unknown option(s) {unknown}; it takes {sorted(valid)}")
    return dataclasses.replace(base, **options)
