"""The single integration loop: it owns the grid, takes the step into σ = 0, counts, checks,
reports progress, calls callbacks and returns the info.

Every solver integrates dx̄/dσ = ε(x̄, σ) one interval at a time (:mod:`odediff.solvers.base`);
the sign of the grid gives the direction. Network evaluations are counted here, in
:class:`CountedField`, and nowhere else.

**The σ = 0 rule.** The model exists only on [σ_min, σ_max], so the interval touching σ = 0 is
one evaluation at its start (at σ_min when the start is 0) and the solver's :meth:`to_zero`
update with it — Euler, x̂_0 = x̄ − σ_k·ε(σ_k), from the grid's last positive point σ_k, unless
the solver combines it otherwise (``adams`` extrapolates x̂_0 to σ_min, which the loop passes on).

**The dtype policy.** The state x̄ = x·sqrt(1+σ²) spans σ_max/σ_min in scale, so the solver keeps
it in float64 (float32 on MPS, which has no float64); this costs elementwise work only. The
network runs in its parameters' dtype; a network without parameters runs in the caller's dtype
(the noise's, or that of the image a latent was encoded from). The result has the caller's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .models import Model
from .solvers.base import FIELD, Solver, StepGen
from .solvers.stochastic import Generators

__all__ = ["BudgetExceeded", "CountedField", "Info", "Step", "drive", "integrate", "interval", "work_dtypes"]

CHECK_EVERY = 16  # evaluations between finiteness checks (each one is a device-to-host sync)


class BudgetExceeded(RuntimeError):
    """Raised when a solve would need more network evaluations than ``max_nfe``."""


def work_dtypes(model: Model, dtype: torch.dtype, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """(state dtype, network dtype) for a caller's ``dtype``: the policy in this module's docstring."""
    net = model.parameters_like()
    return (torch.float32 if device.type == "mps" else torch.float64), (dtype if net is None else net[1])


class CountedField:
    """ε(x̄, σ) of a model, counting calls and checking what the network returns.

    σ below σ_min is evaluated at σ_min. Inputs are cast to the network's dtype; ε is returned
    as the network gave it (each solver update x̄ + h·ε promotes it to the state's dtype). NaN
    and Inf are looked for every :data:`CHECK_EVERY` evaluations and by :meth:`check`, without
    a sync per evaluation, and reported at the first evaluation that produced them.
    """

    def __init__(self, model: Model, net_dtype: torch.dtype, max_nfe: int | None = None):
        self.model = model
        self.sigma_min = model.schedule.sigma_min
        self.net_dtype = net_dtype
        self.max_nfe = max_nfe
        # a model that knows its network's dtype casts x_t itself, after scaling in float64
        self.casts = getattr(model, "casts_input", False) and model.parameters_like() is not None
        self.nfe = 0
        self.step = 0  # index of the interval under way, for messages
        self._sums: list[Tensor] = []  # one 0-d sum of ε per unchecked evaluation
        self._where: list[tuple[int, float]] = []

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        if self.max_nfe is not None and self.nfe >= self.max_nfe:
            raise BudgetExceeded(f"max_nfe={self.max_nfe} reached at σ={sigma:.6g}")
        self.nfe += 1
        eps = self.model.eps(x if self.casts or x.dtype == self.net_dtype else x.to(self.net_dtype),
                             max(sigma, self.sigma_min))  # fmt: skip
        if not isinstance(eps, Tensor):
            raise TypeError(f"model: ε is {type(eps).__name__}, expected a tensor")
        if eps.shape != x.shape:
            raise ValueError(f"model: ε has shape {tuple(eps.shape)}, expected the input's {tuple(x.shape)}")
        self._sums.append((eps.detach() if eps.requires_grad else eps).sum())  # NaN, ±Inf survive a sum
        self._where.append((self.step, sigma))
        if len(self._sums) >= CHECK_EVERY:
            self.check()
        return eps

    def check(self) -> None:
        """Raise if any evaluation since the last check returned NaN or Inf."""
        if not self._sums:
            return
        ok = torch.stack(self._sums).isfinite().cpu()
        first = self.nfe - len(self._sums) + 1
        where, self._sums, self._where = self._where, [], []
        if not ok.all():
            j = int((~ok).nonzero()[0])
            step, sigma = where[j]
            raise FloatingPointError(
                f"model: returned NaN or Inf at step {step}, σ={sigma:.6g} (evaluation {first + j})"
            )


def interval(
    solver: Solver, s0: float, s1: float, xbar: Tensor, state: Any, sigma_min: float = 0.0
) -> StepGen:
    """One interval σ0 → σ1: the solver's step, or the σ = 0 rule (the module docstring), for a
    model whose lowest noise level is ``sigma_min``."""
    if s0 == 0.0 or s1 == 0.0:
        eps = yield solver.zero_point(s0, xbar, state)
        return solver.to_zero(s0, s1, xbar, eps, state, sigma_min)
    return (yield from solver.step(s0, s1, xbar, state))


def drive(gen: StepGen, field: Callable[[Tensor, float], Tensor]):
    """Run a step generator to its end, answering each point it yields with ``field``."""
    try:
        point = next(gen)
        while True:
            point = gen.send(field if point is FIELD else field(*point))
    except StopIteration as stop:
        return stop.value


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
    solver: Solver,
    *,
    nfe: int | None = None,
    dtype: torch.dtype | None = None,
    generator: Generators = None,
    max_nfe: int | None = None,
    progress: bool = False,
    callback: Callable[[Step], None] | None = None,
    carry: Tensor | None = None,
    grad: bool | None = None,
    scaled: bool = True,
) -> tuple[Tensor, Info]:
    """Integrate the VP-scale state ``x`` at σ = sigmas[0] to sigmas[-1]; returns VP-scale x.

    ``nfe``, if given, is a budget the (fixed-step) solver must spend exactly. ``dtype`` is the
    caller's (default ``x.dtype``; see the dtype policy). ``carry`` is a reversible solver's
    extra starting state (what :attr:`Info.carry` returned when encoding). No autograd graph
    is built unless ``grad`` is True or, by default, ``x`` or ``carry`` requires grad.

    x̄ = x·sqrt(1+σ²) is what the solver carries; the result is x̄/sqrt(1+σ_end²). With ``scaled``
    False, ``x`` is x̄ itself and so is the result (no scaling at either end): a state that is
    not a VP-scale image, e.g. the likelihood's (x̄, Δ log p) for a model whose ``eps`` is its field.
    """
    dtype = x.dtype if dtype is None else dtype
    work, net_dtype = work_dtypes(model, dtype, x.device)
    if grad is None:
        grad = x.requires_grad or (carry is not None and carry.requires_grad)
    sig = tuple(float(s) for s in sigmas)
    fld = CountedField(model, net_dtype, max_nfe)
    if carry is not None and not solver.reversible:
        raise ValueError(f"carry: {solver.name} is not reversible and carries no state")
    extra = {} if carry is None else {"carry": carry.to(work)}
    visited, rejected = [sig[0]], 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = None if solver.adaptive else len(sig) - 1
        bar = tqdm(total=total, desc=solver.name, unit="step", leave=False)

    def advance(s: float, x_new: Tensor) -> None:
        visited.append(s)
        if bar is not None:
            bar.set_postfix(nfe=fld.nfe, sigma=f"{s:.3g}", refresh=False)
            bar.update(1)
        if callback is not None:
            callback(Step(len(visited) - 2, s, x_new, fld.nfe))

    with torch.set_grad_enabled(grad):
        scale0, scale1 = (math.sqrt(1 + s * s) for s in (sig[0], sig[-1])) if scaled else (1.0, 1.0)
        xbar = x.to(work) * scale0  # a new tensor: the input is never touched
        state = solver.init(sig, nfe=nfe, generator=generator, **extra)
        controller = getattr(solver, "controller", None)
        try:
            for i in range(len(sig) - 1):
                fld.step = i
                s0, s1 = sig[i], sig[i + 1]
                if controller is None or s0 == 0.0 or s1 == 0.0:
                    xbar, state = drive(interval(solver, s0, s1, xbar, state, fld.sigma_min), fld)
                    advance(s1, xbar)
                    continue
                # adaptive: trial steps within the interval, accepted by the controller
                eps0 = fld(xbar, s0)
                h = controller.initial_h(xbar, eps0, s1 - s0)
                state, s = solver.remember(state, s0, eps0), s0
                while s != s1:
                    end = s + h if abs(h) < abs(s1 - s) * (1 - 1e-12) else s1
                    x_new, trial = drive(solver.step(s, end, xbar, state), fld)
                    err = controller.error(xbar, x_new, trial.error)
                    h = controller.next_h(end - s, err, solver.order - 1)
                    state = trial  # what it knows of ε stays true whether or not it is accepted
                    if err <= 1.0:
                        xbar, s = x_new, end
                        advance(s, xbar)
                    else:
                        rejected += 1
            fld.check()
        except BudgetExceeded as e:
            raise BudgetExceeded(
                f"max_nfe: {solver.name} used {fld.nfe} evaluations and reached σ={visited[-1]:.6g} of "
                f"{sig[-1]:.6g} ({e}); raise max_nfe or loosen rtol/atol"
            ) from None
        finally:
            if bar is not None:
                bar.refresh()  # the last count and NFE are shown, not the last throttled update
                bar.close()
        if nfe is not None and fld.nfe != nfe:  # a planning bug, never the user's fault
            raise RuntimeError(f"{solver.name} spent {fld.nfe} evaluations on a budget of {nfe}")
        out = (xbar / scale1).to(dtype)
    info = Info(
        nfe=fld.nfe,
        sigmas=torch.tensor(sig, dtype=torch.float64),
        solver=solver.name,
        steps=len(visited) - 1,
        visited=visited,
        rejected=rejected,
        carry=(xbar, solver.carried(state)) if solver.reversible else None,
    )
    return out, info
