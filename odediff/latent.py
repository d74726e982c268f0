"""What :func:`odediff.encode` returns for a reversible solver: x_T and the state beyond it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .solvers import Solver, get_solver

__all__ = ["Latent"]


@dataclass(frozen=True)
class Latent:
    """An exactly invertible encoding: decoding it with the same solver and grid gives x_0 back.

    A reversible two-step solver needs two grid points to step from, so the latent holds x_T
    at σ_max and x̄ at the next grid point, both in float64 (rounding either to the image's
    dtype would cost the round trip its exactness). ``x`` is x_T in the image's dtype, for
    looking at, slerping or editing; decoding ``latent.x`` alone starts afresh (not exact).
    """

    xT: Tensor  # VP-scale x_T, float64
    carry: Tensor  # x̄ = x·sqrt(1+σ²) at sigmas[1], float64
    solver: Solver
    nfe: int
    sigmas: Tensor  # the decreasing grid the latent was encoded on, float64
    dtype: torch.dtype  # the image's dtype
    model: str  # odediff.fingerprint.fingerprint of the model that encoded it

    @property
    def x(self) -> Tensor:
        """x_T in the image's dtype."""
        return self.xT.to(self.dtype)

    @property
    def shape(self) -> torch.Size:
        return self.xT.shape

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v!r}" for k, v in _options(self.solver).items())
        return f"{self.solver.name}({extra}) with nfe={self.nfe} on a {len(self.sigmas) - 1}-interval grid"

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors, strings and numbers: loads with ``torch.load(..., weights_only=True)``."""
        return {
            "xT": self.xT, "carry": self.carry, "solver": self.solver.name,
            "options": _options(self.solver), "nfe": self.nfe, "sigmas": self.sigmas,
            "dtype": str(self.dtype).removeprefix("torch."), "model": self.model,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Latent:
        missing = {"xT", "carry", "solver", "options", "nfe", "sigmas", "dtype", "model"} - set(d)
        if missing:
            raise ValueError(f"latent: not an odediff latent, missing {sorted(missing)}")
        dtype = getattr(torch, d["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"latent: unknown dtype {d['dtype']!r}")
        solver = get_solver(d["solver"], **d["options"])
        return cls(d["xT"], d["carry"], solver, int(d["nfe"]), d["sigmas"], dtype, str(d["model"]))


def _options(solver: Solver) -> dict[str, Any]:
    return {
        f.name: getattr(solver, f.name) for f in dataclasses.fields(solver) if f.init and f.name != "name"
    }
