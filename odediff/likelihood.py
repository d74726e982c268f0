"""The model's log-density of data through the probability-flow ODE, and bits per dimension.

**The equation.** Let p_σ be the density of x̄ = x_0 + σ·n (n ~ N(0, I)) at noise level σ, in
x̄ coordinates. Along a solution of dx̄/dσ = ε(x̄, σ), the instantaneous change of variables
gives d log p_σ(x̄(σ))/dσ = −∇·ε(x̄(σ), σ), so from σ_s (the data) to σ_e (the prior)

    log p_{σ_s}(x_0) = log p_{σ_e}(x̄(σ_e)) + Δ,    Δ = ∫_{σ_s}^{σ_e} ∇·ε(x̄(σ), σ) dσ,   x̄(σ_s) = x_0.

The loop (:func:`odediff.integrate`) solves the augmented state (x̄, Δ) with any solver of the
registry; the model's evaluation also returns dΔ/dσ = ∇·ε, computed by vector–Jacobian
products (VJPs) of ε at the same point.

**The prior.** Sampling draws x_T ~ N(0, I) at σ_max, that is x̄ = x_T·sqrt(1+σ_max²): the
schedule's prior in x̄ is N(0, (1+σ_e²)I), log p = log N(x_T; 0, I) − (D/2)·log(1+σ_e²), where
the last term is the change of variables x_T → x̄ (D·log sqrt(ᾱ), ᾱ = 1/(1+σ²)). The true p_{σ_e}
is the data convolved with N(0, σ_e²I); to first order in 1/σ_e the two differ by x̄·m/σ_e²
(m the data mean), a random O(‖m‖/σ_e) per image: on the zoo mixture (‖m‖ ≈ 5, σ_max ≈ 157)
its standard deviation is ≈ 0.03 nats per image, ≈ 5e-4 nats/dim (README, "Likelihood").

**The start σ_s.** The model exists only on [σ_min, σ_max] (below σ_min a network is evaluated at
σ_min), so the data is placed at σ_s = σ_min by default: the result is log p_{σ_min}(x_0), the
density of the data blurred by N(0, σ_min²) (for the mixture: Σ_k π_k N(x_0; μ_k, Σ_k + σ_min²I)),
in the data's own coordinates x̄ = x_0. Read as the density of the VP-scale x_{t=0} = x̄·sqrt(ᾱ_0)
instead, add (D/2)·log(1+σ_s²) and evaluate at x_0·sqrt(1+σ_s²) (≤ 5e-5 nats/dim on DDPM's
linear schedule, σ_min ≈ 0.01).

**The divergence.** ``"exact"``: ∇·ε = Σ_i e_iᵀ(∂ε/∂x̄)e_i, one VJP per dimension (batched through
``torch.autograd.grad(..., is_grads_batched=True)``). ``"hutchinson"``: ∇·ε ≈ (1/P)·Σ_p v_pᵀ(∂ε/∂x̄)v_p
with P probes v_p (Rademacher ±1 or standard Gaussian) drawn once and held through the whole
solve; each probe carries its own Δ_p, so the estimate is the mean of P independent unbiased
estimates and its standard error is their standard deviation over sqrt(P). ``"auto"`` is exact
when D ≤ :data:`EXACT_MAX_DIM` (the zoo's 8×8 digits, 16×16 photo patches), Hutchinson above:
exact costs D VJPs per evaluation, Hutchinson P, at the price of a standard error ∝ 1/sqrt(P).

**Counting.** NFE counts network evaluations in the loop's one place (an evaluation counts once
however many probes or VJPs it serves); VJPs are counted separately, one per vector (D or P per
evaluation), each covering the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .api import _check_input, _check_model
from .grids import DEFAULT_NFE, check_sigmas, make_grid
from .integrate import Info, integrate
from .models import Model
from .schedules import DiscreteSchedule
from .solvers import Solver, get_solver
from .solvers.base import check_nfe

__all__ = ["DEFAULT_SOLVER", "EXACT_MAX_DIM", "LikelihoodInfo", "bits_per_dim", "log_likelihood"]

Divergence = Literal["auto", "exact", "hutchinson"]
Probes = Literal["rademacher", "gaussian"]
DIVERGENCES = ("auto", "exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
EXACT_MAX_DIM = 256  # "auto": exact divergence up to this many dimensions, Hutchinson above
DEFAULT_SOLVER = "rk45"
DEFAULT_TOL = 1e-5  # rtol = atol of the adaptive default (README, "Likelihood")
_CHUNK = 2**22  # elements of one batched VJP's output (vectors × batch × D)


@dataclass
class LikelihoodInfo:
    """What :func:`log_likelihood` returns alongside log p (per-sample tensors are float64)."""

    nfe: int  # network evaluations (each serves every probe)
    vjps: int  # vector–Jacobian products (each covers the whole batch)
    divergence: str  # "exact" or "hutchinson"
    n_probes: int | None  # Hutchinson's P, None when exact
    stderr: Tensor | None  # (batch,) standard error from the probes' spread (NaN for 1 probe); None if exact
    prior: Tensor  # (batch,) log N(x̄(σ_e); 0, (1+σ_e²)I)
    delta: Tensor  # (batch,) Δ = ∫ ∇·ε dσ (the mean over probes when estimated)
    xT: Tensor  # (batch, ...) the VP-scale end point x̄(σ_e)/sqrt(1+σ_e²)
    ode: Info  # the loop's info: solver, grid, steps, visited σ, rejected steps


class _Augmented:
    """The field of the augmented state z = (x̄ flattened, Δ_1…Δ_P) as a :class:`Model`:
    ``eps(z, σ)`` = (ε(x̄, σ), dΔ_p/dσ), with the divergence (or its P probe estimates)."""

    def __init__(self, model: Model, shape: tuple[int, ...], probes: Tensor | None):
        self.model, self.shape, self.probes = model, shape, probes
        self.schedule = model.schedule
        self.casts_input = getattr(model, "casts_input", False)
        self.dim = math.prod(shape[1:])
        self.vjps = 0

    def parameters_like(self) -> tuple[torch.device, torch.dtype] | None:
        return self.model.parameters_like()

    def eps(self, z: Tensor, sigma: float) -> Tensor:
        x = z[:, : self.dim].reshape(self.shape).detach().requires_grad_(True)
        with torch.enable_grad():
            e = self.model.eps(x, sigma)
        if not isinstance(e, Tensor) or e.shape != x.shape:
            got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
            raise ValueError(f"model: ε is {got}, expected a tensor of the input's shape {self.shape}")
        if not e.requires_grad:
            raise ValueError(
                "model: ε does not depend differentiably on x̄ (computed under torch.no_grad, detached, "
                "or outside torch); the likelihood needs its vector–Jacobian products"
            )
        rate = self._divergence(e, x) if self.probes is None else self._hutchinson(e, x)
        return torch.cat([e.detach().reshape(len(z), -1).to(z.dtype), rate.to(z.dtype)], dim=1)

    def _vjp(self, e: Tensor, x: Tensor, vs: Tensor, last: bool) -> Tensor:
        """vᵀ∂ε/∂x̄ for each of the vectors ``vs`` (P, *x.shape), in one batched backward pass."""
        self.vjps += len(vs)
        (g,) = torch.autograd.grad(e, x, vs.to(e.dtype), retain_graph=not last, is_grads_batched=True)
        return g

    def _divergence(self, e: Tensor, x: Tensor) -> Tensor:
        """Σ_i ∂ε_i/∂x̄_i per sample, (batch, 1): unit vectors e_i in chunks of at most _CHUNK elements."""
        b, d = len(x), self.dim
        step = max(1, _CHUNK // (b * d))
        total = torch.zeros(b, dtype=x.dtype, device=x.device)
        for i0 in range(0, d, step):
            i1 = min(d, i0 + step)
            basis = torch.zeros(i1 - i0, b, d, dtype=x.dtype, device=x.device)
            basis[torch.arange(i1 - i0), :, torch.arange(i0, i1)] = 1.0
            g = self._vjp(e, x, basis.reshape(i1 - i0, *x.shape), i1 == d).reshape(i1 - i0, b, d)
            total += g[torch.arange(i1 - i0), :, torch.arange(i0, i1)].sum(0)
        return total[:, None]

    def _hutchinson(self, e: Tensor, x: Tensor) -> Tensor:
        """v_pᵀ(∂ε/∂x̄)v_p per sample and probe, (batch, P)."""
        v = self.probes
        g = self._vjp(e, x, v, True)
        return (g * v.to(g.dtype)).flatten(2).sum(-1).T


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def _grid(
    schedule: DiscreteSchedule,
    solver: Solver,
    nfe: int | None,
    sigmas: Sequence[float] | Tensor | None,
    grid: str | None,
    sigma_start: float,
) -> Tensor:
    """The increasing σ grid from σ_s to σ_max (no step into 0: the data sit at σ_s > 0).

    A fixed-step budget n is the sampling grid of budget n + 1 ending at σ_s (``sigma_last``)
    without its interval into 0, which costs exactly one evaluation."""
    if sigmas is not None:
        if nfe is not None or grid is not None:
            raise ValueError("sigmas: give sigmas, or nfe and grid, not both")
        s = check_sigmas(sigmas, schedule)
        if (s == 0).any():
            raise ValueError("sigmas: the likelihood integrates from the data at σ_s > 0; drop the 0")
        return s.sort().values
    if solver.adaptive:
        if nfe is not None:
            solver.intervals(nfe)  # raises the solver's own explanation
        if grid is not None:
            raise ValueError(f"grid: {solver.name} is adaptive and chooses its own steps; drop grid")
        return torch.tensor([sigma_start, schedule.sigma_max], dtype=torch.float64)
    n = check_nfe(DEFAULT_NFE if nfe is None else nfe, solver.name)
    try:
        intervals = solver.intervals(n + 1)
    except ValueError:
        near = [m for m in range(max(1, n - 8), n + 9) if _plans(solver, m + 1)]
        hint = f"; try {min(near, key=lambda m: abs(m - n))}" if near else ""
        raise ValueError(
            f"nfe: {solver.name} cannot spend exactly {n} from σ_s to σ_max (no step into σ = 0){hint}"
        ) from None
    return make_grid(schedule, intervals, grid, sigma_last=sigma_start)[:-1].flip(0)


def _plans(solver: Solver, nfe: int) -> bool:
    try:
        solver.intervals(nfe)
    except ValueError:
        return False
    return True


def _draw_probes(kind: str, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    if kind == "rademacher":
        return torch.randint(0, 2, shape, generator=generator, dtype=torch.float64) * 2 - 1
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def log_likelihood(
    model: Model,
    x0: Tensor,
    *,
    solver: str | Solver = DEFAULT_SOLVER,
    nfe: int | None = None,
    sigmas: Sequence[float] | Tensor | None = None,
    grid: str | None = None,
    divergence: Divergence = "auto",
    probes: Probes = "rademacher",
    n_probes: int = 4,
    generator: torch.Generator | None = None,
    sigma_start: float | None = None,
    progress: bool = False,
    **options: Any,
) -> tuple[Tensor, LikelihoodInfo]:
    """log p_{σ_s}(x_0) in nats per sample, (batch,) float64, by the ODE σ_s → σ_max (module docstring).

    ``solver``: a registry name or Solver (default ``"rk45"`` at rtol = atol = 1e-5; other
    options such as ``rtol``, ``atol``, ``max_nfe`` go to it), not a stochastic one. A fixed-step
    solver spends exactly ``nfe`` (default 20) on a ``grid`` family from σ_s to σ_max, or takes
    explicit ``sigmas`` (positive; its ends are σ_s and σ_e). ``divergence``: ``"exact"``,
    ``"hutchinson"`` with ``n_probes`` ``probes`` drawn from ``generator``, or ``"auto"`` (exact
    when D ≤ :data:`EXACT_MAX_DIM`). ``sigma_start`` (default σ_min) is where x_0 sits. The model
    must be differentiable in x̄; no graph is kept (the result is detached).
    """
    model = _check_model(model)
    x0 = _check_input(model, x0, "x0")
    want = getattr(model, "sample_shape", None)
    if x0.ndim < 2 or (want is not None and tuple(x0.shape[1:]) != tuple(want)):
        expect = "(batch, ...)" if want is None else f"(batch, {', '.join(map(str, want))})"
        raise ValueError(f"x0: expected shape {expect}, got {tuple(x0.shape)}")
    _check_choice(divergence, "divergence", DIVERGENCES)
    _check_choice(probes, "probes", PROBES)
    dim = math.prod(x0.shape[1:])
    kind = ("exact" if dim <= EXACT_MAX_DIM else "hutchinson") if divergence == "auto" else divergence
    if kind == "hutchinson":
        if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
            raise ValueError(f"n_probes: expected a whole number ≥ 1, got {n_probes!r}")
    s = get_solver(solver, **options)
    if s.adaptive and isinstance(solver, str):
        s = get_solver(s, **{"rtol": DEFAULT_TOL, "atol": DEFAULT_TOL, **options})
    if s.stochastic:
        raise ValueError(f"solver: {s.name} is stochastic; the likelihood needs the ODE (e.g. eta=0)")
    sched = model.schedule
    lo = sched.sigma_min if sigma_start is None else float(sigma_start)
    if not sched.sigma_min <= lo < sched.sigma_max:
        raise ValueError(
            f"sigma_start: expected a σ in [σ_min, σ_max) = [{sched.sigma_min:.6g}, {sched.sigma_max:.6g}), "
            f"got {sigma_start!r}"
        )
    sig = _grid(sched, s, nfe, sigmas, grid, lo)
    budget = None if s.adaptive or sigmas is not None else (DEFAULT_NFE if nfe is None else nfe)
    v = None
    if kind == "hutchinson":
        v = _draw_probes(probes, (n_probes, *x0.shape), generator).to(x0.device)
    width = 1 if v is None else n_probes
    field = _Augmented(model, tuple(x0.shape), v)
    state = x0.detach().to(torch.float64).reshape(len(x0), -1)
    state = torch.cat([state, state.new_zeros(len(x0), width)], dim=1)
    z, ode = integrate(
        field, state, sig, s, nfe=budget, dtype=x0.dtype,
        generator=generator, max_nfe=getattr(s, "max_nfe", None), progress=progress, grad=False, scaled=False,
    )  # fmt: skip
    z = z.to(torch.float64)
    s_e = float(sig[-1])
    xT = z[:, :dim] / math.sqrt(1 + s_e * s_e)
    prior = -0.5 * (xT.square().sum(1) + dim * math.log(2 * math.pi) + dim * math.log1p(s_e * s_e))
    deltas = z[:, dim:]
    delta = deltas.mean(1)
    stderr = None
    if v is not None:
        stderr = deltas.std(1) / math.sqrt(n_probes) if n_probes > 1 else torch.full_like(delta, math.nan)
    info = LikelihoodInfo(
        nfe=ode.nfe, vjps=field.vjps, divergence=kind, n_probes=None if v is None else n_probes,
        stderr=stderr, prior=prior, delta=delta, xT=xT.reshape(x0.shape).to(x0.dtype), ode=ode,
    )  # fmt: skip
    return prior + delta, info


def bits_per_dim(logp: Tensor, x_shape: Sequence[int], bits: int = 8, *, data_range: float = 2.0) -> Tensor:
    """Bits per dimension of data quantised to 2^bits levels across ``data_range`` (default [−1, 1]).

    A continuous density p over bins of width Δ = data_range/2^bits gives each quantised image
    the probability ≈ p(x)·Δ^D (the uniform-dequantisation offset), so

        bpd = −(log p + D·log Δ) / (D·ln 2) = −log p / (D·ln 2) + bits − log2(data_range),

    i.e. + 7 for 8-bit data in [−1, 1]. ``x_shape`` is the shape of one sample (D = its product).
    The zoo's digits (pixels 0…16 as p/8 − 1) have Δ = 1/8: ``bits=4``.
    """
    if not isinstance(logp, Tensor):
        raise TypeError(f"logp: expected a tensor of log-densities in nats, got {type(logp).__name__}")
    try:
        dim = math.prod(int(n) for n in x_shape)
    except (TypeError, ValueError):
        raise TypeError(f"x_shape: expected the shape of one sample, got {x_shape!r}") from None
    if dim < 1:
        raise ValueError(f"x_shape: expected a shape with at least one element, got {tuple(x_shape)}")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits: expected a whole number ≥ 1, got {bits!r}")
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range: expected a positive number, got {data_range!r}")
    log_bin = math.log(data_range) - bits * math.log(2)
    return -(logp.to(torch.float64) + dim * log_bin) / (dim * math.log(2))
