"""Bridges to other libraries' models.

- :func:`from_diffusers`: a diffusers UNet and its scheduler's ᾱ and prediction type as a model.
- :func:`from_denoiser` / :func:`to_denoiser`: k-diffusion's denoiser D(x̄, σ) ↔ an odediff model,
  related by ε = (x̄ − D(x̄, σ))/σ, i.e. x̂_0 = D(x̄, σ) = x̄ − σ·ε.

diffusers is never imported here: its models and schedulers are used by their attributes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .models import PREDICTIONS, EpsModel, Model, parameters_like
from .schedules import DiscreteSchedule

__all__ = ["Denoiser", "DenoiserModel", "from_denoiser", "from_diffusers", "to_denoiser"]


def _as_schedule(schedule, name: str) -> DiscreteSchedule:
    if isinstance(schedule, DiscreteSchedule):
        return schedule
    if isinstance(schedule, Tensor):
        return DiscreteSchedule(schedule)
    raise TypeError(
        f"{name}: expected a DiscreteSchedule or a tensor of alphas_cumprod, got {type(schedule).__name__}"
    )


# diffusers ---------------------------------------------------------------------------------


def from_diffusers(
    unet: Callable[..., object],
    scheduler: object,
    *,
    terminal_alpha_cumprod: float | None = None,
    snap_timesteps: bool = False,
    **unet_kwargs,
) -> EpsModel:
    """A diffusers ``UNet2DModel``/``UNet2DConditionModel`` (or any ``unet(x_t, t, **kw)``) as a model.

    ᾱ and the prediction type ("epsilon", "sample", "v_prediction") come from
    ``scheduler.alphas_cumprod`` and ``scheduler.config.prediction_type``; the scheduler is not
    used otherwise. ``unet_kwargs`` (e.g. ``encoder_hidden_states``) go to every call of the
    UNet. For a zero-terminal-SNR schedule (ᾱ_{T−1} = 0, e.g. ``rescale_betas_zero_snr=True``)
    pass ``terminal_alpha_cumprod`` (diffusers uses 2**-24) to stand in for that 0.
    """
    if not callable(unet):
        raise TypeError(f"unet: expected a diffusers UNet (callable unet(x_t, t)), got {type(unet).__name__}")
    ac = getattr(scheduler, "alphas_cumprod", None)
    config = getattr(scheduler, "config", None)
    if not isinstance(ac, Tensor) or config is None:
        raise TypeError(
            "scheduler: expected a diffusers scheduler with .alphas_cumprod and .config (DDIM, DDPM, "
            f"Euler, DPM-Solver, …), got {type(scheduler).__name__}"
        )
    prediction = getattr(config, "prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"scheduler: prediction_type {prediction!r} is not supported; expected one of {PREDICTIONS}"
        )
    schedule = DiscreteSchedule(ac, terminal_alpha_cumprod=terminal_alpha_cumprod)
    return EpsModel(unet, schedule, prediction, snap_timesteps=snap_timesteps, **unet_kwargs)


# k-diffusion denoisers ---------------------------------------------------------------------


class DenoiserModel:
    """A denoiser D(x̄, σ) → x̂_0 as a model: ε = (x̄ − D(x̄, σ)) / σ.

    D is k-diffusion's convention: x̄ in the VE scale, σ a tensor of shape (batch,).
    ``net_kwargs`` go to every call of D.
    """

    def __init__(self, denoiser: Callable[..., Tensor], schedule: DiscreteSchedule | Tensor, **net_kwargs):
        if not callable(denoiser):
            raise TypeError(
                f"denoiser: expected a callable D(xbar, sigma) -> x0, got {type(denoiser).__name__}"
            )
        self.net = denoiser
        self.schedule = _as_schedule(schedule, "schedule")
        self.net_kwargs = net_kwargs

    def eps(self, xbar: Tensor, sigma: float) -> Tensor:
        if not sigma > 0:
            raise ValueError(f"sigma: a denoiser's ε is defined for σ > 0 only, got {sigma}")
        s = torch.full((xbar.shape[0],), sigma, dtype=xbar.dtype, device=xbar.device)
        x0 = self.net(xbar, s, **self.net_kwargs)
        if not isinstance(x0, Tensor) or x0.shape != xbar.shape:
            got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
            raise ValueError(
                f"denoiser: returned {got}, expected a tensor of its input's shape {tuple(xbar.shape)}"
            )
        return (xbar - x0) / sigma

    def parameters_like(self) -> tuple[torch.device, torch.dtype] | None:
        """(device, dtype) of the denoiser's first parameter, if it has any."""
        return parameters_like(self.net)


def from_denoiser(
    denoiser: Callable[..., Tensor], schedule: DiscreteSchedule | Tensor, **denoiser_kwargs
) -> DenoiserModel:
    """k-diffusion-style D(x̄, σ) → x̂_0 as a model, ε = (x̄ − D(x̄, σ))/σ, on ``schedule``'s σ range."""
    return DenoiserModel(denoiser, schedule, **denoiser_kwargs)


class Denoiser:
    """A model as a k-diffusion denoiser: D(x̄, σ) = x̂_0 = x̄ − σ·ε(x̄, σ).

    σ is a number, a 0-d tensor, or a tensor of shape (batch,). Items sharing a σ go to the
    model together, so each distinct σ in the batch costs one network evaluation; σ = 0 gives
    D = x̄ without one. ``sigmas``, ``sigma_min``, ``sigma_max`` are those of the schedule, as
    k-diffusion's grid functions expect.
    """

    def __init__(self, model: Model):
        if not isinstance(model, Model):
            raise TypeError(
                f"model: expected an odediff model (with .schedule and .eps(xbar, sigma)), got "
                f"{type(model).__name__}"
            )
        self.model = model
        self.sigmas = model.schedule.sigmas
        self.sigma_min = model.schedule.sigma_min
        self.sigma_max = model.schedule.sigma_max

    def __call__(self, xbar: Tensor, sigma: Tensor | float) -> Tensor:
        if not isinstance(xbar, Tensor) or xbar.ndim == 0:
            raise TypeError(f"xbar: expected a batch tensor of shape (batch, ...), got {type(xbar).__name__}")
        s = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu()
        if s.ndim == 0:
            s = s.expand(xbar.shape[0])
        if s.shape != xbar.shape[:1]:
            raise ValueError(
                f"sigma: expected a number or shape ({xbar.shape[0]},) for a batch of {xbar.shape[0]}, "
                f"got shape {tuple(s.shape)}"
            )
        if (s < 0).any() or not torch.isfinite(s).all():
            raise ValueError(f"sigma: expected finite values ≥ 0, got {s.tolist()}")
        values = s.unique().tolist()
        if len(values) == 1:  # the usual case: one σ for the whole batch
            v = values[0]
            return xbar.clone() if v == 0 else xbar - v * self.model.eps(xbar, v)
        out = xbar.clone()
        for v in values:
            if v > 0:
                idx = (s == v).nonzero().flatten().to(xbar.device)
                out[idx] = xbar[idx] - v * self.model.eps(xbar[idx], v)
        return out


def to_denoiser(model: Model) -> Denoiser:
    """Any model as a k-diffusion denoiser D(x̄, σ) = x̄ − σ·ε(x̄, σ); see :class:`Denoiser`."""
    return Denoiser(model)
