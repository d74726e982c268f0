"""Solvers tuned to a model: the σ grid, and for ``adams`` its multistep weights, that minimise
the error at a given NFE against a tight reference solve.

**Grid.** σ_max > σ_1 > … > σ_{n−1} = σ_last > 0 with every point but σ_max free, σ_last
included (it need not be σ_min; the step into σ = 0 stays the one x̂_0 = x̄ − σ_last·ε). They are
the softmax of θ ∈ R^n as fractions of the log σ range [log σ_min, log σ_max], the last fraction
being the gap below σ_last,

    log σ_j = log σ_max − (log σ_max − log σ_min) · Σ_{i<j} softmax(θ)_i,

so every θ gives a valid, strictly decreasing grid.

**Learned solver** (``learn`` containing ``"weights"`` and/or ``"times"``, for ``adams``): the
:class:`~odediff.learned.Learned` multistep solver x̄_{i+1} = r_i·x̄_i + (1 − r_i)·Σ_j w_ij·D_{i−j}
starts from exactly ``adams`` (:func:`~odediff.learned.multistep_weights` on the default grid).
Its weights are w_i0 = 1 − Σ_{j≥1} w_ij with the w_ij, j ≥ 1, free (consistent at any value), and
``"times"`` adds the network's noise levels τ_i = σ_i·e^{δ_i}, i ≥ 1. The loss

    L = sqrt(mean over noises and pixels of (x_0(θ, w, δ) − x_0^ref)²)

is backpropagated through odediff's own solve (``sample(..., grad=True)``: the network is
differentiable in its input and in σ) and minimised by Adam with a cosine learning rate; every
``check`` iterations the held-out noises' error is measured, the best parameters by it are kept,
and the search stops when it has not improved for ``patience`` checks.

**Grid only** (``learn=("grid",)``, any fixed-step solver): SciPy's Powell on θ, each loss a
full solve (a dozen parameters; no derivative needed from the solver).

**Over several processes** (``torchrun --nproc_per_node N``, :mod:`odediff.shard`): every rank
draws all the noises, keeps one contiguous share of the training and of the held-out noises, and
solves the reference and the candidates for its share alone. Every error is the global RMSE (the
squared errors all-reduced), so every rank sees the same loss, takes the same Adam or Powell step
and stops at the same check; Adam's gradients are summed over the ranks. The result equals one
process's to round-off (the sums are taken in another order).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import shard
from .api import sample
from .grids import make_grid
from .learned import Learned, multistep_weights, scalar
from .models import Model
from .solvers import get_solver

__all__ = ["LEARN", "SHIPPED", "TunedGrid", "shipped", "shipped_args", "tune_grid"]

LEARN = ("grid", "weights", "times")
SHIPPED = Path(__file__).parent / "zoo" / "tuned"  # <model>_nfe<n>.json, package data


@dataclass(frozen=True)
class TunedGrid:
    """A tuned solver and what it was tuned for; ``sample(model, x, **tuned.kwargs())`` uses it.

    ``solver`` is ``"learned"`` (then ``options`` holds its ``weights`` and ``times``) or the
    name of the fixed-step solver whose grid alone was tuned (``options`` are its options)."""

    sigmas: tuple[float, ...]
    model: str
    solver: str
    nfe: int
    options: dict[str, Any] = field(default_factory=dict)
    train_error: float = math.nan  # RMSE of x_0 on the training noises
    default_error: float = math.nan  # the same with the solver's default grid and weights
    holdout_error: float = math.nan  # RMSE on noises the search did not train on
    cost_nfe: int = 0  # network evaluations the tuning spent (forward), reference solves included
    seconds: float = math.nan  # wall time of the tuning, reference solves included
    learn: tuple[str, ...] = ("grid",)

    def kwargs(self) -> dict[str, Any]:
        sigmas = torch.tensor(self.sigmas, dtype=torch.float64)
        if self.solver == Learned.name:
            return dict(solver=Learned.from_json({"sigmas": self.sigmas, **self.options}), sigmas=sigmas)
        return dict(solver=self.solver, sigmas=sigmas, **self.options)

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
        options = _tuples(d.get("options", {}))
        return cls(**{**d, "sigmas": tuple(float(s) for s in d["sigmas"]), "options": options,
                      "learn": tuple(d.get("learn", ("grid",)))})  # fmt: skip


def _tuples(v: Any) -> Any:
    """JSON lists as tuples, nested (a TunedGrid stays hashable and compares equal after loading)."""
    if isinstance(v, dict):
        return {k: _tuples(x) for k, x in v.items()}
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def shipped(model: Model | str, nfe: int) -> TunedGrid:
    """The tuned solver shipped for a zoo model at ``nfe``; the error lists what exists."""
    name = model if isinstance(model, str) else getattr(model, "name", None)
    path = SHIPPED / f"{name}_nfe{nfe}.json"
    if name is None or not path.exists():
        have = sorted(p.stem for p in SHIPPED.glob("*_nfe*.json"))
        listed = {}
        for stem in have:
            m, n = stem.rsplit("_nfe", 1)
            listed.setdefault(m, []).append(int(n))
        what = "; ".join(f"{m} at nfe {', '.join(map(str, sorted(ns)))}" for m, ns in sorted(listed.items()))
        who = "this model (it has no .name)" if name is None else f"model {name!r} at nfe={nfe}"
        raise ValueError(f"grid: no tuned solver shipped for {who}; shipped: {what or 'none'}")
    return TunedGrid.load(path)


def shipped_args(model: Model, nfe: int | None) -> dict[str, Any]:
    """``solver`` and ``sigmas`` of :func:`shipped`, for ``sample(..., grid="tuned")``."""
    if nfe is None:
        raise ValueError("nfe: grid='tuned' needs nfe= (a tuned solver is made for one budget)")
    return shipped(model, nfe).kwargs()


def grid_from_logits(theta: Tensor, sigma_max: float, sigma_min: float) -> Tensor:
    """The grid (σ_max, σ_1, …, σ_last, 0) of the module docstring, differentiable in θ."""
    log_max, log_min = math.log(sigma_max), math.log(sigma_min)
    frac = torch.cumsum(torch.softmax(theta, 0), 0)[:-1]
    inner = torch.exp(log_max - (log_max - log_min) * frac).clamp(sigma_min, sigma_max)
    return torch.cat([theta.new_tensor([sigma_max]), inner, theta.new_zeros(1)])


def _noises(
    model: Model, noises: int | Tensor, gen: torch.Generator, name: str, like: Tensor | None
) -> Tensor:
    """Noises as given (shape checked), or drawn in the shape of ``like`` or the model's samples."""
    shape = tuple(like.shape[1:]) if like is not None else getattr(model, "sample_shape", None)
    if isinstance(noises, Tensor):
        if noises.ndim < 2 or (shape is not None and tuple(noises.shape[1:]) != tuple(shape)):
            want = "(batch, …)" if shape is None else f"(batch, {', '.join(map(str, shape))})"
            raise ValueError(f"{name}: expected noises of shape {want}, got {tuple(noises.shape)}")
        return noises
    if isinstance(noises, bool) or not isinstance(noises, int) or noises < 1:
        raise ValueError(f"{name}: expected a number of noises ≥ 1 or a tensor, got {noises!r}")
    if shape is None:
        raise ValueError(f"{name}: this model has no sample_shape; pass a tensor of noises")
    net = model.parameters_like()
    dtype = like.dtype if like is not None else (net[1] if net is not None else torch.float64)
    return torch.randn(noises, *shape, generator=gen, dtype=torch.float64).to(dtype)


def _default_reference(model: Model, noise: Tensor) -> tuple[Tensor, int]:
    from .reference import default_reference

    x0, n = default_reference(model).solve(model, noise)
    return x0, int(n.max())  # the knot solve evaluates the whole batch at once


def _rmse(x: Tensor, truth: Tensor) -> Tensor:
    """The RMSE over every rank's noises (:mod:`odediff.shard`). Its value is the global one on every
    rank; its gradient is that of this rank's share of the squared error, so the ranks' gradients
    must be summed (as :func:`_search_learned` does) to give the global loss's."""
    sse = (x.double() - truth.double()).square().sum()
    both = shard.reduce(torch.stack([sse.detach(), sse.new_tensor(float(x.numel()))]))
    return ((sse + (both[0] - sse.detach())) / both[1]).sqrt()


def _largest(nfe: int) -> int:
    """The largest of the ranks' counts. An evaluation serves a rank's whole batch and the ranks
    evaluate side by side, so a reference solve costs what its largest batch count is (as in one
    process, where the batch is all the noises); the searches' fixed-step solves cost the same on
    every rank."""
    return int(shard.reduce(torch.tensor(float(nfe), dtype=torch.float64), "max"))


def _share(x: Tensor | None, name: str) -> Tensor | None:
    """This rank's contiguous share of the noises ``x`` (all of them in one process)."""
    if x is None:
        return None
    mine = shard.share(len(x))
    if not mine:
        raise ValueError(
            f"{name}: {len(x)} noises cannot be shared by {shard.size()} processes; give at least one each"
        )
    return x[mine.start : mine.stop]


def tune_grid(
    model: Model,
    nfe: int = 10,
    solver: str = "adams",
    noises: int | Tensor = 32,
    *,
    holdout: int | Tensor | None = 32,
    learn: tuple[str, ...] | None = None,
    reference: Callable[[Model, Tensor], tuple[Tensor, int]] | None = None,
    iterations: int = 400,
    lr: float = 0.03,
    check: int = 10,
    patience: int = 8,
    evaluations: int = 400,
    model_name: str | None = None,
    seed: int = 0,
    progress: bool = True,
    **options,
) -> TunedGrid:
    """The solver minimising the RMSE of x_0 at ``nfe`` on ``noises`` against a reference.

    ``learn`` ⊆ ("grid", "weights", "times"): default ("grid", "weights") for ``adams`` (Adam
    through the solve, at most ``iterations`` steps of learning rate ``lr``, early stopping on
    ``holdout``), ("grid",) for any other fixed-step solver (Powell, at most ``evaluations``
    solves). ``reference(model, noise) -> (x_0, evaluations)`` defaults to
    :func:`odediff.reference.default_reference`'s solve. ``holdout`` noises are drawn in the
    shape and dtype of the training noises.
    """
    start = time.perf_counter()
    s = get_solver(solver, **options)
    if s.adaptive:
        raise ValueError(f"solver: {s.name} is adaptive; a tuned grid is for fixed-step solvers")
    learn = tuple(learn) if learn is not None else (("grid", "weights") if s.name == "adams" else ("grid",))
    if not learn or set(learn) - set(LEARN):
        raise ValueError(f"learn: expected a non-empty subset of {LEARN}, got {learn!r}")
    if set(learn) - {"grid"} and s.name != "adams":
        raise ValueError(
            f"learn: {sorted(set(learn) - {'grid'})} tunes adams' multistep solver; {s.name} has no "
            "multistep weights (use solver='adams', or learn=('grid',))"
        )
    n = s.intervals(nfe)
    if n < 3:
        raise ValueError(f"nfe: {s.name} at nfe={nfe} takes {n} intervals; tuning needs ≥ 3")
    reference = reference or _default_reference
    gen = torch.Generator().manual_seed(seed)
    train = _noises(model, noises, gen, "noises", None)
    held = None if holdout is None else _noises(model, holdout, gen, "holdout", train)
    train, held = _share(train, "noises"), _share(held, "holdout")  # drawn in full, so any split agrees
    truth, spent = reference(model, train)
    spent = _largest(spent)
    held_truth = None
    if held is not None:
        held_truth, c = reference(model, held)
        spent += _largest(c)
    sched = model.schedule
    bounds = (sched.sigma_max, sched.sigma_min)
    base = make_grid(sched, n)
    logs = np.append(np.log(base[:-1].numpy()), math.log(sched.sigma_min))
    theta0 = torch.tensor(np.log(np.maximum(-np.diff(logs), 1e-12)))  # softmax(θ0) gives the default grid
    search = _search_grid if learn == ("grid",) else _search_learned
    cfg = dict(iterations=iterations, lr=lr, check=check, patience=patience, evaluations=evaluations)
    found, errors, cost = search(
        model, s, base, theta0, bounds, learn, train, truth, held, held_truth, {**cfg, "options": options},
        progress, f"tune {s.name} nfe={nfe}",
    )  # fmt: skip
    name = model_name or getattr(model, "name", None) or type(model).__name__
    sigmas, solver_name, opts = found
    return TunedGrid(
        tuple(float(x) for x in sigmas), name, solver_name, nfe, opts, *errors,
        cost_nfe=spent + cost, seconds=time.perf_counter() - start, learn=learn,
    )  # fmt: skip


def _solve(model: Model, x: Tensor, solver: Any, sigmas: Tensor, grad: bool) -> tuple[Tensor, int]:
    with torch.set_grad_enabled(grad):
        out, info = sample(model, x, solver=solver, sigmas=sigmas, grad=grad, return_info=True)
    return out, info.nfe


# the two searches: (model, solver, default grid, θ0, (σ_max, σ_min), learn, training noises and
# truth, held-out noises and truth, settings, progress, bar title) -> ((σ, solver name, options),
# (training, default, held-out error), network evaluations)


def _search_grid(model, s, base, theta0, bounds, learn, train, truth, held, held_truth, cfg, progress, desc):
    """Powell over θ for the grid alone (any fixed-step solver)."""
    from scipy.optimize import minimize
    from tqdm.auto import tqdm

    spent = [0]

    def error(sigmas: Tensor, x: Tensor, x0: Tensor) -> float:
        out, k = _solve(model, x, s, sigmas, False)
        spent[0] += k
        e = _rmse(out, x0).item()
        return e if math.isfinite(e) else 1e6

    default = error(base, train, truth)
    bar = tqdm(total=cfg["evaluations"], desc=desc, disable=not (progress and shard.is_main()), leave=False)
    best = [default]

    def loss(theta: np.ndarray) -> float:
        e = error(grid_from_logits(torch.from_numpy(theta), *bounds), train, truth)
        best[0] = min(best[0], e)
        bar.update(1)
        bar.set_postfix(rmse=f"{best[0]:.4g}", nfe=spent[0], refresh=False)
        return e

    try:
        res = minimize(loss, theta0.numpy(), method="Powell",
                       options=dict(maxfev=cfg["evaluations"], xtol=1e-3, ftol=1e-7))  # fmt: skip
    finally:
        bar.close()
    sigmas = grid_from_logits(torch.from_numpy(res.x), *bounds) if res.fun < default else base
    held_error = math.nan if held is None else error(sigmas, held, held_truth)
    return (sigmas, s.name, dict(cfg["options"])), (min(res.fun, default), default, held_error), spent[0]


def _search_learned(
    model, s, base, theta0, bounds, learn, train, truth, held, held_truth, cfg, progress, desc
):
    """Adam on (θ, free weights, log time offsets) through the solve, early-stopped on ``held``."""
    from tqdm.auto import tqdm

    n = len(base) - 1
    rows = multistep_weights(s, base, model.schedule.sigma_min)
    theta = theta0.clone().requires_grad_("grid" in learn)
    free = [torch.tensor(r[1:], dtype=torch.float64, requires_grad="weights" in learn) for r in rows]
    delta = torch.zeros(n - 1, dtype=torch.float64, requires_grad="times" in learn)
    params = [p for p in (theta, *free, delta) if p.requires_grad and p.numel()]

    def build() -> Learned:
        sig = grid_from_logits(theta, *bounds) if "grid" in learn else base
        weights = tuple((1 - f.sum(), *f.unbind()) for f in free)
        times = None
        if "times" in learn:
            times = (sig[0], *(sig[1:n] * delta.exp()).unbind())
        return Learned(tuple(sig.unbind()), weights, times)

    def frozen(solver: Learned) -> tuple[Tensor, str, dict[str, Any]]:
        d = solver.to_json()
        return torch.tensor(d.pop("sigmas"), dtype=torch.float64), Learned.name, _tuples(d)

    spent = 0

    def error(solver: Learned, x: Tensor, x0: Tensor, grad: bool) -> Tensor:
        nonlocal spent
        sig = torch.tensor([scalar(v) for v in solver.sigmas], dtype=torch.float64)
        out, k = _solve(model, x, solver, sig, grad)
        spent += k
        return _rmse(out, x0)

    opt = torch.optim.Adam(params, lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["iterations"])
    with torch.no_grad():  # a copy: the solver built holds views of the parameters Adam updates
        start = Learned.from_json(build().to_json())
    default = error(start, train, truth, False).item()
    best = (error(start, held, held_truth, False).item() if held is not None else default, start, default)
    stale = 0
    bar = tqdm(total=cfg["iterations"], desc=desc, disable=not (progress and shard.is_main()), leave=False)
    try:
        for it in range(1, cfg["iterations"] + 1):
            opt.zero_grad()
            loss = error(build(), train, truth, True)
            if not torch.isfinite(loss):
                break
            loss.backward()
            for p in params:  # each rank's backward saw its share only (see _rmse)
                if p.grad is not None:
                    p.grad = shard.reduce(p.grad)
            opt.step()
            sched.step()
            bar.update(1)
            if it % cfg["check"] and it != cfg["iterations"]:
                continue
            with torch.no_grad():
                current = build()
                tr = error(current, train, truth, False).item()
                score = error(current, held, held_truth, False).item() if held is not None else tr
            if score < best[0]:
                best, stale = (score, Learned.from_json(current.to_json()), tr), 0
            else:
                stale += 1
            bar.set_postfix(train=f"{tr:.4g}", held=f"{score:.4g}", best=f"{best[0]:.4g}", nfe=spent,
                            refresh=False)  # fmt: skip
            if stale >= cfg["patience"]:
                break
    finally:
        bar.close()
    held_error, solver, tr = best
    return frozen(solver), (tr, default, held_error if held is not None else math.nan), spent
