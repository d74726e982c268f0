"""The user-facing calls: sample, encode, decode, slerp."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .grids import Grid, check_sigmas, from_timesteps, make_grid
from .integrate import BudgetExceeded, Info, Step, integrate
from .models import Model
from .solvers import Solver, get_solver

__all__ = ["decode", "encode", "plan", "sample", "slerp"]

DEFAULT_NFE = 20


def plan(
    model: Model,
    solver: Solver,
    nfe: int | None = None,
    sigmas: Sequence[float] | Tensor | None = None,
    timesteps: Sequence[float] | Tensor | None = None,
    grid: str | Grid | None = None,
) -> Tensor:
    """The decreasing σ grid a solve will use (float64), from exactly one way of giving it."""
    sched = model.schedule
    if sigmas is not None and timesteps is not None:
        raise ValueError("sigmas, timesteps: give one of them, not both")
    if sigmas is not None or timesteps is not None:
        if grid is not None:
            raise ValueError("grid: not used when sigmas or timesteps are given; drop one")
        s = check_sigmas(sigmas, sched) if sigmas is not None else from_timesteps(sched, timesteps)
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
        return torch.tensor([sched.sigma_max, sched.sigma_min, 0.0], dtype=torch.float64)
    return make_grid(sched, solver.intervals(DEFAULT_NFE if nfe is None else nfe), grid)


def _check_input(model: Model, x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{name}: expected a batch tensor of shape (batch, ...), got a scalar")
    net = getattr(model, "parameters_like", lambda: None)()
    if net is not None:
        device, dtype = net
        if x.device != device:
            raise ValueError(f"{name}: on {x.device} but the network is on {device}; move one of them")
        if dtype != x.dtype and not (x.dtype in (torch.float16, torch.bfloat16) and dtype == torch.float32):
            raise TypeError(
                f"{name}: dtype {x.dtype} but the network's parameters are {dtype}; "
                f"pass {name}.to({dtype}) or convert the network"
            )


def _solve(
    model: Model,
    x: Tensor,
    name: str,
    reverse: bool,
    solver: str | Solver,
    nfe: int | None,
    sigmas,
    timesteps,
    grid,
    generator,
    progress: bool,
    callback,
    return_info: bool,
    options: dict,
) -> Tensor | tuple[Tensor, Info]:
    if not isinstance(model, Model):
        raise TypeError(
            f"model: expected an odediff model (with .schedule and .eps(xbar, sigma)), got "
            f"{type(model).__name__}; wrap a network with odediff.EpsModel(net, alphas_cumprod)"
        )
    _check_input(model, x, name)
    s = get_solver(solver, **options)
    grid_s = plan(model, s, nfe, sigmas, timesteps, grid)
    if reverse:
        grid_s = grid_s.flip(0)
    try:
        out, info = integrate(
            model, x, grid_s, s,
            nfe=None if s.adaptive else nfe,
            generator=generator, max_nfe=getattr(s, "max_nfe", None),
            progress=progress, callback=callback,
        )  # fmt: skip
    except BudgetExceeded as e:
        raise BudgetExceeded(f"{s.name}: {e}") from None
    return (out, info) if return_info else out


def sample(
    model: Model,
    noise: Tensor | None = None,
    *,
    shape: Sequence[int] | None = None,
    solver: str | Solver = "adams",
    nfe: int | None = None,
    sigmas: Sequence[float] | Tensor | None = None,
    timesteps: Sequence[float] | Tensor | None = None,
    grid: str | Grid | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: Callable[[Step], None] | None = None,
    return_info: bool = False,
    **options,
) -> Tensor | tuple[Tensor, Info]:
    """Integrate dx̄/dσ = ε(x̄, σ) from the VP-scale ``noise`` x_T at σ = sigmas[0] down the grid.

    Give the grid by ``nfe`` (a budget of network evaluations, spent exactly by fixed-step
    solvers) with an optional ``grid`` family, or explicitly by ``sigmas`` or ``timesteps``.
    ``options`` go to the solver (``eta``, ``order``, ``rtol``, ``atol``, ``max_nfe``, …).
    """
    if (noise is None) == (shape is None):
        raise ValueError("noise, shape: give exactly one of them")
    if noise is None:
        noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
        net = getattr(model, "parameters_like", lambda: None)()
        if net is not None:
            noise = noise.to(device=net[0], dtype=net[1])
    return _solve(
        model, noise, "noise", False, solver, nfe, sigmas, timesteps, grid,
        generator, progress, callback, return_info, options,
    )  # fmt: skip


def decode(model: Model, xT: Tensor, **kwargs) -> Tensor | tuple[Tensor, Info]:
    """Latent x_T → image x_0; the same as :func:`sample` with ``noise=xT``."""
    return sample(model, xT, **kwargs)


def encode(
    model: Model,
    x0: Tensor,
    *,
    solver: str | Solver = "adams",
    nfe: int | None = None,
    sigmas: Sequence[float] | Tensor | None = None,
    timesteps: Sequence[float] | Tensor | None = None,
    grid: str | Grid | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: Callable[[Step], None] | None = None,
    return_info: bool = False,
    **options,
) -> Tensor | tuple[Tensor, Info]:
    """Image x_0 → latent x_T by integrating the same grid as :func:`decode`, reversed."""
    return _solve(
        model, x0, "x0", True, solver, nfe, sigmas, timesteps, grid,
        generator, progress, callback, return_info, options,
    )  # fmt: skip


def slerp(z0: Tensor, z1: Tensor, alpha: float | Tensor) -> Tensor:
    """Spherical interpolation sin((1−α)θ)/sin θ·z0 + sin(αθ)/sin θ·z1, per batch item.

    θ is the angle between the items of z0 and z1 (each item along the first dimension is one
    vector). A 1-D ``alpha`` of length m gives m interpolants stacked in a new first dimension.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"z1: shape {tuple(z1.shape)} differs from z0's {tuple(z0.shape)}")
    a = torch.as_tensor(alpha, dtype=torch.float64)
    if a.ndim > 1:
        raise ValueError(f"alpha: expected a number or a 1-D tensor, got shape {tuple(a.shape)}")
    u0 = z0.reshape(z0.shape[0], -1).double()
    u1 = z1.reshape(z1.shape[0], -1).double()
    cos = (u0 * u1).sum(1) / (u0.norm(dim=1) * u1.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]
    a_ = a.reshape(-1, 1, 1) if a.ndim == 1 else a
    sin = torch.sin(theta)
    small = sin < 1e-8  # (anti)parallel: fall back to linear interpolation
    w0 = torch.where(small, 1 - a_, torch.sin((1 - a_) * theta) / torch.where(small, 1.0, sin))
    w1 = torch.where(small, a_, torch.sin(a_ * theta) / torch.where(small, 1.0, sin))
    out = (w0 * u0 + w1 * u1).to(z0.dtype)
    return out.reshape((-1, *z0.shape) if a.ndim == 1 else z0.shape)
