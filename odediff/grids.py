"""σ grids: pure functions ``(schedule, n) -> σ`` returning n+1 decreasing float64 values.

A grid of n intervals starts at σ_max and ends at 0; its n positive points are where a solver
may evaluate the model, and the last of them, σ_last, is where the final step x̂_0 = x̄ − σ·ε is
taken from. Each family spaces its points by a parameter u ∈ [0, 1] (u = 1 at σ_max, u = 0 at
σ_min, in the family's own variable: t, σ^{1/ρ}, log σ) and takes u_i = 1 − i·(1 − u_last)/(n − 1)
for i < n. ``sigma_last`` (a σ in [σ_min, σ_max]) sets u_last; by default u_last = 1/n, so that
u_i = 1 − i/n ("trailing", as diffusers' spacing of that name): the last evaluation is one step
of the family's spacing above σ_min. Ending at σ_min instead (``sigma_last=schedule.sigma_min``,
as DDIM's original code does) spends the last evaluation where the final step moves x̄ by only
σ_min·ε. Grids for encoding are the same grids reversed. :func:`plan` turns a solver's budget
or an explicit grid into the grid it uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .schedules import DiscreteSchedule

if TYPE_CHECKING:
    from .solvers import Solver

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_NFE",
    "GRIDS",
    "LOW_SIGMA_MAX",
    "auto",
    "budget_power",
    "budget_t",
    "check_sigmas",
    "from_timesteps",
    "karras",
    "log_snr",
    "make_grid",
    "plan",
    "power_t",
    "quadratic_t",
    "uniform_t",
]

Grid = Callable[..., Tensor]


def _unit(n: int, u_last: float) -> Tensor:
    """u_i = 1 − i·(1 − u_last)/(n − 1), i = 0 … n − 1 (just [1] when n = 1)."""
    if n == 1:
        return torch.ones(1, dtype=torch.float64)
    return 1 - torch.arange(n, dtype=torch.float64) * ((1 - u_last) / (n - 1))


def _last_u(schedule: DiscreteSchedule, n: int, sigma_last: float | None, to_u: Callable[[float], float]):
    if sigma_last is None:  # trailing: one step of the family's spacing above σ_min
        return 1.0 / n
    s = float(sigma_last)
    if not (math.isfinite(s) and schedule.sigma_min <= s <= schedule.sigma_max):
        raise ValueError(
            f"sigma_last: expected a noise level within [σ_min, σ_max] = [{schedule.sigma_min:.6g}, "
            f"{schedule.sigma_max:.6g}], got {sigma_last!r}"
        )
    if n == 1 and s != schedule.sigma_max:
        raise ValueError(f"sigma_last: a 1-interval grid's only positive point is σ_max, got {s:.6g}")
    return min(1.0, max(0.0, to_u(s)))


def _spaced(schedule, n, sigma_of_u, u_of_sigma, sigma_last) -> Tensor:
    u = _unit(n, _last_u(schedule, n, sigma_last, u_of_sigma))
    return torch.cat([sigma_of_u(u), torch.zeros(1, dtype=torch.float64)])


def power_t(schedule: DiscreteSchedule, n: int, p: float = 1.0, sigma_last: float | None = None) -> Tensor:
    """Timesteps t_i = (T−1)·u_i^p; p = 1 is DDIM's linear τ, p = 2 its quadratic τ."""
    T1 = schedule.T - 1
    return _spaced(
        schedule, n, lambda u: schedule.sigma_of_t(T1 * u**p),
        lambda s: (schedule.t_of_sigma(s) / T1) ** (1 / p), sigma_last,
    )  # fmt: skip


def uniform_t(schedule: DiscreteSchedule, n: int, sigma_last: float | None = None) -> Tensor:
    """Uniform in t (the DDIM paper's linear τ), fractional timesteps allowed."""
    return power_t(schedule, n, 1.0, sigma_last)


def quadratic_t(schedule: DiscreteSchedule, n: int, sigma_last: float | None = None) -> Tensor:
    """Quadratic in t (the DDIM paper's quadratic τ): t_i = (T−1)·u_i²."""
    return power_t(schedule, n, 2.0, sigma_last)


def budget_power(n: int) -> float:
    """The power p of :func:`budget_t` on n intervals: 1.25 up to 5, 1.7 at 6, 2 from 7 on."""
    return 1.25 if n <= 5 else 1.7 if n == 6 else 2.0


def budget_t(schedule: DiscreteSchedule, n: int, sigma_last: float | None = None) -> Tensor:
    """The default: a t-power grid whose power grows with the budget, t_i = (T−1)·u_i^p with
    p = :func:`budget_power` (n), so :func:`quadratic_t` from 7 intervals on. On short grids the
    flatter spacing spends fewer evaluations at low noise, where the quadratic one crowds them;
    chosen on the zoo's networks by error and Fréchet distance together (README)."""
    return power_t(schedule, n, budget_power(n), sigma_last)


def karras(schedule: DiscreteSchedule, n: int, rho: float = 7.0, sigma_last: float | None = None) -> Tensor:
    """Karras et al. (2022): σ_i = (σ_min^{1/ρ} + u_i (σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ."""
    lo, hi = schedule.sigma_min ** (1 / rho), schedule.sigma_max ** (1 / rho)
    return _spaced(
        schedule, n, lambda u: (lo + u * (hi - lo)) ** rho, lambda s: (s ** (1 / rho) - lo) / (hi - lo),
        sigma_last,
    )  # fmt: skip


def log_snr(schedule: DiscreteSchedule, n: int, sigma_last: float | None = None) -> Tensor:
    """Uniform in log σ (= −½ log SNR)."""
    lo, hi = math.log(schedule.sigma_min), math.log(schedule.sigma_max)
    return _spaced(
        schedule, n, lambda u: torch.exp(lo + u * (hi - lo)), lambda s: (math.log(s) - lo) / (hi - lo),
        sigma_last,
    )  # fmt: skip


LOW_SIGMA_MAX = 50.0


def auto(schedule: DiscreteSchedule, n: int, sigma_last: float | None = None) -> Tensor:
    """The default grid: :func:`log_snr` on a schedule whose σ_max ≤ :data:`LOW_SIGMA_MAX`, else
    :func:`budget_t`.

    Where σ_max is far above the data's scale (linear and cosine schedules: σ_max ≈ 157 and 2·10⁴)
    the top of the trajectory is nearly straight, and a t-power grid leaves it in one or two steps.
    Where it is not (Stable Diffusion's scaled-linear schedule: σ_max ≈ 14.6), the ODE bends up to
    σ_max, and even spacing in log σ measured better by error and by Fréchet distance (README). On
    the zoo any threshold between 15 and 157 chooses the same grids.
    """
    fn = log_snr if schedule.sigma_max <= LOW_SIGMA_MAX else budget_t
    return fn(schedule, n, sigma_last=sigma_last)


def from_timesteps(schedule: DiscreteSchedule, timesteps: Sequence[float] | Tensor) -> Tensor:
    """σ(t_i) for the given (decreasing) timesteps, then 0 — e.g. a diffusers scheduler's
    ``timesteps``, giving its DDIM grid with ``set_alpha_to_one=True``."""
    t = torch.as_tensor(timesteps, dtype=torch.float64).detach().cpu().flatten()
    if t.numel() == 0:
        raise ValueError("timesteps: expected at least one timestep")
    if (t < 0).any() or (t > schedule.T - 1).any():
        raise ValueError(f"timesteps: expected values in [0, {schedule.T - 1}], got {t.tolist()}")
    if t.numel() > 1 and not (t[1:] < t[:-1]).all():
        raise ValueError("timesteps: expected a strictly decreasing sequence")
    return torch.cat([schedule.sigma_of_t(t), torch.zeros(1, dtype=torch.float64)])


GRIDS: dict[str, Grid] = {
    "uniform_t": uniform_t,
    "quadratic_t": quadratic_t,
    "budget_t": budget_t,
    "power_t": power_t,
    "karras": karras,
    "log_snr": log_snr,
    "auto": auto,
}
DEFAULT_GRID = "auto"
DEFAULT_NFE = 20


def make_grid(schedule: DiscreteSchedule, n: int, grid: str | Grid | None = None, **options) -> Tensor:
    """Build ``grid`` (a name in :data:`GRIDS` or a callable ``(schedule, n) -> σ``) with n intervals."""
    fn = GRIDS.get(grid or DEFAULT_GRID) if not callable(grid) else grid
    if fn is None:
        raise ValueError(f"grid: unknown grid {grid!r}; expected one of {sorted(GRIDS)} or a callable")
    s = check_sigmas(fn(schedule, n, **options), schedule, "grid")
    if len(s) != n + 1 or s[0] < s[-1]:
        raise ValueError(
            f"grid: expected {n + 1} decreasing noise levels (n = {n} intervals), got {len(s)} "
            f"{'decreasing' if s[0] > s[-1] else 'increasing'}"
        )
    return s


def check_sigmas(
    sigmas: Sequence[float] | Tensor, schedule: DiscreteSchedule, name: str = "sigmas"
) -> Tensor:
    """Validate an explicit grid: ≥ 2 finite values, strictly monotone, each 0 or within
    [σ_min, σ_max] (to float32 rounding, which is clamped away)."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu().flatten()
    if s.numel() < 2:
        raise ValueError(f"{name}: expected at least 2 noise levels, got {s.numel()}")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    d = s[1:] - s[:-1]
    if not ((d < 0).all() or (d > 0).all()):
        raise ValueError(f"{name}: expected a strictly monotone sequence, got {s.tolist()}")
    lo, hi = schedule.sigma_min, schedule.sigma_max
    tol = 2.0**-22  # σ rounded to float32 still counts
    pos = s[s != 0]
    if (s < 0).any() or (pos < lo * (1 - tol)).any() or (pos > hi * (1 + tol)).any():
        raise ValueError(
            f"{name}: expected 0 or noise levels within [σ_min, σ_max] = [{lo:.6g}, {hi:.6g}] (the model "
            f"exists only there), got {[round(v, 6) for v in s.tolist()]}"
        )
    return torch.where(s == 0, s, s.clamp(lo, hi))


def plan(
    schedule: DiscreteSchedule,
    solver: Solver,
    nfe: int | None = None,
    sigmas: Sequence[float] | Tensor | None = None,
    timesteps: Sequence[float] | Tensor | None = None,
    grid: str | Grid | None = None,
) -> Tensor:
    """The decreasing σ grid a solve will use (float64), from exactly one way of giving it: a
    budget ``nfe`` (default :data:`DEFAULT_NFE`) with a ``grid`` family, or explicit ``sigmas``
    or ``timesteps``. An adaptive solver integrates [σ_max, σ_min] and then steps to 0."""
    if sigmas is not None and timesteps is not None:
        raise ValueError("sigmas, timesteps: give one of them, not both")
    if sigmas is not None or timesteps is not None:
        if grid is not None:
            raise ValueError("grid: not used when sigmas or timesteps are given; drop one")
        s = check_sigmas(sigmas, schedule) if sigmas is not None else from_timesteps(schedule, timesteps)
        if s[0] < s[-1]:
            raise ValueError("sigmas: expected a decreasing grid (encode reverses it itself)")
        if nfe is not None and not solver.adaptive and solver.intervals(nfe) != len(s) - 1:
            raise ValueError(
                f"nfe: {solver.name} spends nfe={nfe} on {solver.intervals(nfe)} intervals, but "
                f"the grid given has {len(s) - 1}; drop nfe or give a matching grid"
            )
        return s
    if solver.adaptive:
        if nfe is not None:
            solver.intervals(nfe)  # raises the solver's own explanation
        if grid is not None:
            raise ValueError(f"grid: {solver.name} is adaptive and chooses its own steps; drop grid")
        return torch.tensor([schedule.sigma_max, schedule.sigma_min, 0.0], dtype=torch.float64)
    return make_grid(schedule, solver.intervals(DEFAULT_NFE if nfe is None else nfe), grid)
