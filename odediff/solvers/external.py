"""torchdiffeq's integrators behind the same interface (``solver="torchdiffeq:dopri5"``).

Each run of grid intervals not touching σ = 0 is one ``torchdiffeq.odeint`` call over those
grid points (fixed-grid methods step on them, adaptive ones only report there); the interval
touching 0 is Euler as for every solver. Evaluations go through the same counted field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .base import GridState, Solver, touches_zero

__all__ = ["TorchDiffEq"]

_ORDERS = {
    "dopri8": 8, "dopri5": 5, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2,
    "euler": 1, "midpoint": 2, "heun3": 3, "rk4": 4, "explicit_adams": 4, "implicit_adams": 4,
}  # fmt: skip


@dataclass(frozen=True)
class TorchDiffEq(Solver):
    method: str = "dopri5"
    rtol: float = 1e-4
    atol: float = 1e-4
    max_nfe: int = 2000
    options: dict[str, Any] = field(default_factory=dict)
    adaptive: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.method not in _ORDERS:
            raise ValueError(
                f"solver: unknown torchdiffeq method {self.method!r}; expected one of "
                f"{sorted('torchdiffeq:' + m for m in _ORDERS)}"
            )

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"torchdiffeq:{self.method}"

    @property
    def order(self) -> int:  # type: ignore[override]
        return _ORDERS[self.method]

    def intervals(self, nfe: int) -> int:
        raise ValueError(f"nfe: {self.name} chooses its own steps; set rtol/atol and max_nfe instead of nfe")

    def init(self, sigmas, xbar, *, nfe=None, generator=None) -> GridState:
        return GridState(tuple(float(s) for s in sigmas))

    def step(self, fld, xbar, state: GridState):
        from torchdiffeq import odeint

        sig, i = state.sigmas, state.index
        if touches_zero(sig[i], sig[i + 1]):
            return xbar.add(fld(xbar, sig[i]), alpha=sig[i + 1] - sig[i]), state._replace(index=i + 1)
        j = i + 1
        while j + 1 < len(sig) and not touches_zero(sig[j], sig[j + 1]):
            j += 1
        t = torch.tensor(sig[i : j + 1], dtype=xbar.dtype, device=xbar.device)
        sol = odeint(
            lambda s, x: fld(x, float(s)).to(x.dtype), xbar, t,
            method=self.method, rtol=self.rtol, atol=self.atol, options=dict(self.options) or None,
        )  # fmt: skip
        return sol[-1], state._replace(index=j)
