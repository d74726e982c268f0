"""A small ε-prediction UNet trained on scikit-learn's 8×8 digits (the embedded default model).

Data: ``sklearn.datasets.load_digits`` (1797 images), pixels p ∈ {0, …, 16} scaled to
x = p/8 − 1 ∈ [−1, 1], shape (N, 1, 8, 8). The split is fixed:
``train_test_split(test_size=0.2, random_state=0, stratify=labels)`` → 1437 train, 360 test images.
Only the train split is used for training; the test split measures the held-out denoising loss.

Training (DDPM, Ho et al. 2020): linear β schedule, T = 1000, t ~ U{0, …, T−1}, ε ~ N(0, I),

    x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε,    loss = ‖ε − ε_θ(x_t, t)‖² / d,

AdamW with linear warm-up and cosine decay, and an exponential moving average of the weights
(the EMA weights are the ones saved). Reproduce the embedded weights with

    python -m odediff.zoo.digits --steps 4000 --out odediff/zoo/weights/digits.pt
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ..models import EpsModel
from ..schedules import DiscreteSchedule
from .unet import UNet

__all__ = [
    "WEIGHTS",
    "GaussianPredictor",
    "denoising_loss",
    "load_data",
    "load_digits_model",
    "schedule",
    "train",
    "zero_predictor",
]

WEIGHTS = Path(__file__).parent / "weights" / "digits.pt"
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


def load_digits_model(path: str | Path | None = None) -> EpsModel:
    """The trained digits UNet as an :class:`~odediff.EpsModel` (ε-prediction, linear schedule).

    The network is in eval mode with gradients off; ``model.sample_shape == (1, 8, 8)``.
    ``path`` defaults to the embedded weights.
    """
    ckpt = torch.load(WEIGHTS if path is None else path, map_location="cpu", weights_only=True)
    net = UNet(**ckpt["config"])
    net.load_state_dict(ckpt["state_dict"])
    net.eval().requires_grad_(False)
    model = EpsModel(net, schedule(), prediction="epsilon")
    model.sample_shape = SAMPLE_SHAPE
    return model


# --- evaluation -------------------------------------------------------------------------------


def zero_predictor(x_t: Tensor, t: Tensor) -> Tensor:
    """ε̂ = 0 (its loss is E‖ε‖²/d ≈ 1)."""
    return torch.zeros_like(x_t)


class GaussianPredictor:
    """The best ε̂ if every pixel were independently N(μ_i, v_i) (μ, v fitted on the train split).

    With a = sqrt(ᾱ_t), s = sqrt(1 − ᾱ_t):  ε̂ = E[ε | x_t] = s·(x_t − a·μ) / (a²·v + s²).
    It is linear in x_t, and accepts real t like a network.
    """

    def __init__(self, x: Tensor | None = None, sched: DiscreteSchedule | None = None) -> None:
        x = load_data("train")[0] if x is None else x
        self.mean = x.double().mean(0)
        self.var = x.double().var(0, unbiased=False)
        self.schedule = sched or schedule()

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        ac = self.schedule.alpha_cumprod_of_sigma(self.schedule.sigma_of_t(t.cpu()))
        a, s = ac.sqrt().view(-1, 1, 1, 1), (1 - ac).sqrt().view(-1, 1, 1, 1)
        eps = s * (x_t.double().cpu() - a * self.mean) / (a * a * self.var + s * s)
        return eps.to(x_t)


@torch.no_grad()
def denoising_loss(
    model_or_net: EpsModel | Callable[[Tensor, Tensor], Tensor],
    split: Split = "test",
    *,
    seed: int = 0,
    repeats: int = 10,
    batch_size: int = 1024,
) -> float:
    """Held-out ε-MSE  mean over (x_0, t, ε) of ‖ε − ε̂(sqrt(ᾱ_t)x_0 + sqrt(1−ᾱ_t)ε, t)‖² / d.

    Each image of ``split`` is used ``repeats`` times with t ~ U{0, …, T−1} and ε ~ N(0, I)
    drawn from ``seed``, so every predictor sees the same draws and the numbers are comparable
    (ε̂ = 0 scores ≈ 1). Takes an EpsModel (its ``.net`` is evaluated) or any ``net(x_t, t)``.
    """
    net = model_or_net.net if isinstance(model_or_net, EpsModel) else model_or_net
    sched = model_or_net.schedule if isinstance(model_or_net, EpsModel) else schedule()
    x0 = load_data(split)[0].repeat(repeats, 1, 1, 1)
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, sched.T, (len(x0),), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    ac = sched.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
    x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * eps
    total = 0.0
    for i in range(0, len(x0), batch_size):
        sl = slice(i, i + batch_size)
        total += (net(x_t[sl], t[sl].float()) - eps[sl]).pow(2).sum().item()
    return total / eps.numel()


# --- training ---------------------------------------------------------------------------------


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


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

    Minimises ‖ε − ε_θ(sqrt(ᾱ_t)x_0 + sqrt(1−ᾱ_t)ε, t)‖²/d with t ~ U{0, …, T−1}. The EMA is
    θ̄ ← d·θ̄ + (1 − d)·θ with d = min(ema_decay, (1 + k)/(10 + k)) at step k, so that short runs
    are not dominated by the initial weights.
    """
    from tqdm.auto import tqdm

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = load_data("train")[0]
    ac = schedule().alphas_cumprod.float()
    T = len(ac)

    net = UNet(**UNET_CONFIG)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: _lr_factor(k, steps, warmup))

    start = time.perf_counter()
    bar = tqdm(range(steps), disable=not progress, desc="digits", smoothing=0.05)
    running = None
    for k in bar:
        x0 = x[torch.randint(0, len(x), (batch_size,), generator=g)]
        t = torch.randint(0, T, (batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = ac[t].view(-1, 1, 1, 1)
        loss = (net(a.sqrt() * x0 + (1 - a).sqrt() * eps, t.float()) - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        d = min(ema_decay, (1 + k) / (10 + k))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - d)
        running = loss.item() if running is None else 0.99 * running + 0.01 * loss.item()
        if k % 50 == 0:
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr_sched.get_last_lr()[0]:.2e}")
    ema.eval()
    elapsed = time.perf_counter() - start

    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        ckpt = {
            "config": UNET_CONFIG,
            "state_dict": {k: v.float().contiguous() for k, v in ema.state_dict().items()},
            "train": {
                "steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup,
                "weight_decay": weight_decay, "ema_decay": ema_decay, "seed": seed,
                "seconds": round(elapsed, 1),
            },
        }  # fmt: skip
        torch.save(ckpt, out)
    if progress:
        print(f"trained {steps} steps in {elapsed:.0f} s ({steps / elapsed:.2f} steps/s)")
    return ema


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m odediff.zoo.digits",
        description="Train the digits ε-prediction UNet on the CPU and save its EMA weights.",
    )
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps (default: 4000)")
    p.add_argument("--out", type=Path, required=True, help="where to save the checkpoint (.pt)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    # one thread: on a shared 2-core machine two OpenMP threads competing with other jobs ran
    # 1-10x slower than one; unloaded, two are only ~1.6x faster
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    net = train(
        args.steps, batch_size=args.batch_size, lr=args.lr, out=args.out, seed=args.seed,
        threads=args.threads, progress=not args.no_progress,
    )  # fmt: skip
    print(f"saved {args.out}; held-out ε-MSE {denoising_loss(net):.4f}")


if __name__ == "__main__":
    main()
