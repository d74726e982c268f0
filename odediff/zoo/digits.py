"""A small ε-prediction UNet trained on scikit-learn's 8×8 digits (the embedded default model).

Data: ``sklearn.datasets.load_digits`` (1797 images), pixels p ∈ {0, …, 16} scaled to
x = p/8 − 1 ∈ [−1, 1], shape (N, 1, 8, 8). The split is fixed:
``train_test_split(test_size=0.2, random_state=0, stratify=labels)`` → 1437 train, 360 test images.
Only the train split is used for training; the test split measures the held-out denoising loss.

Training (DDPM, Ho et al. 2020): linear β schedule, T = 1000, t ~ U{0, …, T−1}, ε ~ N(0, I),

    x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε,    loss = ‖ε − ε_θ(x_t, t)‖² / d,

AdamW with linear warm-up and cosine decay, and an exponential moving average of the weights
(the EMA weights are the ones saved), by the zoo's shared loop (:mod:`odediff.zoo.training`).
Reproduce the embedded weights (``digits``, seed 0) and the second seed (``digits-seed1``, the
same recipe and steps with seed 1: seed-to-seed noise) with

    python -m odediff.zoo.digits --steps 4000 --out odediff/zoo/weights/digits.pt
    python -m odediff.zoo.digits --steps 4000 --seed 1 --out odediff/zoo/weights/digits-seed1.pt
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ..models import EpsModel
from ..schedules import DiscreteSchedule
from . import training
from .unet import UNet

__all__ = [
    "WEIGHTS",
    "WEIGHTS_SEED1",
    "GaussianPredictor",
    "denoising_loss",
    "load_data",
    "load_digits_model",
    "schedule",
    "train",
    "zero_predictor",
]

WEIGHTS = Path(__file__).parent / "weights" / "digits.pt"
WEIGHTS_SEED1 = Path(__file__).parent / "weights" / "digits-seed1.pt"
SAMPLE_SHAPE = (1, 8, 8)
UNET_CONFIG = {"channels": 1, "width": 32, "mults": (1, 2, 2)}

Split = Literal["train", "test", "all"]


def schedule() -> DiscreteSchedule:
    """The training schedule: DDPM linear β_t = linspace(1e-4, 0.02, 1000)."""
    return DiscreteSchedule.linear(1000)


def load_data(split: Split = "train") -> tuple[Tensor, Tensor]:
    """Images x = pixel/8 − 1 of shape (N, 1, 8, 8) (float32) and labels (N,) of one split.

    The split is ``train_test_split(test_size=0.2, random_state=0, stratify=labels)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8 - 1
    y = torch.tensor(digits.target)
    if split == "all":
        return x, y
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train', 'test' or 'all', got {split!r}")
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.2, random_state=0, stratify=y.numpy()
    )
    idx = torch.as_tensor(idx_train if split == "train" else idx_test)
    return x[idx], y[idx]


# --- the trained model ------------------------------------------------------------------------


def load_digits_model(path: str | Path | None = None, name: str = "digits") -> EpsModel:
    """The trained digits UNet as an :class:`~odediff.EpsModel` (ε-prediction, linear schedule).

    The network is in eval mode with gradients off; ``model.sample_shape == (1, 8, 8)`` and
    ``model.name == name``. ``path`` defaults to the embedded weights.
    """
    path = WEIGHTS if path is None else path
    return training.load_model(path, UNet, schedule(), "epsilon", SAMPLE_SHAPE, name)


# --- evaluation -------------------------------------------------------------------------------


def zero_predictor(x_t: Tensor, t: Tensor) -> Tensor:
    """ε̂ = 0 (its loss is E‖ε‖²/d ≈ 1)."""
    return torch.zeros_like(x_t)


class GaussianPredictor(training.GaussianPredictor):
    """The best ε̂ if every pixel were independently N(μ_i, v_i) (μ, v fitted on the train split).

    With a = sqrt(ᾱ_t), s = sqrt(1 − ᾱ_t):  ε̂ = E[ε | x_t] = s·(x_t − a·μ) / (a²·v + s²).
    It is linear in x_t, and accepts real t like a network. ``sched`` defaults to the linear
    schedule; ``full_covariance=True`` uses the pixels' covariance instead (see
    :class:`odediff.zoo.training.GaussianPredictor`).
    """

    def __init__(
        self, x: Tensor | None = None, sched: DiscreteSchedule | None = None, *, full_covariance: bool = False
    ) -> None:
        x = load_data("train")[0] if x is None else x
        super().__init__(x, sched or schedule(), full_covariance=full_covariance)


@torch.no_grad()
def denoising_loss(
    model_or_net: EpsModel | Callable[[Tensor, Tensor], Tensor],
    split: Split = "test",
    *,
    seed: int = 0,
    repeats: int = 10,
    batch_size: int = 1024,
    sched: DiscreteSchedule | None = None,
) -> float:
    """Held-out ε-MSE  mean over (x_0, t, ε) of ‖ε − ε̂(sqrt(ᾱ_t)x_0 + sqrt(1−ᾱ_t)ε, t)‖² / d.

    Each image of ``split`` is used ``repeats`` times with t ~ U{0, …, T−1} and ε ~ N(0, I)
    drawn from ``seed``, so every predictor sees the same draws and the numbers are comparable
    (ε̂ = 0 scores ≈ 1). Takes an EpsModel (its ``.net`` is evaluated on its schedule, the output
    converted to ε̂ by its prediction type) or any ``net(x_t, t)`` returning ε̂ on ``sched``
    (default: the linear schedule). See :func:`odediff.zoo.training.eps_mse`.
    """
    if not isinstance(model_or_net, EpsModel):
        sched = sched or schedule()
    return training.eps_mse(
        model_or_net, load_data(split)[0], sched, seed=seed, repeats=repeats, batch_size=batch_size
    )


# --- training ---------------------------------------------------------------------------------


def train(
    steps: int = 4000,
    *,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 200,
    weight_decay: float = 0.01,
    ema_decay: float = 0.999,
    out: str | Path | None = None,
    seed: int = 0,
    threads: int | None = 1,
    progress: bool = True,
) -> nn.Module:
    """Train the digits UNet on the train split; return the EMA network (and save it to ``out``).

    Minimises ‖ε − ε_θ(sqrt(ᾱ_t)x_0 + sqrt(1−ᾱ_t)ε, t)‖²/d with t ~ U{0, …, T−1}, by the zoo's one
    loop :func:`odediff.zoo.training.train_denoiser` (EMA with d = min(ema_decay, (1 + k)/(10 + k))
    at step k, so that short runs are not dominated by the initial weights).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = UNet(**UNET_CONFIG)
    ema, meta = training.train_denoiser(
        net, load_data("train")[0], schedule(), "epsilon", steps=steps, batch_size=batch_size, lr=lr,
        warmup=warmup, weight_decay=weight_decay, ema_decay=ema_decay, seed=seed, progress=progress,
        desc="digits",
    )  # fmt: skip
    if out is not None:
        training.save_checkpoint(out, UNET_CONFIG, ema, meta)
    return ema


def main(argv: list[str] | None = None) -> None:
    net, args = training.train_from_command_line(
        "python -m odediff.zoo.digits",
        "Train the digits ε-prediction UNet on the CPU and save its EMA weights.",
        train,
        argv,
        steps=4000,
    )
    print(f"saved {args.out}; held-out ε-MSE {denoising_loss(net):.4f}")


if __name__ == "__main__":
    main()
