"""σ grids: pure functions ``(schedule, n) -> σ`` returning n+1 decreasing float64 values.

Every family starts at σ_max, puts its last positive point at σ_min and ends at 0, so a grid
of n intervals has n points where a solver may evaluate the model. Grids for encoding are
the same grids reversed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .schedules import DiscreteSchedule

__all__ = [
    "DEFAULT_GRID",
    "GRIDS",
    "check_sigmas",
    "from_timesteps",
    "karras",
    "log_snr",
    "make_grid",
    "power_t",
    "quadratic_t",
    "uniform_t",
]

Grid = Callable[..., Tensor]


def _with_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _unit(n: int) -> Tensor:
    """u = 1, …, 0 in n points (just [1] when n = 1)."""
    return torch.linspace(1, 0, n, dtype=torch.float64) if n > 1 else torch.ones(1, dtype=torch.float64)


def power_t(schedule: DiscreteSchedule, n: int, p: float = 1.0) -> Tensor:
    """Timesteps t_i = (T−1)·u_i^p, u uniform from 1 to 0; p = 1 is DDIM's linear τ."""
    return _with_zero(schedule.sigma_of_t((schedule.T - 1) * _unit(n) ** p))


def uniform_t(schedule: DiscreteSchedule, n: int) -> Tensor:
    """Uniform in t (the DDIM paper's linear τ), fractional timesteps allowed."""
    return power_t(schedule, n, 1.0)


def quadratic_t(schedule: DiscreteSchedule, n: int) -> Tensor:
    """Quadratic in t (the DDIM paper's quadratic τ): t_i = (T−1)·u_i²."""
    return power_t(schedule, n, 2.0)


def karras(schedule: DiscreteSchedule, n: int, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022): σ_i = (σ_max^{1/ρ} + u'_i (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, u' = 1 − u."""
    lo, hi = schedule.sigma_min ** (1 / rho), schedule.sigma_max ** (1 / rho)
    return _with_zero((lo + _unit(n) * (hi - lo)) ** rho)


def log_snr(schedule: DiscreteSchedule, n: int) -> Tensor:
    """Uniform in log σ (= −½ log SNR)."""
    lo, hi = math.log(schedule.sigma_min), math.log(schedule.sigma_max)
    return _with_zero(torch.exp(lo + _unit(n) * (hi - lo)))


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
    return _with_zero(schedule.sigma_of_t(t))


GRIDS: dict[str, Grid] = {
    "uniform_t": uniform_t,
    "quadratic_t": quadratic_t,
    "power_t": power_t,
    "karras": karras,
    "log_snr": log_snr,
}
DEFAULT_GRID = "quadratic_t"


def make_grid(schedule: DiscreteSchedule, n: int, grid: str | Grid | None = None, **options) -> Tensor:
    """Build ``grid`` (a name in :data:`GRIDS` or a callable) with n intervals."""
    fn = GRIDS.get(grid or DEFAULT_GRID) if not callable(grid) else grid
    if fn is None:
        raise ValueError(f"grid: unknown grid {grid!r}; expected one of {sorted(GRIDS)} or a callable")
    return check_sigmas(fn(schedule, n, **options), schedule, "grid")


def check_sigmas(
    sigmas: Sequence[float] | Tensor, schedule: DiscreteSchedule, name: str = "sigmas"
) -> Tensor:
    """Validate an explicit grid: ≥ 2 finite values, strictly monotone, within [0, σ_max]."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu().flatten()
    if s.numel() < 2:
        raise ValueError(f"{name}: expected at least 2 noise levels, got {s.numel()}")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    d = s[1:] - s[:-1]
    if not ((d < 0).all() or (d > 0).all()):
        raise ValueError(f"{name}: expected a strictly monotone sequence, got {s.tolist()}")
    tol = 2.0**-22 * schedule.sigma_max  # σ_max rounded to float32 still counts as σ_max
    if s.min() < 0 or s.max() > schedule.sigma_max + tol:
        raise ValueError(
            f"{name}: expected values within [0, σ_max = {schedule.sigma_max:.6g}], "
            f"got [{float(s.min()):.6g}, {float(s.max()):.6g}]"
        )
    return s.clamp(max=schedule.sigma_max)
