"""Classifier-free guidance: ε = ε_u + w·(ε_c − ε_u), both branches in one network call (one NFE)."""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .models import Model, parameters_like
from .schedules import DiscreteSchedule

__all__ = ["Cond", "Guided"]

Cond = Mapping[str, "Tensor | Cond"]


def _check_cond(cond: Cond, uncond: Cond, path: str = "") -> None:
    if not isinstance(cond, Mapping) or not isinstance(uncond, Mapping):
        bad = cond if not isinstance(cond, Mapping) else uncond
        raise TypeError(f"cond, uncond{path}: expected dicts of batch tensors, got {type(bad).__name__}")
    if set(cond) != set(uncond):
        raise ValueError(
            f"cond, uncond{path}: expected the same keys, got {sorted(cond)} and {sorted(uncond)}"
        )
    for k in cond:
        c, u = cond[k], uncond[k]
        if isinstance(c, Mapping) or isinstance(u, Mapping):
            _check_cond(c, u, f"{path}[{k!r}]")
        elif not isinstance(c, Tensor) or not isinstance(u, Tensor) or c.ndim == 0 or u.ndim == 0:
            raise TypeError(
                f"cond, uncond{path}[{k!r}]: expected batch tensors (batch, ...), got "
                f"{type(c).__name__} and {type(u).__name__}; pass arguments without a batch "
                f"dimension to the model itself (e.g. from_diffusers(unet, scheduler, **kwargs))"
            )


def _stack(cond: Cond, uncond: Cond, n: int, path: str = "") -> dict:
    """[uncond; cond] along dim 0, each of batch n (a batch of 1 is expanded to n)."""
    out = {}
    for k in cond:
        c, u = cond[k], uncond[k]
        if isinstance(c, Mapping):
            out[k] = _stack(c, u, n, f"{path}[{k!r}]")
            continue
        for name, v in (("uncond", u), ("cond", c)):
            if v.shape[0] not in (1, n):
                raise ValueError(
                    f"{name}{path}[{k!r}]: batch {v.shape[0]} does not match the sample's batch {n}; "
                    f"expected {n} or 1"
                )
        out[k] = torch.cat([u.expand(n, *u.shape[1:]), c.expand(n, *c.shape[1:])])
    return out


class _BothBranches:
    """net(x, s, **kw) for the doubled batch x = [x; x], adding the stacked [uncond; cond] kwargs."""

    def __init__(self, net: Callable[..., object], cond: Cond, uncond: Cond):
        self.net, self.cond, self.uncond = net, cond, uncond

    def __call__(self, x: Tensor, s: Tensor, **kwargs):
        return self.net(x, s, **kwargs, **_stack(self.cond, self.uncond, x.shape[0] // 2))

    def parameters(self):
        params = getattr(self.net, "parameters", None)
        return iter(()) if params is None else params()


class Guided:
    """Classifier-free guidance: ε = ε_u + w·(ε_c − ε_u), with ε_c, ε_u from ONE network call.

    ``model`` is a model that calls ``model.net(x, t_or_σ, **model.net_kwargs)`` — an
    :class:`EpsModel`, :func:`from_diffusers` or :func:`from_denoiser` model. Its network is
    called on the batch [x; x] with each conditioning argument in ``cond``/``uncond`` (dicts of
    batch tensors, nested dicts allowed, e.g. diffusers' ``added_cond_kwargs``) concatenated as
    [uncond; cond] along dim 0; a batch of 1 is broadcast to the sample's batch. The model's own
    ``net_kwargs`` are passed unchanged to the doubled call, so they must not have a batch
    dimension. w = 0 is the unconditional model, w = 1 the conditional one.

    Guiding the raw output (x̂_0 or v) or ε is the same: the conversion to ε is affine in it.
    """

    def __init__(self, model: Model, *, cond: Cond, uncond: Cond, w: float):
        if not isinstance(model, Model) or not hasattr(model, "net") or not hasattr(model, "net_kwargs"):
            raise TypeError(
                "model: expected a model calling model.net(x, t, **model.net_kwargs) (EpsModel, "
                f"from_diffusers, from_denoiser), got {type(model).__name__}"
            )
        if not isinstance(w, numbers.Real):
            raise TypeError(f"w: expected a real number, got {type(w).__name__}")
        _check_cond(cond, uncond)
        clash = set(cond) & set(model.net_kwargs)
        if clash:
            raise ValueError(
                f"cond: {sorted(clash)} also given to the model itself; give them in cond/uncond only"
            )
        self.model = model
        self.w = float(w)
        # a copy of the model whose network sees both branches at once
        self._both = copy.copy(model)
        self._both.net = _BothBranches(model.net, cond, uncond)

    @property
    def schedule(self) -> DiscreteSchedule:
        return self.model.schedule

    def eps(self, xbar: Tensor, sigma: float) -> Tensor:
        eps_u, eps_c = self._both.eps(torch.cat([xbar, xbar]), sigma).chunk(2)
        return torch.lerp(eps_u, eps_c, self.w)  # exact at w = 0 and w = 1

    def parameters_like(self) -> tuple[torch.device, torch.dtype] | None:
        """(device, dtype) of the network's first parameter, if it has any."""
        return parameters_like(self.model.net)
