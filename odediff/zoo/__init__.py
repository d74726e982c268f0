"""Built-in models: the exact ε of a Gaussian mixture (ready-made for digits) and a proving ground of
small networks trained on the CPU:

- ``digits``: ε-prediction UNet, linear schedule, scikit-learn's 8×8 digits (:mod:`.digits`);
- ``digits-seed1``: the same recipe with seed 1, to see seed-to-seed noise;
- ``digits-dit``: v-prediction transformer on 2×2 patches, cosine schedule (:mod:`.dit`);
- ``photos``: ε-prediction UNet on 16×16 greyscale photo patches, Stable Diffusion's scaled-linear
  schedule (:mod:`.photos`);
- ``gmm-digits``: the exact ε of a Gaussian mixture fitted to the digits (:mod:`.gmm`).

Each network loads as an :class:`~odediff.EpsModel` in eval mode with gradients off, with
``sample_shape`` (C, H, W) and ``name`` (its key here).
"""

from __future__ import annotations

from collections.abc import Callable

from ..models import Model
from .gmm import GaussianMixture, gmm_digits

__all__ = ["MODELS", "GaussianMixture", "gmm_digits", "load"]


def _digits() -> Model:
    from .digits import load_digits_model

    return load_digits_model()


def _digits_seed1() -> Model:
    from .digits import WEIGHTS_SEED1, load_digits_model

    return load_digits_model(WEIGHTS_SEED1, name="digits-seed1")


def _digits_dit() -> Model:
    from .dit import load_dit_model

    return load_dit_model()


def _photos() -> Model:
    from .photos import load_photos_model

    return load_photos_model()


MODELS: dict[str, Callable[[], Model]] = {
    "digits": _digits,
    "digits-seed1": _digits_seed1,
    "digits-dit": _digits_dit,
    "photos": _photos,
    "gmm-digits": gmm_digits,
}


def load(name: str) -> Model:
    """A built-in model by name (see :data:`MODELS`); each has ``sample_shape`` (C, H, W), and each
    network also ``name``."""
    if name not in MODELS:
        raise ValueError(f"name: unknown built-in model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name]()
