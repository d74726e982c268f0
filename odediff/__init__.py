"""odediff: diffusion sampling as solving the probability-flow ODE dx̄/dσ = ε(x̄, σ)."""

from .adapters import from_denoiser, from_diffusers, to_denoiser
from .api import decode, encode, sample, slerp
from .grids import GRIDS, plan
from .guidance import Guided
from .integrate import BudgetExceeded, Info, Step, integrate
from .latent import Latent
from .models import EpsModel, Model
from .schedules import DiscreteSchedule
from .solvers import SOLVERS, Solver, get_solver
from .tune import TunedGrid, tune_grid

__all__ = [
    "GRIDS", "SOLVERS", "BudgetExceeded", "DiscreteSchedule", "EpsModel", "Guided", "Info", "Latent",
    "Model", "Solver", "Step", "TunedGrid", "decode", "encode", "from_denoiser", "from_diffusers",
    "get_solver", "integrate", "plan", "sample", "slerp", "to_denoiser", "tune_grid",
]  # fmt: skip
__version__ = "0.1.0"
