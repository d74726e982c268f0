"""Float64 reference solves of dx̄/dσ = ε(x̄, σ): the ground truth of studies and of tuning.

By the kind of ε field:

- smooth in σ (e.g. the Gaussian mixture's exact ε): SciPy's DOP853 at rtol = atol = 1e-10, one
  solve per noise if asked, so that no noise's adaptive steps depend on its batch-mates;
- a network on a discrete schedule (:class:`~odediff.EpsModel`): t(σ) is piecewise linear in
  log σ, so ε has a derivative kink at every integer timestep and an adaptive solver crawls
  over each one. The reference instead takes fixed RK4 steps (torchdiffeq's) on a grid that
  contains every knot σ(0), …, σ(T−1) and splits a knot interval into pieces of at most
  ``max_step`` in log σ; fixed steps make a noise's truth independent of its batch-mates too.

Both go down to σ_min and then take the step x̂_0 = x̄ − σ_min·ε(σ_min): the solution of the
ODE as far as the model exists. A refined solve (rtol/100, or every step halved) estimates the
reference's own error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .integrate import CountedField
from .models import EpsModel, Model
from .schedules import DiscreteSchedule

__all__ = ["Reference", "default_reference", "knot_grid", "knot_reference_solve", "reference_solve"]


def _dop853_one(model: Model, noise: Tensor, rtol: float, atol: float) -> tuple[Tensor, int]:
    from scipy.integrate import solve_ivp

    s = model.schedule
    fld = CountedField(model, torch.float64)
    shape = noise.shape

    def f(sigma: float, y: np.ndarray) -> np.ndarray:
        return fld(torch.from_numpy(y).view(shape), float(sigma)).double().numpy().ravel()

    y0 = (noise.detach().to(torch.float64) * math.sqrt(1 + s.sigma_max**2)).numpy().ravel()
    sol = solve_ivp(f, (s.sigma_max, s.sigma_min), y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    xbar = torch.from_numpy(sol.y[:, -1].copy()).view(shape)
    x0 = xbar - s.sigma_min * fld(xbar, s.sigma_min)
    fld.check()
    return x0, fld.nfe


def reference_solve(
    model: Model, noise: Tensor, rtol: float = 1e-10, atol: float = 1e-10, *, per_noise: bool = False
) -> tuple[Tensor, int]:
    """x_0 from VP noise x_T by DOP853 in float64 down to σ_min, then one Euler step to 0.

    One solve for the whole batch (fast: one evaluation covers every noise), or with
    ``per_noise`` one solve per noise, so that no noise's adaptive steps (and hence, at the level
    of the tolerance, its truth) depend on its batch-mates. Returns (x_0 in the noise's dtype,
    network evaluations, summed over the solves)."""
    with torch.no_grad():
        if not per_noise:
            x0, n = _dop853_one(model, noise, rtol, atol)
            return x0.to(noise.dtype), n
        outs = [_dop853_one(model, noise[i : i + 1], rtol, atol) for i in range(noise.shape[0])]
    x0 = torch.cat([o[0] for o in outs]) if outs else noise.to(torch.float64)
    return x0.to(noise.dtype), sum(o[1] for o in outs)


def knot_grid(schedule: DiscreteSchedule, max_step: float = 0.05, refine: int = 1) -> list[float]:
    """Decreasing σ from σ_max to σ_min containing every σ(t) of an integer t; each knot
    interval is split geometrically into ``refine``·max(1, ⌈Δlog σ / max_step⌉) pieces."""
    log_s = schedule.sigmas.log().tolist()
    sig = schedule.sigmas.tolist()
    out = []
    for k in range(schedule.T - 1, 0, -1):
        d = log_s[k] - log_s[k - 1]
        m = refine * max(1, math.ceil(d / max_step))
        out.append(sig[k])  # the knot itself, exactly
        out.extend(math.exp(log_s[k] - j * d / m) for j in range(1, m))
    out.append(sig[0])
    return out


def knot_reference_solve(
    model: Model, noise: Tensor, max_step: float = 0.05, refine: int = 1
) -> tuple[Tensor, int]:
    """x_0 by torchdiffeq's fixed-step RK4 in σ on :func:`knot_grid`, then the step from σ_min to 0.

    Returns (x_0 in the noise's dtype, network evaluations; each evaluates the whole batch)."""
    from torchdiffeq import odeint

    grid = torch.tensor(knot_grid(model.schedule, max_step, refine), dtype=torch.float64)
    fld = CountedField(model, torch.float64)
    x = noise.detach().to(torch.float64) * math.sqrt(1 + float(grid[0]) ** 2)
    with torch.no_grad():
        sol = odeint(
            lambda s, y: fld(y, float(s)).double(), x, grid[[0, -1]], method="rk4",
            options={"grid_constructor": lambda *_: grid},
        )  # fmt: skip
        x = sol[-1]
        x0 = x - float(grid[-1]) * fld(x, float(grid[-1]))
    fld.check()
    return x0.to(noise.dtype), fld.nfe


@dataclass(frozen=True)
class Reference:
    """How the ground truth is computed: ``"dop853"`` (per noise, ``rtol`` = ``atol``) or
    ``"knots"`` (RK4 on the knot grid with ``max_step``, ``refine``)."""

    kind: Literal["dop853", "knots"] = "dop853"
    rtol: float = 1e-10
    max_step: float = 0.05
    refine: int = 1

    def solve(self, model: Model, noise: Tensor) -> tuple[Tensor, Tensor]:
        """(x_0 in float64, network evaluations per noise as a float64 tensor)."""
        noise = noise.to(torch.float64)
        if self.kind == "dop853":
            with torch.no_grad():
                outs = [_dop853_one(model, noise[i : i + 1], self.rtol, self.rtol) for i in range(len(noise))]
            return torch.cat([o[0] for o in outs]), torch.tensor([float(o[1]) for o in outs])
        if self.kind == "knots":
            x0, n = knot_reference_solve(model, noise, self.max_step, self.refine)
            return x0, torch.full((len(noise),), float(n), dtype=torch.float64)
        raise ValueError(f"kind: expected 'dop853' or 'knots', got {self.kind!r}")

    def refined(self) -> Reference:
        """The tighter solve whose difference from this one estimates this one's error."""
        if self.kind == "dop853":
            return replace(self, rtol=self.rtol / 100)
        return replace(self, refine=2 * self.refine)

    def describe(self) -> str:
        if self.kind == "dop853":
            return f"SciPy DOP853 per noise, rtol = atol = {self.rtol:g}, float64"
        return (
            f"RK4 on a fixed grid through every knot σ(t), t = 0…T−1, pieces ≤ {self.max_step:g} in log σ"
            + (f", each halved {int(math.log2(self.refine))}×" if self.refine > 1 else "")
            + ", float64"
        )


def default_reference(model: Model) -> Reference:
    """Knot-grid RK4 for a network on a discrete schedule (ε kinks at integer t), DOP853 else."""
    if isinstance(model, EpsModel):
        if model.snap_timesteps:
            raise ValueError("model: snapped timesteps make ε discontinuous; no reference for that")
        return Reference("knots")
    return Reference("dop853")
