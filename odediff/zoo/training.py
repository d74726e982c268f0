"""The one training loop of the zoo's networks, and the held-out denoising loss they are judged by.

Every zoo network is trained the same way (DDPM, Ho et al. 2020) on a discrete schedule ᾱ_0 > … >
ᾱ_{T−1}: draw x_0 from the train data, t ~ U{0, …, T−1}, ε ~ N(0, I), and with a = sqrt(ᾱ_t),
s = sqrt(1 − ᾱ_t)

    x_t = a·x_0 + s·ε,    loss = ‖y − f_θ(x_t, t)‖² / d,

where the target y is ε (``"epsilon"``), x_0 (``"sample"``) or v = a·ε − s·x_0 (``"v_prediction"``,
Salimans & Ho 2022). AdamW with linear warm-up and cosine decay; an exponential moving average of the
weights, θ̄ ← d·θ̄ + (1 − d)·θ with d = min(ema_decay, (1 + k)/(10 + k)) at step k, is what is saved.

Whatever the prediction type, networks are compared in ε-space: an output f is converted by

    x_0-prediction:  ε̂ = (x_t − a·x̂_0) / s,        v-prediction:  ε̂ = a·v̂ + s·x_t,

and the held-out ε-MSE (:func:`eps_mse`) of a network is set against the best *Gaussian* predictor
(:class:`GaussianPredictor`), the exact E[ε | x_t] if the data were Gaussian.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models import EpsModel
from ..schedules import DiscreteSchedule

__all__ = [
    "GaussianPredictor",
    "eps_mse",
    "lr_factor",
    "output_to_eps",
    "save_checkpoint",
    "target",
    "train_denoiser",
]

Augment = Callable[[Tensor, torch.Generator], Tensor]


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _check_prediction(prediction: str) -> None:
    if prediction not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"prediction: expected 'epsilon', 'sample' or 'v_prediction', got {prediction!r}")


def target(x0: Tensor, eps: Tensor, ac: Tensor, prediction: str) -> Tensor:
    """The regression target: ε, x_0, or v = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·x_0 (ᾱ broadcast against x_0)."""
    _check_prediction(prediction)
    if prediction == "epsilon":
        return eps
    if prediction == "sample":
        return x0
    return ac.sqrt() * eps - (1 - ac).sqrt() * x0


def output_to_eps(out: Tensor, x_t: Tensor, ac: Tensor, prediction: str) -> Tensor:
    """A network output at x_t = sqrt(ᾱ)x_0 + sqrt(1−ᾱ)ε as ε̂ (ᾱ per sample, broadcast against x_t).

    x_0-prediction: ε̂ = (x_t − sqrt(ᾱ)·x̂_0)/sqrt(1−ᾱ);  v-prediction: ε̂ = sqrt(ᾱ)·v̂ + sqrt(1−ᾱ)·x_t.
    (The per-sample form of :func:`odediff.models.to_eps`, which takes one σ.)
    """
    _check_prediction(prediction)
    if prediction == "epsilon":
        return out
    if prediction == "sample":
        return (x_t - ac.sqrt() * out) / (1 - ac).sqrt()
    return ac.sqrt() * out + (1 - ac).sqrt() * x_t


# --- evaluation -------------------------------------------------------------------------------


class GaussianPredictor:
    """The best ε̂ if the data were Gaussian, fitted to ``x`` (N, *shape) — a linear function of x_t.

    With a = sqrt(ᾱ_t), s = sqrt(1 − ᾱ_t) and x_0 ~ N(μ, Σ):  ε̂ = E[ε | x_t] = s·(a²Σ + s²I)⁻¹(x_t − a·μ).
    By default every pixel is independent, Σ = diag(v) (μ, v per pixel; the baseline the digits UNet
    was first judged by): ε̂ = s·(x_t − a·μ)/(a²·v + s²). With ``full_covariance`` Σ is the sample
    covariance (Σ = U diag(λ) Uᵀ: ε̂ = U diag(s/(a²λ + s²)) Uᵀ (x_t − a·μ)), the Wiener filter — the
    stronger baseline where neighbouring pixels are correlated, as in photos. Accepts real t like a
    network; float64 inside.
    """

    def __init__(self, x: Tensor, sched: DiscreteSchedule, *, full_covariance: bool = False) -> None:
        x = x.double()
        self.shape = tuple(x.shape[1:])
        self.mean = x.mean(0)
        self.var = x.var(0, unbiased=False)
        self.schedule = sched
        self.full_covariance = full_covariance
        if full_covariance:
            flat = x.flatten(1) - self.mean.flatten()
            lam, u = torch.linalg.eigh(flat.T @ flat / len(flat))
            self.eigenvalues, self.eigenvectors = lam.clamp(min=0), u

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        ac = self.schedule.alpha_cumprod_of_sigma(self.schedule.sigma_of_t(t.cpu()))
        a, s = ac.sqrt().view(-1, *[1] * len(self.shape)), (1 - ac).sqrt().view(-1, *[1] * len(self.shape))
        r = x_t.double().cpu() - a * self.mean
        if not self.full_covariance:
            return (s * r / (a * a * self.var + s * s)).to(x_t)
        a, s = a.flatten(), s.flatten()
        gain = s[:, None] / (a[:, None] ** 2 * self.eigenvalues[None] + s[:, None] ** 2)  # (n, d)
        coef = (r.flatten(1) @ self.eigenvectors) * gain
        return (coef @ self.eigenvectors.T).view_as(r).to(x_t)


@torch.no_grad()
def eps_mse(
    model_or_net: EpsModel | Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    sched: DiscreteSchedule | None = None,
    *,
    prediction: str | None = None,
    seed: int = 0,
    repeats: int = 10,
    batch_size: int = 1024,
) -> float:
    """ε-MSE  mean over (x_0, t, ε) of ‖ε − ε̂(sqrt(ᾱ_t)x_0 + sqrt(1−ᾱ_t)ε, t)‖² / d on the data ``x0``.

    Each image is used ``repeats`` times with t ~ U{0, …, T−1} and ε ~ N(0, I) drawn from ``seed``,
    so every predictor sees the same draws and the numbers are comparable (ε̂ = 0 scores ≈ 1). Takes an
    EpsModel (its ``.net`` is evaluated on its schedule and its output converted to ε̂ by its
    prediction type) or any ``net(x_t, t)`` (``prediction`` default "epsilon"; ``sched`` required).
    """
    if isinstance(model_or_net, EpsModel):
        net, sched = model_or_net.net, sched or model_or_net.schedule
        prediction = prediction or model_or_net.prediction
    else:
        net, prediction = model_or_net, prediction or "epsilon"
    if sched is None:
        raise ValueError("sched: required when a bare network is given")
    x0 = x0.float().repeat(repeats, *[1] * (x0.ndim - 1))
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, sched.T, (len(x0),), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    ac = sched.alphas_cumprod.float()[t].view(-1, *[1] * (x0.ndim - 1))
    x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * eps
    total = 0.0
    for i in range(0, len(x0), batch_size):
        sl = slice(i, i + batch_size)
        out = output_to_eps(net(x_t[sl], t[sl].float()), x_t[sl], ac[sl], prediction)
        total += (out - eps[sl]).pow(2).sum().item()
    return total / eps.numel()


# --- training ---------------------------------------------------------------------------------


def train_denoiser(
    net: nn.Module,
    data: Tensor,
    sched: DiscreteSchedule,
    prediction: str = "epsilon",
    *,
    steps: int = 4000,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 200,
    weight_decay: float = 0.01,
    ema_decay: float = 0.999,
    seed: int = 0,
    augment: Augment | None = None,
    progress: bool = True,
    desc: str = "train",
) -> tuple[nn.Module, dict[str, Any]]:
    """Minimise ‖y − f_θ(x_t, t)‖²/d over ``data`` (N, *shape); return (EMA network in eval mode, metadata).

    The target y is set by ``prediction`` (see :func:`target`). Per step, the batch indices, t and ε
    are drawn from a generator seeded with ``seed``, in that order, then ``augment(x_0, generator)``
    (e.g. random flips) if given. The caller seeds torch's global generator before building ``net``.
    The metadata dict holds the hyper-parameters, the wall time (``seconds``) and the process's CPU
    time (``cpu_seconds``; on a shared machine the wall time also counts other jobs).
    """
    from tqdm.auto import tqdm

    _check_prediction(prediction)
    g = torch.Generator().manual_seed(seed)
    ac = sched.alphas_cumprod.float()
    T = len(ac)
    bcast = (-1, *[1] * (data.ndim - 1))

    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, steps, warmup))

    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(range(steps), disable=not progress, desc=desc, smoothing=0.05)
    running = None
    net.train()
    for k in bar:
        x0 = data[torch.randint(0, len(data), (batch_size,), generator=g)]
        t = torch.randint(0, T, (batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        if augment is not None:
            x0 = augment(x0, g)
        a = ac[t].view(bcast)
        y = target(x0, eps, a, prediction)
        loss = (net(a.sqrt() * x0 + (1 - a).sqrt() * eps, t.float()) - y).pow(2).mean()
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
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    meta = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup,
        "weight_decay": weight_decay, "ema_decay": ema_decay, "seed": seed,
        "seconds": round(elapsed, 1), "cpu_seconds": round(cpu, 1),
    }  # fmt: skip
    if progress:
        print(f"trained {steps} steps in {elapsed:.0f} s ({steps / elapsed:.2f} steps/s)")
    return ema, meta


def save_checkpoint(out: str | Path, config: dict[str, Any], net: nn.Module, train: dict[str, Any]) -> None:
    """Save ``{"config", "state_dict" (float32, contiguous), "train"}`` to ``out`` (folders created)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.float().contiguous() for k, v in net.state_dict().items()}
    torch.save({"config": config, "state_dict": state, "train": train}, out)


def train_from_command_line(prog: str, description: str, train: Callable[..., nn.Module], argv, steps: int):
    """The training scripts' shared command line: parse it, train, return (EMA network, args)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default: {steps})")
    p.add_argument("--out", type=Path, required=True, help="where to save the checkpoint (.pt)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    # one thread: on a shared 2-core machine two OpenMP threads competing with other jobs ran
    # 1-10x slower than one; unloaded, two are only ~1.6x faster
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    net = train(
        a.steps, batch_size=a.batch_size, lr=a.lr, out=a.out, seed=a.seed, threads=a.threads,
        progress=not a.no_progress,
    )  # fmt: skip
    return net, a


def load_model(
    path, net_class, schedule: DiscreteSchedule, prediction: str, sample_shape, name: str
) -> EpsModel:
    """A zoo checkpoint (config + EMA state_dict) as an :class:`~odediff.EpsModel` with
    ``sample_shape`` and ``name``; the network in eval mode with gradients off."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = net_class(**ckpt["config"])
    net.load_state_dict(ckpt["state_dict"])
    net.eval().requires_grad_(False)
    model = EpsModel(net, schedule, prediction=prediction)
    model.sample_shape, model.name = sample_shape, name
    return model
