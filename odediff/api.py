"""The user-facing calls: sample, encode, decode, slerp.

``sample``, ``encode`` and ``decode`` take the same keyword arguments (:data:`SOLVE_ARGS`):

- ``solver``: a name of :data:`odediff.SOLVERS`, ``"torchdiffeq:METHOD"`` or a :class:`Solver`
  (default ``"adams"``); any keyword not listed here is one of its options (``order``, ``eta``,
  ``rtol``, ``atol``, ``max_nfe``, …), and an option it does not have is refused;
- the grid, in exactly one way: ``nfe`` (a budget of network evaluations, spent exactly by
  fixed-step solvers) with an optional ``grid`` family, or ``sigmas``, or ``timesteps``;
- ``generator`` (stochastic solvers), ``progress`` (a tqdm bar), ``callback(Step)`` after each
  step, ``return_info`` (also return an :class:`Info`), ``grad`` (build an autograd graph:
  by default only when the input requires grad). ``grid="tuned"`` with ``nfe`` uses the learned
  solver shipped for a zoo model at that NFE (:func:`odediff.tune.shipped`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .fingerprint import fingerprint
from .grids import Grid, plan
from .integrate import Info, Step, integrate
from .latent import Latent
from .models import Model
from .solvers import Solver, get_solver
from .solvers.base import check_nfe
from .solvers.stochastic import Generators, check_generators, randn

__all__ = ["SOLVE_ARGS", "decode", "encode", "sample", "slerp"]


@dataclass(frozen=True)
class _Args:
    """The keyword arguments shared by sample, encode and decode (module docstring)."""

    solver: str | Solver | None = None
    nfe: int | None = None
    sigmas: Sequence[float] | Tensor | None = None
    timesteps: Sequence[float] | Tensor | None = None
    grid: str | Grid | None = None
    generator: Generators = None
    progress: bool = False
    callback: Callable[[Step], None] | None = None
    return_info: bool = False
    grad: bool | None = None
    options: dict[str, Any] = field(default_factory=dict)


SOLVE_ARGS = tuple(f for f in _Args.__dataclass_fields__ if f != "options")


def _args(kwargs: dict[str, Any]) -> _Args:
    shared = {k: v for k, v in kwargs.items() if k in SOLVE_ARGS}
    return _Args(**shared, options={k: v for k, v in kwargs.items() if k not in SOLVE_ARGS})


def _check_model(model: Any) -> Model:
    if not isinstance(model, Model):
        raise TypeError(
            f"model: expected an odediff model (with .schedule, .eps(xbar, sigma) and .parameters_like()), "
            f"got {type(model).__name__}; wrap a network with odediff.EpsModel(net, alphas_cumprod)"
        )
    return model


def _check_input(model: Model, x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{name}: expected a batch tensor of shape (batch, ...), got a scalar")
    net = model.parameters_like()
    if net is not None:
        device, dtype = net
        if x.device != device:
            raise ValueError(f"{name}: on {x.device} but the network is on {device}; move one of them")
        if dtype != x.dtype and not (x.dtype in (torch.float16, torch.bfloat16) and dtype == torch.float32):
            raise TypeError(
                f"{name}: dtype {x.dtype} but the network's parameters are {dtype}; "
                f"pass {name}.to({dtype}) or convert the network"
            )
    if not torch.isfinite(x).all():  # one sync per solve
        raise ValueError(f"{name}: contains NaN or Inf")
    return x


def _solve(model: Model, x: Tensor | Latent, name: str, reverse: bool, a: _Args, other_model: bool = False):
    model = _check_model(model)
    carry = None
    if isinstance(x, Latent):
        s, grid_s = _latent_plan(model, x, name, a, other_model)
        x, carry, dtype, nfe = x.xT, x.carry, x.dtype, None  # from a latent the first step costs nothing
    else:
        x = _check_input(model, x, name)
        check_generators(a.generator, x.shape[0])
        if a.grid == "tuned":
            a = _tuned(model, a, reverse)
        s = get_solver("adams" if a.solver is None else a.solver, **a.options)
        nfe = None if a.nfe is None or s.adaptive else check_nfe(a.nfe, s.name)
        grid_s = plan(model.schedule, s, a.nfe if nfe is None else nfe, a.sigmas, a.timesteps, a.grid)
        dtype = x.dtype
    if reverse:
        grid_s = grid_s.flip(0)
    out, info = integrate(
        model, x, grid_s, s, nfe=nfe, dtype=dtype, generator=a.generator,
        max_nfe=getattr(s, "max_nfe", None), progress=a.progress, callback=a.callback,
        carry=carry, grad=a.grad,
    )  # fmt: skip
    if reverse and s.reversible:
        xT = info.carry[0] / math.sqrt(1 + float(grid_s[-1]) ** 2)
        out = Latent(xT, info.carry[1], s, info.nfe, grid_s.flip(0), out.dtype, fingerprint(model))
    return (out, info) if a.return_info else out


def _tuned(model: Model, a: _Args, reverse: bool) -> _Args:
    """``grid="tuned"``: the learned solver and grid shipped for this zoo model and ``nfe``."""
    if reverse:
        raise ValueError("grid: a tuned solver samples (σ_max → 0); it does not encode")
    if a.solver is not None or a.options or a.sigmas is not None or a.timesteps is not None:
        raise ValueError(
            "grid: 'tuned' brings its own solver and grid; drop solver, its options, sigmas and timesteps"
        )
    from .tune import shipped_args

    return replace(a, grid=None, **shipped_args(model, a.nfe))


def _latent_plan(model: Model, z: Latent, name: str, a: _Args, other_model: bool) -> tuple[Solver, Tensor]:
    """The latent's own solver and grid, after checking that what the caller asked agrees."""
    if not other_model and fingerprint(model) != z.model:
        raise ValueError(
            f"{name}: this latent was encoded by another model (or the same one with other weights, "
            "schedule, conditioning or guidance), so decoding it here is not its inverse; pass "
            "allow_other_model=True to decode it anyway (e.g. to edit with a changed prompt)"
        )
    asked = (
        z.solver if a.solver is None and not a.options else get_solver(a.solver or z.solver.name, **a.options)
    )
    same = asked == z.solver and a.nfe in (None, z.nfe)
    if same and (a.sigmas is not None or a.timesteps is not None or a.grid is not None):
        g = plan(model.schedule, asked, z.nfe, a.sigmas, a.timesteps, a.grid)
        same = g.shape == z.sigmas.shape and torch.equal(g, z.sigmas.to(g))
    if not same:
        raise ValueError(
            f"{name}: this latent was encoded by {z.describe()} and decodes exactly only with the "
            f"same; drop the solver/nfe/grid arguments to use its own, or pass {name}.x to start "
            "afresh from x_T alone"
        )
    if not z.solver.reversible:
        raise ValueError(f"{name}: {z.solver.name} is not reversible")
    net = model.parameters_like()
    if net is not None and z.xT.device != net[0]:
        raise ValueError(f"{name}: on {z.xT.device} but the network is on {net[0]}; move one of them")
    return z.solver, z.sigmas.to(torch.float64)


def sample(
    model: Model, noise: Tensor | None = None, *, shape: Sequence[int] | None = None, **kwargs: Any
) -> Tensor | tuple[Tensor, Info]:
    """Integrate dx̄/dσ = ε(x̄, σ) from the VP-scale ``noise`` x_T at σ = sigmas[0] down the grid.

    Give ``noise`` or a ``shape`` to draw it from (with ``generator``, in the network's dtype
    and device). The keyword arguments are :mod:`odediff.api`'s shared ones.
    """
    if (noise is None) == (shape is None):
        raise ValueError("noise, shape: give exactly one of them")
    if noise is None:
        model = _check_model(model)
        if not all(isinstance(n, int) and n > 0 for n in shape):
            raise ValueError(f"shape: expected positive whole numbers, got {tuple(shape)}")
        noise = randn(tuple(shape), kwargs.get("generator"), dtype=torch.float32, device="cpu")
        net = model.parameters_like()
        if net is not None:
            noise = noise.to(device=net[0], dtype=net[1])
    return _solve(model, noise, "noise", False, _args(kwargs))


def decode(
    model: Model, xT: Tensor | Latent, *, allow_other_model: bool = False, **kwargs: Any
) -> Tensor | tuple[Tensor, Info]:
    """Latent x_T → image x_0: :func:`sample` from ``xT`` (solver ``"adams"`` unless given).

    A :class:`Latent` (what ``encode`` returns for a reversible solver) decodes with its own
    solver, budget and grid; any of them given must agree with the latent's. It also records a
    fingerprint of the model that encoded it (:mod:`odediff.fingerprint`): another model, or the
    same network with other weights, conditioning or guidance weight, is refused unless
    ``allow_other_model=True`` (then the result is an edit, not the inverse).
    """
    if not isinstance(allow_other_model, bool):
        raise TypeError(f"allow_other_model: expected True or False, got {allow_other_model!r}")
    return _solve(model, xT, "xT", False, _args(kwargs), allow_other_model)


def encode(model: Model, x0: Tensor, **kwargs: Any) -> Tensor | Latent | tuple[Tensor | Latent, Info]:
    """Image x_0 → latent x_T by integrating the same grid as :func:`decode`, reversed.

    With a reversible solver (``odediff.SOLVERS[name].reversible``) the result is a
    :class:`Latent` that :func:`decode` turns back into ``x0`` to round-off.
    """
    return _solve(model, x0, "x0", True, _args(kwargs))


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
    n0, n1 = u0.norm(dim=1), u1.norm(dim=1)
    if (n0 == 0).any() or (n1 == 0).any():
        raise ValueError(f"{'z0' if (n0 == 0).any() else 'z1'}: a zero vector has no direction to slerp")
    cos = (u0 * u1).sum(1) / (n0 * n1)
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]
    a_ = a.reshape(-1, 1, 1) if a.ndim == 1 else a
    sin = torch.sin(theta)
    small = sin < 1e-8  # (anti)parallel: fall back to linear interpolation
    w0 = torch.where(small, 1 - a_, torch.sin((1 - a_) * theta) / torch.where(small, 1.0, sin))
    w1 = torch.where(small, a_, torch.sin(a_ * theta) / torch.where(small, 1.0, sin))
    out = (w0 * u0 + w1 * u1).to(z0.dtype)
    return out.reshape((-1, *z0.shape) if a.ndim == 1 else z0.shape)
