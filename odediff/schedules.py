"""Discrete DDPM noise schedules and the map between timestep t and noise level σ.

    ᾱ_t = ∏_{s≤t} (1 − β_s),   σ(t) = sqrt((1 − ᾱ_t) / ᾱ_t),   t ∈ {0, …, T−1}

Between integer timesteps, log σ is interpolated linearly, so t(σ) and σ(t) are exact
inverses on [σ_min, σ_max] = [σ(0), σ(T−1)].
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["DiscreteSchedule"]


@dataclass(frozen=True, eq=False)
class DiscreteSchedule:
    """A discrete schedule given by ᾱ_0 > ᾱ_1 > … > ᾱ_{T−1} in (0, 1].

    A zero-terminal-SNR schedule (ᾱ_{T−1} = 0, σ_max = ∞) cannot be integrated from σ_max; pass
    ``terminal_alpha_cumprod`` (e.g. 2**-24, diffusers' choice) to replace that last 0 by it,
    otherwise construction raises.
    """

    alphas_cumprod: Tensor
    terminal_alpha_cumprod: float | None = None
    sigmas: Tensor = field(init=False, repr=False)
    _log_sigmas: list[float] = field(init=False, repr=False)
    _bounds: tuple[float, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ac = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64).detach().cpu().flatten()
        if ac.numel() < 2:
            raise ValueError(f"alphas_cumprod: expected at least 2 values, got {ac.numel()}")
        if not torch.isfinite(ac).all():
            raise ValueError("alphas_cumprod: contains NaN or Inf")
        if ac[-1] == 0:
            if self.terminal_alpha_cumprod is None:
                raise ValueError(
                    "alphas_cumprod: the last value is 0 (zero terminal SNR, σ_max = ∞); pass "
                    f"terminal_alpha_cumprod in (0, {float(ac[-2]):.3g}) (e.g. {float(ac[-2]) / 4:.3g}) "
                    "to use it in place of that 0"
                )
            if not 0 < self.terminal_alpha_cumprod < ac[-2]:
                raise ValueError(
                    f"terminal_alpha_cumprod: expected a value in (0, {float(ac[-2]):.3g}), "
                    f"got {self.terminal_alpha_cumprod}"
                )
            ac = ac.clone()
            ac[-1] = self.terminal_alpha_cumprod
        if (ac <= 0).any() or (ac > 1).any():
            raise ValueError("alphas_cumprod: expected values in (0, 1]")
        if not (ac[1:] < ac[:-1]).all():
            raise ValueError("alphas_cumprod: expected a strictly decreasing sequence")
        sigmas = ((1 - ac) / ac).sqrt()
        if sigmas[0] == 0:
            raise ValueError("alphas_cumprod: ᾱ_0 = 1 gives σ_min = 0; expected ᾱ_0 < 1")
        object.__setattr__(self, "alphas_cumprod", ac)
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "_log_sigmas", sigmas.log().tolist())
        object.__setattr__(self, "_bounds", (float(sigmas[0]), float(sigmas[-1])))

    # constructors -------------------------------------------------------------------------
    @classmethod
    def from_betas(cls, betas: Tensor, **kwargs) -> DiscreteSchedule:
        """ᾱ_t = ∏_{s≤t} (1 − β_s)."""
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if (betas <= 0).any() or (betas > 1).any():
            raise ValueError("betas: expected values in (0, 1]")
        return cls(torch.cumprod(1 - betas, 0), **kwargs)

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteSchedule:
        """DDPM's linear β schedule (Ho et al. 2020): β_t = linspace(1e-4, 0.02, T)."""
        return cls.from_betas(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def scaled_linear(
        cls, T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> DiscreteSchedule:
        """Stable Diffusion's schedule: β_t = linspace(sqrt β_start, sqrt β_end, T)²."""
        b = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64)
        return cls.from_betas(b**2)

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiscreteSchedule:
        """Nichol & Dhariwal's cosine schedule: ᾱ(u) = cos²((u + s)/(1 + s)·π/2), β capped."""
        u = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls.from_betas(betas)

    # queries -------------------------------------------------------------------------------
    @property
    def T(self) -> int:
        return self.alphas_cumprod.numel()

    @property
    def sigma_min(self) -> float:
        return self._bounds[0]

    @property
    def sigma_max(self) -> float:
        return self._bounds[1]

    def sigma_of_t(self, t: Tensor | float) -> Tensor:
        """σ(t) for real t ∈ [0, T−1], interpolating log σ linearly between integers."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if (t < 0).any() or (t > self.T - 1).any():
            raise ValueError(f"t: expected values in [0, {self.T - 1}]")
        lo = t.floor().long().clamp(max=self.T - 2)
        w = t - lo
        log_s = self.sigmas.log()
        mixed = torch.exp((1 - w) * log_s[lo] + w * log_s[lo + 1])
        # integer t gives the schedule's σ bit for bit
        return torch.where(w == 0, self.sigmas[lo], torch.where(w == 1, self.sigmas[lo + 1], mixed))

    def t_of_sigma(self, sigma: float, snap: bool = False) -> float:
        """The real timestep whose σ(t) is ``sigma`` (clamped to [0, T−1]); rounded if ``snap``."""
        ls = self._log_sigmas
        if sigma <= 0:
            return 0.0
        x = math.log(sigma)
        if x <= ls[0]:
            return 0.0
        i = bisect.bisect_right(ls, x)
        if i >= len(ls):
            return float(self.T - 1)
        t = i - 1 + (x - ls[i - 1]) / (ls[i] - ls[i - 1])
        return float(round(t)) if snap else t

    def t_slope(self, sigma: float) -> float:
        """dt/dlog σ of :meth:`t_of_sigma` at ``sigma`` (0 where t is clamped)."""
        ls = self._log_sigmas
        i = bisect.bisect_right(ls, math.log(sigma)) if sigma > 0 else 0
        return 0.0 if i == 0 or i >= len(ls) else 1.0 / (ls[i] - ls[i - 1])

    def alpha_cumprod_of_sigma(self, sigma: Tensor | float) -> Tensor:
        """ᾱ = 1 / (1 + σ²)."""
        return 1 / (1 + torch.as_tensor(sigma, dtype=torch.float64) ** 2)
