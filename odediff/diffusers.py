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

Needs diffusers (``pip install 'odediff[diffusers]'``); ``import odediff`` does not.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

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
from .models import PREDICTIONS, to_eps
from .schedules import DiscreteSchedule
from .solvers import SOLVERS, Solver, get_solver

__all__ = ["ODEScheduler", "ODESchedulerOutput"]

SPACING_GRID = "timestep_spacing"  # grid= value: the source config's own timestep spacing
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


def _dry_run(solver: Solver, sigmas: Tensor, nfe: int | None) -> list[_Evaluation]:
    """The evaluations a fixed-step solver makes on ``sigmas``: they depend on the grid alone."""
    sig = tuple(float(v) for v in sigmas)
    out: list[_Evaluation] = []
    x = torch.zeros(1, dtype=torch.float64)
    # a private generator: a stochastic solver's draws must not touch the global RNG here
    state = solver.init(sig, nfe=nfe, generator=torch.Generator().manual_seed(0))
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
        self, solver: Solver, grid: tuple[float, ...], k: int, xbar: Tensor, state: Any, offset: int
    ):
        self.solver, self.grid, self.k, self.state, self.offset = solver, grid, k, state, offset
        self.point = self._begin(xbar)

    def _begin(self, xbar: Tensor) -> tuple[Tensor, float | None]:
        while self.k < len(self.grid) - 1:
            self.gen = interval(self.solver, self.grid[self.k], self.grid[self.k + 1], xbar, self.state)
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

    ``pipe.scheduler = ODEScheduler.from_config(pipe.scheduler.config, solver="adams")`` keeps the
    source config's training schedule (``beta_schedule``, ``beta_start``/``beta_end``,
    ``trained_betas``, ``rescale_betas_zero_snr``), ``prediction_type`` and ``timestep_spacing``;
    then ``pipe(num_inference_steps=n)`` spends exactly n UNet evaluations: ``num_inference_steps``
    is the NFE budget, and ``scheduler.timesteps`` has one entry per evaluation (a Heun step's
    second evaluation is an entry of its own, so ``order`` is 1 and progress bars count
    evaluations). Clipping and thresholding options of the source config are not applied.

    Args:
        solver: a fixed-step solver of :data:`odediff.SOLVERS` (``"adams"``, ``"heun"``, ``"euler"``,
            ``"ddim"``, ``"bdia"``, ``"belm"``); adaptive ones are refused, as a pipeline's loop
            needs its timesteps before it starts.
        solver_options: the solver's options, e.g. ``{"order": 4}`` or ``{"eta": 1.0}``.
        nfe: a fixed budget, spent whatever ``num_inference_steps`` the pipeline passes.
        grid: a grid of :data:`odediff.GRIDS` (default: odediff's, ``"quadratic_t"``, as
            :func:`odediff.sample`), or ``"timestep_spacing"`` for the integer timesteps the
            source config's ``timestep_spacing``/``steps_offset`` give (there ``solver="euler"`` is
            the source's DDIM with η = 0, ending at σ = 0 as ``set_alpha_to_one=True``).
        sigmas: an explicit σ grid (e.g. a tuned one, ``odediff.tune``), decreasing to 0; it fixes
            the budget, so ``num_inference_steps`` is not used.
        snap_timesteps: off-grid σ reaches the UNet as a fractional t(σ) (log-σ interpolation,
            odediff.schedules), which diffusers' UNets accept. Set True for models or pipelines that
            need integer timesteps (embedding tables, arrays indexed by t): the UNet then sees the
            nearest integer t, while the solver keeps the exact σ. With
            ``grid="timestep_spacing"`` every fixed-step solver evaluates at integer t only.
        terminal_alpha_cumprod: stands in for ᾱ_{T−1} = 0 of a zero-terminal-SNR schedule
            (default 2**-24, diffusers' choice).

    The pipeline's sample is the VP-scale x_t (``init_noise_sigma = 1``); the solver keeps the
    float64 x̄ = x_t·sqrt(1+σ²) between calls as long as the pipeline passes back the tensor it
    was given. A different sample at the start of a solver step (e.g. inpainting) restarts the
    state from it (multistep history kept); between the stages of one step it only changes that
    stage's ε. ``set_begin_index`` (image-to-image) starts the solver afresh at that entry,
    which must be the start of a solver step.
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
        self.alphas_cumprod: Tensor = ddpm.alphas_cumprod  # float32, as diffusers' schedulers have it
        terminal = terminal_alpha_cumprod
        if terminal is None and float(self.alphas_cumprod[-1]) == 0.0:
            terminal = _ZERO_SNR_ALPHA
        self.schedule = DiscreteSchedule(self.alphas_cumprod, terminal_alpha_cumprod=terminal)
        if sigmas is not None:  # validated now rather than mid-pipeline
            self._custom_grid(sigmas, nfe)
        self.num_inference_steps: int | None = None
        self.timesteps: Tensor | None = None
        self.evaluation_sigmas: Tensor | None = None
        self._plan: list[_Evaluation] = []
        self._grid: Tensor | None = None
        self._nfe: int | None = None
        self._run: _Run | None = None
        self._index = 0
        self._begin_index: int | None = None
        self._last: Tensor | None = None

    # ------------------------------------------------------------------------------ properties
    @property
    def solver(self) -> Solver:
        """The odediff solver (its accuracy order is ``solver.order``; ``order`` here is diffusers')."""
        return self._solver

    @property
    def grid_sigmas(self) -> Tensor | None:
        """The solver's σ grid (float64, decreasing to 0), once ``set_timesteps`` has run."""
        return self._grid

    @property
    def step_index(self) -> int | None:
        """Index into ``timesteps`` of the next evaluation, once the loop has started."""
        return None if self._run is None else self._index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at ``timesteps[begin_index]`` (image-to-image pipelines call this)."""
        self._begin_index = begin_index

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
        Custom ``timesteps`` (→ σ(t), then 0) or ``sigmas`` (odediff's σ, 0 appended if missing)
        give the grid itself; the solver then spends what it needs on it.
        """
        cfg = self.config
        solver, sched = self._solver, self.schedule
        if timesteps is not None or sigmas is not None:
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
                if cfg.grid == SPACING_GRID:
                    grid = plan(sched, solver, budget, timesteps=self._spacing(solver.intervals(budget)))
                else:
                    grid = plan(sched, solver, budget, grid=cfg.grid)
            except ValueError as e:
                raise _renamed(e, name) from None
        try:
            evaluations = _dry_run(solver, grid, budget)
        except ValueError as e:
            raise _renamed(e, name) from None
        if budget is not None and len(evaluations) != budget:  # a planning bug, never the user's
            raise RuntimeError(
                f"{solver.name} planned {len(evaluations)} evaluations for a budget of {budget}"
            )
        fixed = cfg.nfe is not None or (cfg.sigmas is not None and timesteps is None and sigmas is None)
        if fixed and num_inference_steps not in (None, len(evaluations)):
            warnings.warn(
                f"num_inference_steps={num_inference_steps} is not used: this scheduler's config fixes "
                f"{'nfe' if cfg.nfe is not None else 'sigmas'}, {len(evaluations)} evaluations",
                stacklevel=2,
            )
        t = [self.schedule.t_of_sigma(e.sigma, snap=cfg.snap_timesteps) for e in evaluations]
        # a Heun stage at σ + (σ' − σ) is σ' to round-off: an integer t(σ') stays an integer
        t = [float(round(v)) if abs(v - round(v)) < 1e-9 else v for v in t]
        integral = all(v == int(v) for v in t)
        # float32, as odediff's EpsModel hands t to a float32 network
        self.timesteps = torch.tensor(t, dtype=torch.int64 if integral else torch.float32, device=device)
        self.evaluation_sigmas = torch.tensor([e.sigma for e in evaluations], dtype=torch.float64)
        self.num_inference_steps = len(evaluations)
        self._plan, self._grid, self._nfe = evaluations, grid, budget
        self._run, self._index, self._begin_index, self._last = None, 0, None, None

    def _spacing(self, n: int) -> Tensor:
        """The n timesteps the source config's timestep_spacing and steps_offset give."""
        cfg = self.config
        ddim = diffusers.DDIMScheduler(
            num_train_timesteps=cfg.num_train_timesteps, timestep_spacing=cfg.timestep_spacing,
            steps_offset=cfg.steps_offset,
        )  # fmt: skip
        try:
            ddim.set_timesteps(n)
        except ValueError as e:
            raise ValueError(f"timestep_spacing: {e}") from None
        return ddim.timesteps

    def _custom_grid(self, sigmas: list[float] | Tensor, nfe: int | None = None) -> Tensor:
        s = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu().flatten()
        if s.numel() and s[-1] != 0:
            s = torch.cat([s, s.new_zeros(1)])  # a sampling loop ends at x_0
        return plan(self.schedule, self._solver, nfe, sigmas=s)

    # -------------------------------------------------------------------------------- stepping
    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """The UNet takes the VP-scale sample as it is."""
        return sample

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: torch.Generator | None = None,
        eta: float | None = None,
        use_clipped_model_output: bool | None = None,
        return_dict: bool = True,
    ) -> ODESchedulerOutput | tuple[Tensor]:
        """Deliver the UNet's output at ``timesteps[i]`` and get the sample for ``timesteps[i+1]``.

        The output becomes ε = ``to_eps(model_output, sample, σ_i, prediction_type)`` and is sent
        to the solver step under way, which runs on to the point where it needs the next ε.
        ``generator`` feeds a stochastic solver (``ddim`` with η > 0). ``eta`` is DDIMPipeline's:
        0 (its default) is accepted by any solver; set η in ``solver_options`` instead.
        ``use_clipped_model_output`` is accepted and ignored (no clipping).
        """
        if self.timesteps is None:
            raise RuntimeError("set_timesteps: call scheduler.set_timesteps(num_inference_steps) before step")
        if eta not in (None, 0, 0.0) and eta != getattr(self._solver, "eta", None):
            raise ValueError(
                f"eta: {eta!r} given to step, but this scheduler's solver is {self._solver.name} with η = "
                f"{getattr(self._solver, 'eta', 0.0)}; use ODEScheduler.from_config(..., solver='ddim', "
                f"solver_options={{'eta': {eta!r}}})"
            )
        if not isinstance(model_output, Tensor) or not isinstance(sample, Tensor):
            raise TypeError("model_output, sample: expected tensors")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output: shape {tuple(model_output.shape)} differs from the sample's "
                f"{tuple(sample.shape)}; expected an {self.config.prediction_type} prediction of its shape"
            )
        t = float(torch.as_tensor(timestep).reshape(-1)[0])
        if self._run is None:
            self._start(t, sample, generator)
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
        eps = to_eps(model_output, sample, ev.sigma, self.config.prediction_type)
        self._index += 1
        xbar, sigma = run.send(eps)
        if sigma is None:
            if self._index != len(self._plan):
                raise RuntimeError(f"{self._solver.name} finished after {self._index} of {len(self._plan)}")
            sigma = float(self._grid[-1])
        elif self._index >= len(self._plan) or sigma != self._plan[self._index].sigma:
            raise RuntimeError(f"{self._solver.name} left its plan at σ={sigma:.6g}")
        prev = (xbar / math.sqrt(1 + sigma * sigma)).to(sample.dtype)  # as EpsModel feeds its network
        self._last = prev
        x0 = sample * math.sqrt(1 + ev.sigma * ev.sigma) - ev.sigma * eps.to(sample.dtype)
        if not return_dict:
            return (prev,)
        return ODESchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def _same_as_returned(self, sample: Tensor) -> bool:
        last = self._last
        if sample is last:
            return True
        return (
            last is not None and sample.shape == last.shape and sample.dtype == last.dtype
            and sample.device == last.device and torch.equal(sample, last)
        )  # fmt: skip

    def _start(self, t: float, sample: Tensor, generator: torch.Generator | list | None) -> None:
        """Begin the solve at ``begin_index`` (or at the entry ``t`` names), from ``sample``."""
        k = self._begin_index
        if k is None:
            starts = [j for j, e in enumerate(self._plan) if e.first and float(self.timesteps[j]) == t]
            if not starts:
                raise ValueError(
                    f"timestep: {t} is not a timestep where a {self._solver.name} step starts; expected "
                    f"one of scheduler.timesteps, usually timesteps[0] = {float(self.timesteps[0])}"
                )
            k = starts[0]
        if not (isinstance(k, int) and 0 <= k < len(self._plan)):
            raise ValueError(
                f"begin_index: expected an index into the {len(self._plan)} timesteps, got {k!r}"
            )
        ev = self._plan[k]
        if k > 0 and not ev.first:
            raise ValueError(
                f"begin_index: timesteps[{k}] is the second evaluation of a {self._solver.name} step; "
                "start at the first evaluation of a step"
            )
        grid = self._grid[ev.step :]
        nfe = self._nfe if self._nfe is None or k == 0 else len(self._plan) - k
        if k > 0 and [e.sigma for e in _dry_run(self._solver, grid, nfe)] != [
            e.sigma for e in self._plan[k:]
        ]:
            raise ValueError(f"begin_index: {self._solver.name} cannot restart at timesteps[{k}]")
        if self._solver.stochastic and isinstance(generator, list):
            raise ValueError(
                f"generator: {self._solver.name} draws its noise from one torch.Generator, got a list"
            )
        xbar = sample.to(_work_dtype(sample.device)) * math.sqrt(1 + ev.sigma * ev.sigma)
        sig = tuple(float(v) for v in grid)
        state = self._solver.init(sig, nfe=nfe, generator=generator)
        self._run, self._index = _Run(self._solver, sig, 0, xbar, state, k), k

    # ---------------------------------------------------------------------------------- noising
    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor | float) -> Tensor:
        """x_t = sqrt(ᾱ_t)·x_0 + sqrt(1−ᾱ_t)·noise, ᾱ_t = 1/(1+σ(t)²) at real (fractional) t."""
        t = torch.as_tensor(timesteps, dtype=torch.float64).detach().cpu().flatten()
        sigma = self.schedule.sigma_of_t(t)
        shape = (-1,) + (1,) * (original_samples.ndim - 1) if t.numel() > 1 else ()
        r = (1 + sigma * sigma).sqrt()
        a = (1 / r).reshape(shape).to(original_samples.device, original_samples.dtype)
        b = (sigma / r).reshape(shape).to(original_samples.device, original_samples.dtype)
        return a * original_samples + b * noise


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
