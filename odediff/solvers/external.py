"""torchdiffeq's integrators behind the same interface (``solver="torchdiffeq:dopri5"``).

Each grid interval is one ``torchdiffeq.odeint`` call from σ0 to σ1, through the loop's counted
field. Adaptive methods choose their own steps inside it (``rtol``, ``atol``, ``max_nfe``);
fixed-grid Runge–Kutta methods take one step per interval, so like odediff's own fixed-step
solvers they plan their grid from ``nfe`` and spend it exactly. torchdiffeq's Adams methods
step by ``options={"step_size": h}``, which they need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .base import FIELD, Solver, StepGen, check_nfe

__all__ = ["TorchDiffEq"]

_ADAPTIVE = {"dopri8": 8, "dopri5": 5, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}
_FIXED = {"euler": (1, 1), "midpoint": (2, 2), "heun3": (3, 3), "rk4": (4, 4)}  # (order, stages)
_STEP_SIZE = {"explicit_adams": 4, "implicit_adams": 4}  # multistep: need options["step_size"]


@dataclass(frozen=True)
class TorchDiffEq(Solver):
    method: str = "dopri5"
    rtol: float = 1e-4
    atol: float = 1e-4
    max_nfe: int = 2000
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = {**_ADAPTIVE, **_FIXED, **_STEP_SIZE}
        if self.method not in known:
            raise ValueError(
                f"solver: unknown torchdiffeq method {self.method!r}; expected one of "
                f"{sorted('torchdiffeq:' + m for m in known)}"
            )
        if not isinstance(self.options, dict):
            raise ValueError(f"options: expected a dict of torchdiffeq options, got {self.options!r}")
        if self.method in _FIXED and self.options:
            raise ValueError(
                f"options: torchdiffeq:{self.method} takes one step per grid interval, planned from "
                f"nfe; got {self.options} (give nfe or sigmas instead of a step size)"
            )
        if self.method in _STEP_SIZE and "step_size" not in self.options:
            raise ValueError(
                f"options: torchdiffeq:{self.method} needs options={{'step_size': h}} (else it takes one "
                "step over each interval)"
            )

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"torchdiffeq:{self.method}"

    @property
    def adaptive(self) -> bool:  # type: ignore[override]
        return self.method not in _FIXED

    @property
    def order(self) -> int:  # type: ignore[override]
        if self.method in _FIXED:
            return _FIXED[self.method][0]
        return {**_ADAPTIVE, **_STEP_SIZE}[self.method]

    def intervals(self, nfe: int) -> int:
        if self.adaptive:
            raise ValueError(
                f"nfe: {self.name} chooses its own steps; set rtol/atol and max_nfe instead of nfe"
            )
        nfe, stages = check_nfe(nfe, self.name), _FIXED[self.method][1]
        if (nfe - 1) % stages:
            lo = 1 + stages * ((nfe - 1) // stages)
            raise ValueError(
                f"nfe: {self.name} spends {stages} evaluations per interval and 1 on the last, so "
                f"nfe − 1 must be a multiple of {stages}; got {nfe} (try {lo} or {lo + stages})"
            )
        return 1 + (nfe - 1) // stages

    def step(self, s0, s1, xbar, state) -> StepGen:
        from torchdiffeq import odeint

        fld = yield FIELD  # odeint calls ε itself
        t = torch.tensor([s0, s1], dtype=xbar.dtype, device=xbar.device)
        kwargs = {} if self.method in _FIXED else dict(rtol=self.rtol, atol=self.atol)
        sol = odeint(
            lambda s, x: fld(x, float(s)).to(x.dtype), xbar, t,
            method=self.method, options=dict(self.options) or None, **kwargs,
        )  # fmt: skip
        return sol[-1], state
