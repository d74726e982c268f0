"""The user-facing calls: sample, encode, decode, slerp."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .grids import Grid, check_sigmas, from_timesteps, make_grid
from .integrate import BudgetExceeded, Info, Step, integrate
from .latent import Latent
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
    x: Tensor | Latent,
    name: str,
    reverse: bool,
    solver: str | Solver | None,
    nfe: int | None,
    sigmas,
    timesteps,
    grid,
    generator,
    progress: bool,
    callback,
    return_info: bool,
    options: dict,
) -> Tensor | Latent | tuple[Tensor | Latent, Info]:
    if not isinstance(model, Model):
        raise TypeError(
            f"model: expected an odediff model (with .schedule and .eps(xbar, sigma)), got "
            f"{type(model).__name__}; wrap a network with odediff.EpsModel(net, alphas_cumprod)"
        )
    carry, out_dtype = None, x.dtype
    if isinstance(x, Latent):
        s, grid_s = _latent_plan(model, x, name, solver, nfe, sigmas, timesteps, grid, options)
        x, carry, nfe = x.xT, x.carry, None  # from a latent the first step costs nothing
    else:
        _check_input(model, x, name)
        s = get_solver("adams" if solver is None else solver, **options)
        grid_s = plan(model, s, nfe, sigmas, timesteps, grid)
    if reverse:
        grid_s = grid_s.flip(0)
    try:
        out, info = integrate(
            model, x, grid_s, s,
            nfe=None if s.adaptive else nfe,
            generator=generator, max_nfe=getattr(s, "max_nfe", None),
            progress=progress, callback=callback, carry=carry,
        )  # fmt: skip
    except BudgetExceeded as e:
        raise BudgetExceeded(f"{s.name}: {e}") from None
    out = out.to(out_dtype)
    if reverse and s.reversible:
        xT = info.carry[0] / math.sqrt(1 + float(grid_s[-1]) ** 2)
        out = Latent(xT, info.carry[1], s, info.nfe, grid_s.flip(0), out.dtype)
    return (out, info) if return_info else out


def _latent_plan(
    model, z: Latent, name, solver, nfe, sigmas, timesteps, grid, options
) -> tuple[Solver, Tensor]:
    """The latent's own solver and grid, after checking that what the caller asked agrees."""
    asked = z.solver if solver is None and not options else get_solver(solver or z.solver.name, **options)
    same = asked == z.solver and nfe in (None, z.nfe)
    if same and (sigmas is not None or timesteps is not None or grid is not None):
        g = plan(model, asked, z.nfe, sigmas, timesteps, grid)
        same = g.shape == z.sigmas.shape and torch.equal(g, z.sigmas.to(g))
    if not same:
        raise ValueError(
            f"{name}: this latent was encoded by {z.describe()} and decodes exactly only with the "
            f"same; drop the solver/nfe/grid arguments to use its own, or pass {name}.x to start "
            "afresh from x_T alone"
        )
    if not z.solver.reversible:
        raise ValueError(f"{name}: {z.solver.name} is not reversible")
    net = getattr(model, "parameters_like", lambda: None)()
    if net is not None and z.xT.device != net[0]:
        raise ValueError(f"{name}: on {z.xT.device} but the network is on {net[0]}; move one of them")
    return z.solver, z.sigmas.to(torch.float64)


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


def decode(
    model: Model,
    xT: Tensor | Latent,
    *,
    solver: str | Solver | None = None,
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
    """Latent x_T → image x_0: :func:`sample` from ``xT`` (solver ``"adams"`` unless given).

    A :class:`Latent` (what ``encode`` returns for a reversible solver) decodes with its own
    solver, budget and grid; any of them given must agree with the latent's.
    """
    return _solve(
        model, xT, "xT", False, solver, nfe, sigmas, timesteps, grid,
        generator, progress, callback, return_info, options,
    )  # fmt: skip


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
) -> Tensor | Latent | tuple[Tensor | Latent, Info]:
    """Image x_0 → latent x_T by integrating the same grid as :func:`decode`, reversed.

    With a reversible solver (``odediff.SOLVERS[name].reversible``) the result is a
    :class:`Latent` that :func:`decode` turns back into ``x0`` to round-off.
    """
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
