"""Step grids tuned to a model: the σ grid that minimises a solver's error at a given NFE.

The grid is σ_max > σ_1 > … > σ_{n−1} = σ_last > 0 with every point but σ_max free, σ_last
included (it need not be σ_min). They are parametrised by the softmax of θ ∈ R^n as fractions of
the log σ range [log σ_min, log σ_max], the last fraction being the gap below σ_last,

    log σ_j = log σ_max − (log σ_max − log σ_min) · Σ_{i<j} softmax(θ)_i,

so every θ gives a valid, strictly decreasing grid. The loss is the RMSE of x_0 from
``sample(model, noise, solver, sigmas=grid)`` against a tight reference solve of the same
training noises; SciPy's Powell method minimises it (a grid has few parameters and each loss
costs n evaluations, so a derivative-free search is cheap and needs nothing from the solvers
beyond their one code path). LD3 (ICLR 2025) instead backpropagates through the solve.

With ``tune_weights=True`` (``adams`` only) the search also sets, per interval that has history,
the β of Adams' ``blend`` option: the step's weights β·(order k) + (1 − β)·(order k − 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .api import sample
from .grids import make_grid
from .models import Model
from .solvers import get_solver

__all__ = ["TunedGrid", "tune_grid"]


@dataclass(frozen=True)
class TunedGrid:
    """A tuned σ grid and what it was tuned for; ``sample(model, x, **grid.kwargs())`` uses it."""

    sigmas: tuple[float, ...]
    model: str
    solver: str
    nfe: int
    options: dict[str, Any] = field(default_factory=dict)
    train_error: float = math.nan  # RMSE of x_0 on the training noises
    default_error: float = math.nan  # the same with the solver's default grid
    holdout_error: float = math.nan  # RMSE on noises the search never saw
    cost_nfe: int = 0  # network evaluations the tuning spent, reference solves included

    def kwargs(self) -> dict[str, Any]:
        return dict(solver=self.solver, sigmas=torch.tensor(self.sigmas, dtype=torch.float64), **self.options)

    def save(self, path: str | Path) -> None:
        """A small JSON file; floats are written with repr, so they load back bit for bit."""
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TunedGrid:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"path: cannot read a tuned grid from {path}: {e}") from None
        missing = {"sigmas", "model", "solver", "nfe"} - set(d)
        if missing:
            raise ValueError(f"path: {path} is not a tuned grid (missing {sorted(missing)})")
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in d.get("options", {}).items()}
        return cls(**{**d, "sigmas": tuple(float(s) for s in d["sigmas"]), "options": options})


def _grid(theta: np.ndarray, log_max: float, log_min: float) -> list[float]:
    """n weights: the first n − 1 are the log-σ steps between the positive points, the last the
    gap from σ_last down to σ_min, so σ_last is free in (σ_min, σ_max)."""
    w = np.exp(theta - theta.max())
    frac = np.cumsum(w / w.sum())[:-1]
    points = np.exp(log_max - (log_max - log_min) * frac)
    return [math.exp(log_max), *points.tolist(), 0.0]


def _noises(model: Model, noises: int | Tensor, generator: torch.Generator, name: str) -> Tensor:
    if isinstance(noises, Tensor):
        return noises
    shape = getattr(model, "sample_shape", None)
    if shape is None:
        raise ValueError(f"{name}: this model has no sample_shape; pass a tensor of noises")
    if isinstance(noises, bool) or not isinstance(noises, int) or noises < 1:
        raise ValueError(f"{name}: expected a number of noises ≥ 1 or a tensor, got {noises!r}")
    net = getattr(model, "parameters_like", lambda: None)()
    dtype = net[1] if net is not None else torch.float64
    return torch.randn(noises, *shape, generator=generator, dtype=torch.float64).to(dtype)


def _default_reference(model: Model, noise: Tensor) -> tuple[Tensor, int]:
    from .reference import reference_solve

    return reference_solve(model, noise)


def tune_grid(
    model: Model,
    nfe: int = 10,
    solver: str = "adams",
    noises: int | Tensor = 32,
    *,
    holdout: int | Tensor | None = 32,
    reference: Callable[[Model, Tensor], tuple[Tensor, int]] | None = None,
    evaluations: int = 400,
    model_name: str | None = None,
    seed: int = 0,
    progress: bool = True,
    robust: bool = False,
    method: str = "Powell",
    tune_weights: bool = False,
    **options,
) -> TunedGrid:
    """The σ grid minimising the RMSE of ``solver`` at ``nfe`` on ``noises`` against a reference.

    ``robust=True`` minimises the mean of per-noise RMSEs instead of their root mean square, so
    that a few noises whose trajectories switch mixture component under small grid changes do
    not steer the search. ``reference(model, noise) -> (x_0, evaluations)`` defaults to
    :func:`odediff.reference.reference_solve` (SciPy DOP853, float64). ``method`` is SciPy's
    (Powell, or Nelder-Mead). ``tune_weights`` also tunes ``adams``' per-step ``blend`` of its
    orders, starting from plain Adams (β = 1). ``evaluations`` bounds the number of loss
    evaluations of the search (each costs ``nfe`` network evaluations per noise batch). The
    returned grid records its training error, the default grid's error and the error on
    ``holdout`` noises.
    """
    s = get_solver(solver, **options)
    if s.adaptive:
        raise ValueError(f"solver: {s.name} is adaptive; a tuned grid is for fixed-step solvers")
    n = s.intervals(nfe)
    if n < 3:
        raise ValueError(f"nfe: {s.name} at nfe={nfe} takes {n} intervals; tuning needs ≥ 3")
    if tune_weights and not hasattr(s, "blend"):
        raise ValueError(f"tune_weights: {s.name} has no multistep weights to tune; use solver='adams'")
    if tune_weights and "blend" in options:
        raise ValueError("tune_weights, blend: give one of them; tuning sets blend")
    reference = reference or _default_reference
    gen = torch.Generator().manual_seed(seed)
    train = _noises(model, noises, gen, "noises")
    truth, cost = reference(model, train)
    sched = model.schedule
    log_max, log_min = math.log(sched.sigma_max), math.log(sched.sigma_min)
    spent = [cost]

    def error(sigmas: list[float] | Tensor, solver: Any, x: Tensor, x0: Tensor) -> float:
        with torch.no_grad():
            out, info = sample(model, x, solver=solver, sigmas=sigmas, return_info=True)
        spent[0] += info.nfe
        per_noise = (out.double() - x0.double()).square().flatten(1).mean(1).sqrt()
        err = (per_noise.mean() if robust else per_noise.square().mean().sqrt()).item()
        return err if math.isfinite(err) else 1e6

    base = make_grid(sched, n)
    default_error = error(base, s, train, truth)
    logs = np.append(np.log(base[:-1].numpy()), log_min)
    theta0 = np.log(np.maximum(-np.diff(logs), 1e-12))  # softmax(theta0) reproduces the default grid
    # β for the intervals that can have history: not the first, not the one into σ = 0
    n_beta = n - 2 if tune_weights else 0

    def split(theta: np.ndarray):
        sigmas = _grid(theta[:n], log_max, log_min)
        if not n_beta:
            return sigmas, s
        return sigmas, replace(s, blend=(1.0, *theta[n:].tolist(), 1.0))

    theta0 = np.concatenate([theta0, np.ones(n_beta)])

    from scipy.optimize import minimize
    from tqdm.auto import tqdm

    bar = tqdm(total=evaluations, desc=f"tune {s.name} nfe={nfe}", disable=not progress, leave=False)
    best = [default_error]

    def loss(theta: np.ndarray) -> float:
        e = error(*split(theta), train, truth)
        best[0] = min(best[0], e)
        bar.update(1)
        bar.set_postfix(rmse=f"{best[0]:.4g}", refresh=False)
        return e

    if method == "Powell":
        opts = dict(maxfev=evaluations, xtol=1e-3, ftol=1e-7)
    else:
        opts = dict(maxfev=evaluations, xatol=1e-3, fatol=1e-7 * default_error, adaptive=True)
    try:
        res = minimize(loss, theta0, method=method, options=opts)
    finally:
        bar.close()
    sigmas, tuned = split(res.x) if res.fun < default_error else (base.tolist(), s)
    if tuned.blend:
        options = {**options, "blend": tuned.blend}
    holdout_error = math.nan
    if holdout is not None:
        held = _noises(model, holdout, gen, "holdout")
        held_truth, c = reference(model, held)
        spent[0] += c
        holdout_error = error(sigmas, tuned, held, held_truth)
    name = model_name or getattr(model, "name", None) or type(model).__name__
    return TunedGrid(
        tuple(float(x) for x in sigmas), name, s.name, nfe, dict(options),
        train_error=float(min(res.fun, default_error)), default_error=default_error,
        holdout_error=holdout_error, cost_nfe=spent[0],
    )  # fmt: skip
