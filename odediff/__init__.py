"""odediff: diffusion sampling as solving the probability-flow ODE dx̄/dσ = ε(x̄, σ).

Names load on first use (PEP 562), so that ``import odediff`` and the command line's ``--help``
do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOME = {
    "from_denoiser": "adapters", "from_diffusers": "adapters", "to_denoiser": "adapters",
    "decode": "api", "encode": "api", "sample": "api", "slerp": "api",
    "GRIDS": "grids", "plan": "grids", "Guided": "guidance",
    "BudgetExceeded": "integrate", "Info": "integrate", "Step": "integrate", "integrate": "integrate",
    "Latent": "latent", "bits_per_dim": "likelihood", "log_likelihood": "likelihood",
    "EpsModel": "models", "Model": "models", "DiscreteSchedule": "schedules",
    "SOLVERS": "solvers", "Solver": "solvers", "get_solver": "solvers",
    "TunedGrid": "tune", "tune_grid": "tune",
}  # fmt: skip
__all__ = [
    "GRIDS",
    "SOLVERS",
    "BudgetExceeded",
    "DiscreteSchedule",
    "EpsModel",
    "Guided",
    "Info",
    "Latent",
    "Model",
    "Solver",
    "Step",
    "TunedGrid",
    "bits_per_dim",
    "decode",
    "encode",
    "from_denoiser",
    "from_diffusers",
    "get_solver",
    "integrate",
    "log_likelihood",
    "plan",
    "sample",
    "slerp",
    "to_denoiser",
    "tune_grid",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .adapters import from_denoiser, from_diffusers, to_denoiser
    from .api import decode, encode, sample, slerp
    from .grids import GRIDS, plan
    from .guidance import Guided
    from .integrate import BudgetExceeded, Info, Step, integrate
    from .latent import Latent
    from .likelihood import bits_per_dim, log_likelihood
    from .models import EpsModel, Model
    from .schedules import DiscreteSchedule
    from .solvers import SOLVERS, Solver, get_solver
    from .tune import TunedGrid, tune_grid


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'odediff' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
