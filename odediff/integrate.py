"""The single integration loop: counting, checks, direction, progress, callbacks, info.

Every solver integrates dx̄/dσ = ε(x̄, σ) over a σ grid whose sign gives the direction;
network evaluations are counted here, in :class:`CountedField`, and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .models import Model

__all__ = ["BudgetExceeded", "CountedField", "Info", "Step", "integrate"]


class BudgetExceeded(RuntimeError):
    """Raised when a solve would need more network evaluations than ``max_nfe``."""


class CountedField:
    """ε(x̄, σ) of a model, counting calls and checking what the network returns.

    σ below σ_min is evaluated at σ_min (the model does not exist below it). Inputs are cast
    to the network's dtype; ε is returned as the network gave it, and each solver update
    x̄ + h·ε promotes it to the float64 state within the same operation.
    """

    def __init__(self, model: Model, net_dtype: torch.dtype, max_nfe: int | None = None):
        self.model = model
        self.sigma_min = model.schedule.sigma_min
        self.net_dtype = net_dtype
        self.max_nfe = max_nfe
        # a model that knows its network's dtype casts x_t itself, after scaling in float64
        self.casts = getattr(model, "casts_input", False) and model.parameters_like() is not None
        self.nfe = 0
        self.step = 0  # index of the step under way, for error messages

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        if self.max_nfe is not None and self.nfe >= self.max_nfe:
            raise BudgetExceeded(f"max_nfe={self.max_nfe} reached at σ={sigma:.6g}")
        self.nfe += 1
        s = max(sigma, self.sigma_min)
        eps = self.model.eps(x if self.casts or x.dtype == self.net_dtype else x.to(self.net_dtype), s)
        if eps.shape != x.shape:
            raise ValueError(f"model: ε has shape {tuple(eps.shape)}, expected the input's {tuple(x.shape)}")
        if not math.isfinite(eps.detach().sum()):  # one reduction: NaN and ±Inf survive a sum
            raise FloatingPointError(
                f"model: returned NaN or Inf at step {self.step}, σ={sigma:.6g} (evaluation {self.nfe})"
            )
        return eps  # in the network's dtype: the solvers' updates promote it to the state's


@dataclass(frozen=True)
class Step:
    """What a callback sees after each step: step index, the σ reached, the state x̄ there."""

    index: int
    sigma: float
    xbar: Tensor
    nfe: int


@dataclass
class Info:
    """What ``return_info=True`` returns alongside the result."""

    nfe: int
    sigmas: Tensor
    solver: str
    steps: int
    visited: list[float] = field(default_factory=list)
    rejected: int = 0
    # a reversible solver's float64 state at the end: (x̄ there, x̄ one grid point back)
    carry: tuple[Tensor, Tensor] | None = None


def integrate(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    solver,
    *,
    nfe: int | None = None,
    generator: torch.Generator | None = None,
    max_nfe: int | None = None,
    progress: bool = False,
    callback: Callable[[Step], None] | None = None,
    carry: Tensor | None = None,
) -> tuple[Tensor, Info]:
    """Integrate the VP-scale state ``x`` at σ = sigmas[0] to sigmas[-1]; returns VP-scale x.

    ``nfe``, if given, is a budget the (fixed-step) solver must spend exactly. ``carry`` is a
    reversible solver's extra starting state (what :attr:`Info.carry` returned when encoding).

    x̄ = x·sqrt(1+σ²) is what the solver carries; the result is x̄/sqrt(1+σ_end²).
    """
    in_dtype = x.dtype
    # x̄ = x·sqrt(1+σ²) spans σ_max/σ_min in scale: float32 would lose digits ∝ σ_max, so the
    # state is float64 (elementwise work only; the network still runs in its own dtype)
    work_dtype = torch.float32 if x.device.type == "mps" else torch.float64
    net = getattr(model, "parameters_like", lambda: None)()
    net_dtype = net[1] if net is not None else in_dtype  # a bare callable sees the caller's dtype
    fld = CountedField(model, net_dtype, max_nfe)

    s0, s1 = float(sigmas[0]), float(sigmas[-1])
    xbar = x.to(work_dtype) * math.sqrt(1 + s0 * s0)  # a new tensor: the input is never touched
    if carry is None:
        state = solver.init(sigmas, xbar, nfe=nfe, generator=generator)
    elif getattr(solver, "reversible", False):
        state = solver.init(sigmas, xbar, nfe=nfe, generator=generator, carry=carry.to(work_dtype))
    else:
        raise ValueError(f"carry: {getattr(solver, 'name', solver)} is not reversible and carries no state")
    visited = [s0]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=state.total, desc=getattr(solver, "name", "solve"), unit="step", leave=False)
    try:
        while not state.done:
            fld.step = state.index
            xbar, state = solver.step(fld, xbar, state)
            if state.moved:
                visited.append(state.sigma)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(nfe=fld.nfe, sigma=f"{state.sigma:.3g}", refresh=False)
                if callback is not None:
                    callback(Step(len(visited) - 2, state.sigma, xbar, fld.nfe))
    finally:
        if bar is not None:
            bar.close()
    if nfe is not None and fld.nfe != nfe:  # a planning bug, never the user's fault
        raise RuntimeError(f"{solver.name} spent {fld.nfe} evaluations on a budget of {nfe}")
    out = (xbar / math.sqrt(1 + s1 * s1)).to(in_dtype)
    info = Info(
        nfe=fld.nfe,
        sigmas=torch.as_tensor(sigmas, dtype=torch.float64),
        solver=getattr(solver, "name", type(solver).__name__),
        steps=len(visited) - 1,
        visited=visited,
        rejected=getattr(state, "rejected", 0),
        carry=(xbar, solver.carried(state)) if getattr(solver, "reversible", False) else None,
    )
    return out, info
