"""Built-in models: the exact ε of a Gaussian mixture (ready-made for digits) and a small
UNet trained on scikit-learn's digits."""

from __future__ import annotations

from collections.abc import Callable

from ..models import Model
from .gmm import GaussianMixture, gmm_digits

__all__ = ["MODELS", "GaussianMixture", "gmm_digits", "load"]


def _digits() -> Model:
    from .digits import load_digits_model

    return load_digits_model()


MODELS: dict[str, Callable[[], Model]] = {"digits": _digits, "gmm-digits": gmm_digits}


def load(name: str) -> Model:
    """A built-in model by name (see :data:`MODELS`); each has ``sample_shape`` (C, H, W)."""
    if name not in MODELS:
        raise ValueError(f"name: unknown built-in model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name]()
