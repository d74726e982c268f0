"""Any network as the ε field of the σ-ODE in x̄ coordinates.

A *model* here is anything with a ``schedule`` (a :class:`DiscreteSchedule`) and a method
``eps(xbar, sigma) -> ε`` giving the noise prediction at x̄ = x·sqrt(1+σ²) and noise level σ.
The probability-flow ODE that every solver integrates is dx̄/dσ = model.eps(x̄, σ).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from .schedules import DiscreteSchedule

__all__ = ["PREDICTIONS", "EpsModel", "Model", "to_eps"]

Prediction = Literal["epsilon", "sample", "v_prediction"]
PREDICTIONS = ("epsilon", "sample", "v_prediction")


@runtime_checkable
class Model(Protocol):
    """The protocol every solve relies on: a schedule, ε, and the network's device and dtype."""

    schedule: DiscreteSchedule

    def eps(self, xbar: Tensor, sigma: float) -> Tensor:
        """ε at noise level σ for the VE-scaled state x̄ (same shape as x̄)."""
        ...

    def parameters_like(self) -> tuple[torch.device, torch.dtype] | None:
        """(device, dtype) of the network's parameters, or None if it has none (it then runs
        in the caller's dtype: :mod:`odediff.integrate`)."""
        ...


def to_eps(out: Tensor, x_t: Tensor, sigma: float, prediction: Prediction) -> Tensor:
    """Convert a network output to ε, with sqrt(ᾱ) = 1/sqrt(1+σ²), sqrt(1−ᾱ) = σ/sqrt(1+σ²).

    x0-prediction:  ε = (x_t − sqrt(ᾱ)·x̂_0) / sqrt(1−ᾱ)
    v-prediction:   ε = sqrt(ᾱ)·v + sqrt(1−ᾱ)·x_t
    """
    if prediction == "epsilon":
        return out
    r = _root(sigma)
    if prediction == "sample":
        return (x_t - out / r) * (r / sigma)
    if prediction == "v_prediction":
        return (out + sigma * x_t) / r
    raise ValueError(f"prediction: expected one of {PREDICTIONS}, got {prediction!r}")


class EpsModel:
    """Wrap ``net(x_t, t) -> output`` trained on a discrete schedule as an ε field.

    The network sees the VP-scale state x_t = x̄ / sqrt(1+σ²) and the real timestep t(σ)
    (log-σ interpolation between integers, or the nearest integer with ``snap_timesteps``),
    as a float tensor of shape (batch,). Below σ_min it sees t = 0.
    """

    def __init__(
        self,
        net: Callable[..., Tensor],
        alphas_cumprod: Tensor | DiscreteSchedule,
        prediction: Prediction = "epsilon",
        *,
        snap_timesteps: bool = False,
        **net_kwargs,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction: expected one of {PREDICTIONS}, got {prediction!r}")
        if not callable(net):
            raise TypeError(f"net: expected a callable net(x_t, t), got {type(net).__name__}")
        self.net = net
        self.schedule = (
            alphas_cumprod
            if isinstance(alphas_cumprod, DiscreteSchedule)
            else DiscreteSchedule(alphas_cumprod)
        )
        self.prediction: Prediction = prediction
        self.snap_timesteps = snap_timesteps
        self.net_kwargs = net_kwargs

    casts_input: ClassVar[bool] = True  # takes the solver's float64 x̄; casts x_t for the network

    def eps(self, xbar: Tensor, sigma: float) -> Tensor:
        # x_t = x̄/sqrt(1+σ²) in the state's precision, then in the network's dtype: x_t then
        # equals the caller's x_T exactly at σ_max (dividing a rounded x̄ would not)
        # σ may be a 0-d tensor that requires grad (a learned solver's time): ε is then
        # differentiable in σ through x_t and t(σ)
        x_t = xbar / _root(sigma)
        net = parameters_like(self.net)
        if net is not None and x_t.dtype != net[1]:
            x_t = x_t.to(net[1])
        level = float(sigma.detach()) if isinstance(sigma, Tensor) else sigma
        t = self.schedule.t_of_sigma(level, snap=self.snap_timesteps)
        t_dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32  # half would round t
        t_batch = torch.full((xbar.shape[0],), t, dtype=t_dtype, device=xbar.device)
        if isinstance(sigma, Tensor) and sigma.requires_grad and not self.snap_timesteps:
            # t + (log σ − log σ.item())·dt/dlog σ: the same value, with t(σ)'s derivative
            slope = self.schedule.t_slope(level)
            t_batch = t_batch + ((sigma.log() - math.log(level)) * slope).to(t_dtype)
        out = self.net(x_t, t_batch, **self.net_kwargs)
        if not isinstance(out, Tensor):  # e.g. diffusers' UNet2DOutput
            out = getattr(out, "sample", None) if hasattr(out, "sample") else _first(out)
        if not isinstance(out, Tensor):
            raise TypeError(
                f"net: returned {type(out).__name__}, expected a tensor (or an output with .sample)"
            )
        if out.shape != xbar.shape:
            raise ValueError(
                f"net: output shape {tuple(out.shape)} differs from its input shape "
                f"{tuple(xbar.shape)}; expected an ε (or x0, v) prediction of the same shape"
            )
        return to_eps(out, x_t, sigma, self.prediction)

    def parameters_like(self) -> tuple[torch.device, torch.dtype] | None:
        """(device, dtype) of the network's first parameter, if it has any."""
        return parameters_like(self.net)


def _root(sigma: float | Tensor) -> float | Tensor:
    """sqrt(1 + σ²), for a float or a 0-d tensor σ."""
    return (1 + sigma * sigma).sqrt() if isinstance(sigma, Tensor) else math.sqrt(1 + sigma * sigma)


def _first(out: object) -> object:
    return out[0] if isinstance(out, tuple | list) and out else out


def parameters_like(net: object) -> tuple[torch.device, torch.dtype] | None:
    """(device, dtype) of a network's first parameter, or None for parameter-free callables."""
    params = getattr(net, "parameters", None)
    p = None if params is None else next(iter(params()), None)
    return None if p is None else (p.device, p.dtype)
