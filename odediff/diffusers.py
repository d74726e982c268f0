"""odediff's solvers as a diffusers scheduler: ``pipe.scheduler = ODEScheduler.from_config(...)``.

A diffusers pipeline owns the loop: it calls the UNet at ``scheduler.timesteps[i]`` on the
sample it holds and hands the output to ``scheduler.step``. odediff's solver steps are
generators that yield each point (x̄, σ) where they need ε (:mod:`odediff.solvers.base`), so
:class:`ODEScheduler` keeps the step under way suspended between pipeline calls: a yielded point
becomes the next sample x_t = x̄/sqrt(1+σ²) and timestep t(σ), and the UNet's output at it is
sent back as ε. Steps are walked interval by interval with the integrate loop's own
:func:`~odediff.integrate.interval` (so the σ = 0 rule is the loop's). One timestep per network
evaluation, planned before the loop by a dry run of the same steps on the grid, so
``num_inference_steps`` is the NFE.

ε comes from :func:`~odediff.models.to_eps`, so a pipeline and :func:`odediff.sample` on the same
model, noise and grid compute the same thing.

Pipelines decide a few things from the timesteps alone: img2img's ``strength`` picks an entry k
(``set_begin_index``), SDXL's ``denoising_end``/``denoising_start`` count entries above or below a
cutoff. So the default grid is the replaced scheduler's own timesteps, and ``set_begin_index``
re-plans the rest of the solve from the timestep that scheduler would start at (``ODEScheduler``,
"Strength"). With a reversible solver the pipeline call itself encodes an image and decodes it
back exactly (:meth:`ODEScheduler.invert_next`, :meth:`ODEScheduler.decode_next`).

Needs diffusers (``pip install 'odediff[diffusers]'``); ``import odediff`` does not.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

try:
    import diffusers
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
    from diffusers.utils import BaseOutput
except ImportError as e:  # pragma: no cover - exercised only without diffusers
    raise ImportError(
        "odediff.diffusers needs the diffusers package: pip install 'odediff[diffusers]'"
    ) from e

from .grids import GRIDS, plan
from .integrate import interval
from .latent import Latent
from .models import PREDICTIONS, to_eps
from .schedules import DiscreteSchedule
from .solvers import SOLVERS, Solver, get_solver
from .solvers.stochastic import DDIM, Generators, check_generators

__all__ = ["ODEScheduler", "ODESchedulerOutput"]

SPACING_GRID = "timestep_spacing"  # grid= value (the default): the source scheduler's own timesteps
_SHARED = (  # the config entries the source scheduler is rebuilt from
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
    "timestep_spacing", "steps_offset", "rescale_betas_zero_snr",
)  # fmt: skip
_PIPELINE = "a diffusers pipeline"  # the model a pipeline-encoded Latent records
_ZERO_SNR_ALPHA = 2.0**-24  # what diffusers' DDIM/Euler schedulers put in place of ᾱ_{T−1} = 0


@dataclass
class ODESchedulerOutput(BaseOutput):
    """``prev_sample``: the sample for the next timestep (x_0 after the last one).
    ``pred_original_sample``: x̂_0 = x̄ − σ·ε at the evaluation just delivered."""

    prev_sample: Tensor
    pred_original_sample: Tensor | None = None


@dataclass(frozen=True)
class _Evaluation:
    sigma: float  # σ of the evaluation
    step: int  # index of the grid interval it belongs to
    first: bool  # the interval's first evaluation, made at its starting x̄


class _Planned(NamedTuple):
    """What ``set_timesteps`` planned, kept for ``set_begin_index`` to re-plan from."""

    evaluations: list[_Evaluation]
    grid: Tensor
    budget: int | None
    timesteps: Tensor
    custom: bool  # the grid was given (sigmas=, timesteps=), not planned from a budget


def _dry_run(solver: Solver, sigmas: Tensor, nfe: int | None, carry: bool = False) -> list[_Evaluation]:
    """The evaluations a fixed-step solver makes on ``sigmas``: they depend on the grid alone
    (``carry``: a reversible solver decoding a latent, whose first step costs nothing)."""
    sig = tuple(float(v) for v in sigmas)
    out: list[_Evaluation] = []
    x = torch.zeros(1, dtype=torch.float64)
    # a private generator: a stochastic solver's draws must not touch the global RNG here
    extra = {"carry": x} if carry else {}
    state = solver.init(sig, nfe=nfe, generator=torch.Generator().manual_seed(0), **extra)
    for k in range(len(sig) - 1):
        gen = interval(solver, sig[k], sig[k + 1], x, state)
        try:
            point = next(gen)
            while True:
                out.append(_Evaluation(point[1], k, not out or out[-1].step != k))
                point = gen.send(torch.zeros_like(x))
        except StopIteration as stop:
            x, state = stop.value
    return out


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # as odediff.integrate


class _Run:
    """A solve under way: the interval k being stepped, its suspended step, the state it started
    from, and ``point`` = (x̄, σ) where it waits for ε (σ is None once the grid is done)."""

    def __init__(
        self, solver: Solver, grid: tuple[float, ...], k: int, xbar: Tensor, state: Any, offset: int,
        sigma_min: float,
    ):  # fmt: skip
        self.solver, self.grid, self.k, self.state, self.offset = solver, grid, k, state, offset
        self.sigma_min = sigma_min
        self.point = self._begin(xbar)

    def _begin(self, xbar: Tensor) -> tuple[Tensor, float | None]:
        while self.k < len(self.grid) - 1:
            s0, s1 = self.grid[self.k], self.grid[self.k + 1]
            self.gen = interval(self.solver, s0, s1, xbar, self.state, self.sigma_min)
            try:
                return next(self.gen)
            except StopIteration as stop:  # an interval that needs no evaluation
                xbar, self.state = stop.value
                self.k += 1
        return xbar, None

    def restart(self, xbar: Tensor) -> None:
        """Step interval k afresh from x̄ (the pipeline changed the sample it was given)."""
        self.point = self._begin(xbar)

    def send(self, eps: Tensor) -> tuple[Tensor, float | None]:
        try:
            self.point = self.gen.send(eps)
        except StopIteration as stop:
            xbar, self.state = stop.value
            self.k += 1
            self.point = self._begin(xbar)
        return self.point


class ODEScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that integrates dx̄/dσ = ε(x̄/sqrt(1+σ²), t(σ)) with an odediff solver.

    ``pipe.scheduler = ODEScheduler.from_config(pipe.scheduler, solver="adams")`` keeps the
    replaced scheduler's training schedule (``beta_schedule``, ``beta_start``/``beta_end``,
    ``trained_betas``, ``rescale_betas_zero_snr``), ``prediction_type``, ``timestep_spacing`` and
    its class (``source``); ``from_config(pipe.scheduler.config, …)`` works too, with ``source``
    read from the config's ``_class_name`` when it has one (configs loaded from disk) and
    DDIMScheduler otherwise. Then ``pipe(num_inference_steps=n)`` spends exactly n UNet
    evaluations: ``num_inference_steps`` is the NFE budget, and ``scheduler.timesteps`` has one
    entry per evaluation (a Heun step's second evaluation is an entry of its own). Clipping and
    thresholding options of the source config are not applied.

    **Strength.** By default the grid is the source scheduler's own timesteps, so img2img's
    ``strength``, inpainting and SDXL's ``denoising_end``/``denoising_start`` start, stop and
    split exactly where the source does. With any grid, ``set_begin_index(k)`` (what img2img
    pipelines call, k = n − int(n·strength)) starts at the timestep τ_k the source scheduler
    starts from at that strength — its k-th step's timestep for n steps — and solves from σ(τ_k)
    to 0 with the n − k evaluations left, on the schedule cut at τ_k in the grid's family (on
    the source's timesteps below τ_k by default); the entries ``timesteps[k:]`` are rewritten in
    place, since the pipeline holds a view of them. So at a given strength the image is noised
    to the same level whatever the grid or solver; any entry k may start, including a Heun
    step's second evaluation. A custom grid (``sigmas=``/``timesteps=``) starts at its own entry
    k instead. (``denoising_end`` counts the planned timesteps ≥ its cutoff: the base/refiner
    split is the source's on the default grid with one-evaluation solvers.)

    **Exact inversion.** :meth:`invert_next` makes the next pipeline call encode (its
    ``latents`` are an image's VAE latents, its ``output_type="latent"`` result is x_T, under
    the call's own prompt and guidance) and :meth:`decode_next` makes the next one decode such
    a latent back exactly, with a reversible solver (``belm``, ``bdia``).

    Args:
        solver: a fixed-step solver of :data:`odediff.SOLVERS` (``"adams"``, ``"heun"``, ``"euler"``,
            ``"ddim"``, ``"bdia"``, ``"belm"``); adaptive ones are refused, as a pipeline's loop
            needs its timesteps before it starts.
        solver_options: the solver's options, e.g. ``{"order": 4}`` or ``{"eta": 1.0}``.
        nfe: a fixed budget, spent whatever ``num_inference_steps`` the pipeline passes.
        grid: ``"timestep_spacing"`` (the default): the source scheduler's timesteps for the
            solver's number of grid intervals (there ``solver="euler"`` is the source config's
            DDIM with η = 0, ending at σ = 0 as ``set_alpha_to_one=True``); or a grid family of
            :data:`odediff.GRIDS` (``"auto"`` is :func:`odediff.sample`'s default).
        sigmas: an explicit σ grid (e.g. a tuned one, ``odediff.tune``), decreasing; it fixes the
            budget, so ``num_inference_steps`` is not used. As EulerDiscreteScheduler's
            ``sigmas=``, n values are n − 1 steps; a grid not ending in 0 ends at its last σ.
        snap_timesteps: off-grid σ reaches the UNet as a fractional t(σ) (log-σ interpolation,
            odediff.schedules), which diffusers' UNets accept. Set True for models or pipelines that
            need integer timesteps (embedding tables, arrays indexed by t): the UNet then sees the
            nearest integer t, while the solver keeps the exact σ. Timesteps that are all whole
            numbers are int64, as the stock schedulers'.
        terminal_alpha_cumprod: stands in for ᾱ_{T−1} = 0 of a zero-terminal-SNR schedule
            (default 2**-24, diffusers' choice).
        source: the name of the diffusers scheduler class whose timesteps (and so strength) to
            follow (default ``"DDIMScheduler"``).
        source_options: the rest of the source's config (e.g. PNDM's ``skip_prk_steps``), which
            ``from_config`` keeps so that the source's timesteps are its own.

    ``order`` is 1 for every solver: pipelines read it as timestep entries per
    ``num_inference_steps`` (warm-up, progress bars, img2img's index t_start·order), and here
    every entry is one evaluation. The pipeline's sample is the VP-scale x_t
    (``init_noise_sigma = 1``); the solver keeps the float64 x̄ = x_t·sqrt(1+σ²) between calls
    as long as the pipeline passes back the tensor it was given. A different sample at the start
    of a solver step (e.g. inpainting) restarts the state from it (multistep history kept);
    between the stages of one step it only changes that stage's ε.
    """

    _compatibles: ClassVar[list[str]] = [e.name for e in KarrasDiffusionSchedulers]
    order = 1  # timestep entries per num_inference_step: each entry is one evaluation
    init_noise_sigma = 1.0  # the pipeline's sample is VP-scale: x_T ~ N(0, I)

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        solver: str = "adams",
        solver_options: dict[str, Any] | None = None,
        nfe: int | None = None,
        grid: str | None = None,
        sigmas: list[float] | None = None,
        snap_timesteps: bool = False,
        terminal_alpha_cumprod: float | None = None,
        source: str | None = None,
        source_options: dict[str, Any] | None = None,
    ) -> None:
        if prediction_type not in PREDICTIONS:
            raise ValueError(f"prediction_type: expected one of {PREDICTIONS}, got {prediction_type!r}")
        self._solver = _check_solver(solver, solver_options)
        if grid is not None and grid != SPACING_GRID and grid not in GRIDS:
            raise ValueError(f"grid: expected one of {[*sorted(GRIDS), SPACING_GRID]} or None, got {grid!r}")
        if sigmas is not None and grid is not None:
            raise ValueError("grid, sigmas: give one of them, not both")
        if nfe is not None and (isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1):
            raise ValueError(f"nfe: expected a whole number ≥ 1 or None, got {nfe!r}")
        if not isinstance(snap_timesteps, bool):
            raise ValueError(f"snap_timesteps: expected True or False, got {snap_timesteps!r}")
        stock = getattr(diffusers, source, None) if isinstance(source, str) else None
        if source is not None and not (isinstance(stock, type) and issubclass(stock, SchedulerMixin)):
            raise ValueError(
                "source: expected the name of a diffusers scheduler class (e.g. 'DDIMScheduler'), "
                f"got {source!r}"
            )
        # diffusers' own β arithmetic (float32, as the model was trained with), not a re-derivation
        try:
            ddpm = diffusers.DDPMScheduler(
                num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                beta_schedule=beta_schedule, trained_betas=trained_betas,
                rescale_betas_zero_snr=rescale_betas_zero_snr,
            )  # fmt: skip
        except NotImplementedError:
            raise ValueError(
                "beta_schedule: expected 'linear', 'scaled_linear', 'squaredcos_cap_v2' or 'sigmoid' "
                f"(or trained_betas), got {beta_schedule!r}"
            ) from None
        # the attributes diffusers' schedulers have, as they have them (float32)
        self.betas: Tensor = ddpm.betas
        self.alphas: Tensor = ddpm.alphas
        self.alphas_cumprod: Tensor = ddpm.alphas_cumprod
        self.final_alpha_cumprod = torch.tensor(1.0)  # every solve ends at σ = 0, where ᾱ = 1
        terminal = terminal_alpha_cumprod
        if terminal is None and float(self.alphas_cumprod[-1]) == 0.0:
            terminal = _ZERO_SNR_ALPHA
        self.schedule = DiscreteSchedule(self.alphas_cumprod, terminal_alpha_cumprod=terminal)
        if sigmas is not None:  # validated now rather than mid-pipeline
            self._custom_grid(sigmas, nfe)
        self.num_inference_steps: int | None = None
        self.timesteps: Tensor = torch.arange(num_train_timesteps - 1, -1, -1)  # the training timesteps
        self.latent: Latent | None = None  # what the last inverting solve encoded
        self._plan: list[_Evaluation] = []
        self._grid: Tensor | None = None
        self._nfe: int | None = None
        self._planned: _Planned | None = None
        self._run: _Run | None = None
        self._index = 0
        self._begin_index: int | None = None
        self._last: Tensor | None = None
        self._mode: str = "sample"  # or "encode", "decode" (for the next solve)
        self._to_decode: Latent | None = None

    @classmethod
    def from_config(
        cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any
    ) -> ODEScheduler | tuple[ODEScheduler, dict[str, Any]]:
        """diffusers' ``from_config``; it also takes a scheduler itself (``from_config(pipe.scheduler)``),
        keeping every value of its config and its class as ``source``."""
        source = None
        if isinstance(config, SchedulerMixin):
            source = None if isinstance(config, ODEScheduler) else type(config).__name__
            config = {k: v for k, v in config.config.items() if k != "_use_default_values"}
        elif isinstance(config, dict) and config.get("_class_name") not in (None, cls.__name__):
            source = config["_class_name"]
        if source is not None and "source" not in kwargs:
            own = inspect.signature(cls.__init__).parameters
            options = {k: v for k, v in config.items() if not k.startswith("_") and k not in own}
            kwargs.update(source=source, source_options=options)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # ------------------------------------------------------------------------------ properties
    @property
    def solver(self) -> Solver:
        """The odediff solver (its accuracy order is ``solver.order``; ``order`` here is diffusers')."""
        return self._solver

    @property
    def grid_sigmas(self) -> Tensor | None:
        """The σ grid being solved (float64), once ``set_timesteps`` has run: decreasing to 0, the
        part left after ``set_begin_index``, increasing when inverting."""
        return self._grid

    @property
    def evaluation_sigmas(self) -> Tensor | None:
        """σ of each entry of ``timesteps`` (float64), once ``set_timesteps`` has run."""
        return torch.tensor([e.sigma for e in self._plan], dtype=torch.float64) if self._plan else None

    @property
    def sigmas(self) -> Tensor:
        """σ at each entry of ``timesteps``, then the σ the solve ends at (float32, as
        EulerDiscreteScheduler's): the training σ(t) and 0 before ``set_timesteps``."""
        if not self._plan:
            t = torch.arange(self.config.num_train_timesteps - 1, -1, -1, dtype=torch.float64)
            return torch.cat([self.schedule.sigma_of_t(t), torch.zeros(1)]).float()
        return torch.tensor([*(e.sigma for e in self._plan), float(self._grid[-1])], dtype=torch.float32)

    @property
    def step_index(self) -> int | None:
        """Index into ``timesteps`` of the next evaluation, once the loop has started."""
        return None if self._run is None else self._index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # -------------------------------------------------------------------------------- planning
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | Tensor | None = None,
        sigmas: list[float] | Tensor | None = None,
    ) -> None:
        """Plan the solve: ``timesteps`` gets one entry t(σ_k) per network evaluation σ_k.

        ``num_inference_steps`` is the NFE budget (unless the config fixes ``nfe`` or ``sigmas``).
        Custom ``timesteps`` (→ σ(t), then 0) or ``sigmas`` (odediff's σ, as Euler's ``sigmas=``)
        give the grid itself; the solver then spends what it needs on it.
        """
        cfg = self.config
        solver, sched = self._solver, self.schedule
        custom = timesteps is not None or sigmas is not None or cfg.sigmas is not None
        if self._mode == "decode":
            grid, budget, name = self._to_decode.sigmas, None, "latent"
        elif timesteps is not None or sigmas is not None:
            if timesteps is not None and sigmas is not None:
                raise ValueError("timesteps, sigmas: give one of them, not both")
            if timesteps is not None:
                grid = plan(sched, solver, None, timesteps=timesteps)
            else:
                grid = self._custom_grid(sigmas)
            budget, name = None, "sigmas"
        elif cfg.sigmas is not None:
            grid, budget, name = self._custom_grid(cfg.sigmas, cfg.nfe), cfg.nfe, "nfe"
        else:
            budget, name = (
                (cfg.nfe, "nfe") if cfg.nfe is not None else (num_inference_steps, "num_inference_steps")
            )
            if budget is None:
                raise ValueError("num_inference_steps: expected the number of network evaluations, got None")
            try:
                solver.intervals(budget)  # the solver's own "nfe: …" if the budget is too small
                if cfg.grid in (None, SPACING_GRID):
                    grid = self._grid_from(0, budget)
                else:
                    grid = plan(sched, solver, budget, grid=cfg.grid)
            except ValueError as e:
                raise _renamed(e, name) from None
        if self._mode == "encode":
            grid = grid.flip(0)
        try:
            evaluations = _dry_run(solver, grid, budget, carry=self._mode == "decode")
        except ValueError as e:
            raise _renamed(e, name) from None
        if budget is not None and len(evaluations) != budget:  # a planning bug, never the user's
            raise RuntimeError(
                f"{solver.name} planned {len(evaluations)} evaluations for a budget of {budget}"
            )
        fixed = cfg.nfe is not None or (cfg.sigmas is not None and timesteps is None and sigmas is None)
        if self._mode != "decode" and fixed and num_inference_steps not in (None, len(evaluations)):
            warnings.warn(
                f"num_inference_steps={num_inference_steps} is not used: this scheduler's config fixes "
                f"{'nfe' if cfg.nfe is not None else 'sigmas'}, {len(evaluations)} evaluations",
                stacklevel=2,
            )
        self.timesteps = self._timesteps_of(evaluations).to(device)
        self.num_inference_steps = len(evaluations)
        self._planned = _Planned(evaluations, grid, budget, self.timesteps.clone(), custom)
        self._plan, self._grid, self._nfe = evaluations, grid, budget
        self._run, self._index, self._begin_index, self._last = None, 0, None, None

    def _timesteps_of(self, evaluations: list[_Evaluation]) -> Tensor:
        """t(σ) of each evaluation: int64 when all are whole numbers, else float32 (as odediff's
        EpsModel hands t to a float32 network). σ below σ_min (inverting from σ = 0) is σ_min."""
        lo, snap = self.schedule.sigma_min, self.config.snap_timesteps
        t = [self.schedule.t_of_sigma(max(e.sigma, lo), snap=snap) for e in evaluations]
        # a Heun stage at σ + (σ' − σ) is σ' to round-off: an integer t(σ') stays an integer
        t = [float(round(v)) if abs(v - round(v)) < 1e-9 else v for v in t]
        integral = all(v == int(v) for v in t)
        return torch.tensor(t, dtype=torch.int64 if integral else torch.float32)

    def _stock_timesteps(self, n: int) -> tuple[Tensor, Tensor]:
        """The source scheduler (``source``, default DDIMScheduler) set to n steps, from this
        config's training schedule and spacing: (the timestep img2img starts it from at each
        index k < n, i.e. its ``timesteps[k·order]``; its distinct timesteps, the grid)."""
        cfg = self.config
        options = {**(cfg.source_options or {}), **{k: cfg[k] for k in _SHARED}}
        stock = getattr(diffusers, cfg.source or "DDIMScheduler").from_config(options)
        try:
            stock.set_timesteps(n)
        except ValueError as e:
            raise ValueError(f"timestep_spacing: {e}") from None
        t = stock.timesteps[:: stock.order].detach().cpu().double()
        return t[:n], torch.unique_consecutive(t)

    def _custom_grid(self, sigmas: list[float] | Tensor, nfe: int | None = None) -> Tensor:
        s = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu().flatten()
        return plan(self.schedule, self._solver, nfe, sigmas=s)

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at ``timesteps[begin_index]``: img2img pipelines call this with k = n − int(n·strength).

        It re-plans the solve from the source scheduler's k-th timestep (the class docstring,
        "Strength"; for k = 0 only on a grid other than the source's) and rewrites
        ``timesteps[k:]`` in place; any entry may start. Inverting runs the whole grid (k = 0).
        """
        if self._planned is None:
            self._begin_index = begin_index
            return
        evaluations, grid, budget, planned, custom = self._planned
        n, k = len(evaluations), begin_index
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
            raise ValueError(f"begin_index: expected an index into the {n} timesteps, got {k!r}")
        if k == n:
            raise ValueError(
                f"begin_index: {k} leaves none of the {n} evaluations to run; with img2img, strength is "
                f"too small for num_inference_steps={n}: expected strength ≥ 1/{n}"
            )
        if k > 0 and self._mode != "sample":
            raise ValueError(f"begin_index: an inversion runs its whole grid, got begin_index={k}")
        self.timesteps.copy_(planned.to(self.timesteps.device))
        self._plan, self._grid, self._nfe = evaluations, grid, budget
        # k = 0 starts at the source's first timestep too, unless the grid is the source's own
        if self._mode == "sample" and (k > 0 or not (custom or self.config.grid in (None, SPACING_GRID))):
            try:
                tail = self._custom_tail(k, grid, evaluations) if custom else self._grid_from(k, n)
                rest = _dry_run(self._solver, tail, n - k)
            except ValueError as e:
                raise ValueError(f"begin_index: {k} leaves {n - k} of the {n} evaluations; {e}") from None
            t = self._timesteps_of(rest)
            if self.timesteps.dtype == torch.int64 and t.dtype != torch.int64:
                raise ValueError(
                    f"begin_index: the solve from timesteps[{k}] needs fractional timesteps, but the "
                    "planned ones are integers; set snap_timesteps=True"
                )
            self.timesteps[k:] = t.to(self.timesteps)  # the pipeline iterates a view of these
            self._plan, self._grid, self._nfe = evaluations[:k] + rest, tail, n - k
        self._run, self._index, self._last, self._begin_index = None, 0, None, k

    def _custom_tail(self, k: int, grid: Tensor, evaluations: list[_Evaluation]) -> Tensor:
        """A given grid (sigmas=, timesteps=) from entry k's σ on, if it spends the evaluations left."""
        s, left = evaluations[k].sigma, len(evaluations) - k
        tail = torch.cat([grid.new_tensor([s]), grid[grid < s]])
        if len(tail) > 1 and len(_dry_run(self._solver, tail, None)) == left:
            return tail
        raise ValueError(
            f"{self._solver.name} cannot start at timesteps[{k}] of a custom grid with the {left} "
            "evaluations left; start at the first evaluation of a step"
        )

    def _grid_from(self, k: int, n: int) -> Tensor:
        """The grid of a solve from the source's k-th timestep τ_k (for n steps) spending the n − k
        evaluations left: by default m = ``solver.intervals(n − k)`` of the source's distinct
        timesteps from τ_k on (evenly picked by index), else the grid family on the schedule cut
        at τ_k."""
        solver, cfg, left = self._solver, self.config, n - k
        starts, distinct = self._stock_timesteps(n)
        levels = torch.cat([starts[k : k + 1], distinct[distinct < starts[k]]])
        m = solver.intervals(left)
        top = round(float(levels[0]))
        if cfg.grid in (None, SPACING_GRID) or top == 0:
            if m > len(levels):
                raise ValueError(
                    f"{solver.name} needs {m} grid intervals for {left} evaluations, but the source "
                    f"scheduler has {len(levels)} timesteps from {top} down"
                )
            pick = torch.linspace(0, len(levels) - 1, m, dtype=torch.float64).round().long()
            return plan(self.schedule, solver, left, timesteps=levels[pick])
        last = top == cfg.num_train_timesteps - 1
        cut = DiscreteSchedule(
            self.alphas_cumprod[: top + 1],
            terminal_alpha_cumprod=self.schedule.terminal_alpha_cumprod if last else None,
        )
        return plan(cut, solver, left, grid=cfg.grid)

    # ------------------------------------------------------------------------------- inversion
    def invert_next(self) -> None:
        """Make the next pipeline call encode: its ``latents`` are the image's latents x_0 (e.g.
        ``vae.encode(image).latent_dist.mean * vae.config.scaling_factor``), its
        ``output_type="latent"`` result is x_T at σ_max of the grid, under the call's prompt and
        guidance, and :attr:`latent` then holds the exact float64 state (an :class:`odediff.Latent`)
        for :meth:`decode_next`. The UNet's first evaluation, at σ = 0, is made at t = 0."""
        if not self._solver.reversible:
            reversible = sorted(k for k, v in SOLVERS.items() if v.reversible)
            raise ValueError(
                f"solver: {self._solver.name} is not reversible, so its inversion is not exact; use one of "
                f"{reversible}"
            )
        self._mode, self._to_decode, self._planned, self._plan = "encode", None, None, []

    def decode_next(self, latent: Latent) -> Tensor:
        """Make the next pipeline call decode ``latent`` (what :attr:`latent` held after an
        inverting call) exactly, on its own solver and grid (its ``nfe`` − 1 evaluations); returns
        the tensor to pass as the pipeline's ``latents=``: x at the grid's second point, where the
        first evaluation is. Call the pipeline with the prompt and guidance it was encoded with to
        get the image's latents back; with others, it is an edit."""
        if not isinstance(latent, Latent):
            raise TypeError(
                f"latent: expected an odediff.Latent (scheduler.latent), got {type(latent).__name__}"
            )
        if latent.solver != self._solver:
            raise ValueError(
                f"latent: encoded by {latent.describe()}, but this scheduler's solver is "
                f"{self._solver!r}; decode it with a scheduler of the same solver"
            )
        self._mode, self._to_decode, self._planned, self._plan = "decode", latent, None, []
        s1 = float(latent.sigmas[1])
        return (latent.carry / math.sqrt(1 + s1 * s1)).to(latent.dtype)

    # -------------------------------------------------------------------------------- stepping
    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """The UNet takes the VP-scale sample as it is."""
        return sample

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: Generators = None,
        eta: float | None = None,
        use_clipped_model_output: bool | None = None,
        return_dict: bool = True,
    ) -> ODESchedulerOutput | tuple[Tensor]:
        """Deliver the UNet's output at ``timesteps[i]`` and get the sample for ``timesteps[i+1]``.

        The output becomes ε = ``to_eps(model_output, sample, σ_i, prediction_type)`` and is sent
        to the solver step under way, which runs on to the point where it needs the next ε.
        ``generator`` (one, or a list of one per image) feeds a stochastic solver. ``eta`` is
        DDIM's, as pipelines pass it: with ``solver="ddim"`` an η > 0 replaces the config's for
        the solve; other solvers accept only 0. ``use_clipped_model_output`` is accepted and
        ignored (no clipping).
        """
        if not self._plan:
            raise RuntimeError("set_timesteps: call scheduler.set_timesteps(num_inference_steps) before step")
        solver = self._solver_for(eta)
        if not isinstance(model_output, Tensor) or not isinstance(sample, Tensor):
            raise TypeError("model_output, sample: expected tensors")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output: shape {tuple(model_output.shape)} differs from the sample's "
                f"{tuple(sample.shape)}; expected an {self.config.prediction_type} prediction of its shape"
            )
        t = float(torch.as_tensor(timestep).reshape(-1)[0])
        if self._run is None:
            self._start(t, sample, generator, solver)
        elif solver != self._run.solver:
            raise ValueError(f"eta: {eta!r} differs from the η this solve began with, {self._run.solver.eta}")
        i = self._index
        if i >= len(self._plan):
            raise RuntimeError(
                f"step: all {len(self._plan)} planned evaluations were delivered; call set_timesteps again"
            )
        if t != float(self.timesteps[i]):
            raise ValueError(
                f"timestep: expected {float(self.timesteps[i])} (scheduler.timesteps[{i}]), got {t}; "
                "ODEScheduler steps follow scheduler.timesteps in order"
            )
        ev, run = self._plan[i], self._run
        if i > run.offset and ev.first and not self._same_as_returned(sample):
            run.restart(sample.to(run.point[0].dtype) * math.sqrt(1 + ev.sigma * ev.sigma))  # the caller's
        at = max(ev.sigma, self.schedule.sigma_min)  # inverting from σ = 0 evaluates at σ_min
        eps = to_eps(model_output, sample, at, self.config.prediction_type)
        self._index += 1
        xbar, sigma = run.send(eps)
        if sigma is None:
            if self._index != len(self._plan):
                raise RuntimeError(f"{run.solver.name} finished after {self._index} of {len(self._plan)}")
            sigma = float(self._grid[-1])
            self._finish(xbar, sample.dtype)
        elif self._index >= len(self._plan) or sigma != self._plan[self._index].sigma:
            raise RuntimeError(f"{run.solver.name} left its plan at σ={sigma:.6g}")
        prev = (xbar / math.sqrt(1 + sigma * sigma)).to(sample.dtype)  # as EpsModel feeds its network
        self._last = prev
        x0 = sample * math.sqrt(1 + ev.sigma * ev.sigma) - ev.sigma * eps.to(sample.dtype)
        if not return_dict:
            return (prev,)
        return ODESchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def _solver_for(self, eta: float | None) -> Solver:
        """The solver with the pipeline's η (DDIM's ``eta``; 0 or None keeps the config's)."""
        if eta in (None, 0, 0.0):
            return self._solver if self._run is None else self._run.solver
        if not isinstance(self._solver, DDIM):
            raise ValueError(
                f"eta: {eta!r} given, but η is the ddim solver's and this scheduler's solver is "
                f"{self._solver.name}; use ODEScheduler.from_config(..., solver='ddim')"
            )
        return dataclasses.replace(self._solver, eta=eta)  # checks 0 ≤ η ≤ 1

    def _finish(self, xbar: Tensor, dtype: torch.dtype) -> None:
        """After the last evaluation: an inversion leaves its exact state in :attr:`latent`."""
        if self._mode == "encode":
            run, top = self._run, float(self._grid[-1])
            self.latent = Latent(
                xbar / math.sqrt(1 + top * top), run.solver.carried(run.state), run.solver,
                len(self._plan), self._grid.flip(0), dtype, _PIPELINE,
            )  # fmt: skip
        self._mode, self._to_decode = "sample", None

    def _same_as_returned(self, sample: Tensor) -> bool:
        last = self._last
        if sample is last:
            return True
        return (
            last is not None and sample.shape == last.shape and sample.dtype == last.dtype
            and sample.device == last.device and torch.equal(sample, last)
        )  # fmt: skip

    def _start(self, t: float, sample: Tensor, generator: Generators, solver: Solver) -> None:
        """Begin the solve at ``begin_index`` (or at the entry ``t`` names), from ``sample``."""
        check_generators(generator, sample.shape[0])
        work = _work_dtype(sample.device)
        if self._mode == "decode":
            z = self._to_decode
            first = (z.carry / math.sqrt(1 + float(z.sigmas[1]) ** 2)).to(sample)
            if sample.shape != z.shape or not torch.allclose(sample, first, rtol=1e-3, atol=1e-3):
                raise ValueError(
                    "latents: expected the tensor decode_next returned (x at the latent's second grid "
                    f"point, shape {tuple(z.shape)}), got another"
                )
            sig = tuple(float(v) for v in z.sigmas)
            state = solver.init(sig, carry=z.carry.to(sample.device, work), generator=generator)
            xbar = z.xT.to(sample.device, work) * math.sqrt(1 + sig[0] * sig[0])
            self._run, self._index = _Run(solver, sig, 0, xbar, state, 0, self.schedule.sigma_min), 0
            return
        k = self._begin_index
        if k is None:
            starts = [j for j, e in enumerate(self._plan) if e.first and float(self.timesteps[j]) == t]
            if not starts:
                raise ValueError(
                    f"timestep: {t} is not a timestep where a {solver.name} step starts; expected "
                    f"one of scheduler.timesteps, usually timesteps[0] = {float(self.timesteps[0])}"
                )
            k = starts[0]
        ev = self._plan[k]
        grid = self._grid[ev.step :]
        nfe = self._nfe if self._nfe is None or k == 0 or self._begin_index == k else len(self._plan) - k
        if (
            k > 0
            and self._begin_index != k
            and [e.sigma for e in _dry_run(solver, grid, nfe)] != [e.sigma for e in self._plan[k:]]
        ):
            raise ValueError(f"timestep: {solver.name} cannot restart at timesteps[{k}]; use set_begin_index")
        xbar = sample.to(work) * math.sqrt(1 + ev.sigma * ev.sigma)
        sig = tuple(float(v) for v in grid)
        state = solver.init(sig, nfe=nfe, generator=generator)
        self._run, self._index = _Run(solver, sig, 0, xbar, state, k, self.schedule.sigma_min), k

    # ---------------------------------------------------------------------------------- noising
    def _coefficients(self, timesteps: Tensor | float, like: Tensor) -> tuple[Tensor, Tensor]:
        """(sqrt(ᾱ_t), sqrt(1−ᾱ_t)) at real (fractional) t, ᾱ_t = 1/(1+σ(t)²), shaped to broadcast
        over ``like`` per batch item (or as scalars for one timestep)."""
        t = torch.as_tensor(timesteps, dtype=torch.float64).detach().cpu().flatten()
        if t.numel() == 0:
            raise ValueError("timesteps: empty; with img2img, strength is too small to leave an evaluation")
        sigma = self.schedule.sigma_of_t(t)
        shape = (-1,) + (1,) * (like.ndim - 1) if t.numel() > 1 else ()
        r = (1 + sigma * sigma).sqrt()
        cast = lambda v: v.reshape(shape).to(like.device, like.dtype)
        return cast(1 / r), cast(sigma / r)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor | float) -> Tensor:
        """x_t = sqrt(ᾱ_t)·x_0 + sqrt(1−ᾱ_t)·noise."""
        a, b = self._coefficients(timesteps, original_samples)
        return a * original_samples + b * noise

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: Tensor | float) -> Tensor:
        """The v-prediction target v = sqrt(ᾱ_t)·noise − sqrt(1−ᾱ_t)·x_0 (``sample`` is x_0)."""
        a, b = self._coefficients(timesteps, sample)
        return a * noise - b * sample


def _check_solver(solver: str, options: dict[str, Any] | None) -> Solver:
    if not isinstance(solver, str):
        raise TypeError(
            f"solver: expected a solver name (one of {sorted(SOLVERS)}), got {type(solver).__name__}; "
            "pass its options in solver_options so that the config saves"
        )
    if options is not None and not isinstance(options, dict):
        raise TypeError(
            f"solver_options: expected a dict of the solver's options, got {type(options).__name__}"
        )
    s = get_solver(solver)  # raises "solver: unknown solver …"
    try:
        s = get_solver(solver, **(options or {}))
    except TypeError as e:
        raise TypeError(f"solver_options: {e}") from None
    if s.adaptive:
        fixed = sorted(n for n, v in SOLVERS.items() if not v.adaptive)
        raise ValueError(
            f"solver: {s.name} is adaptive (it chooses its steps as it goes), but a pipeline's loop needs "
            f"its timesteps planned before it starts; use a fixed-step solver: {fixed}"
        )
    return s


def _renamed(e: ValueError, name: str) -> ValueError:
    """odediff's "nfe: …" planning errors, naming the argument the caller actually gave."""
    msg = str(e)
    return ValueError(f"{name}:{msg[4:]}" if msg.startswith("nfe:") else msg)
