"""A small CNN classifier of 8×8 digits whose penultimate layer is the feature space of the
Fréchet distance in :mod:`odediff.quality` (the role Inception-v3 plays for FID).

Data: :func:`odediff.zoo.digits.load_data` — x = pixel/8 − 1 ∈ [−1, 1], shape (N, 1, 8, 8); trained
on the train split only (1437 images), accuracy measured on the held-out test split (360).

Network: conv3×3(1→32) → ReLU → conv3×3(32→64) → ReLU → maxpool 2 → conv3×3(64→64) → ReLU →
maxpool 2 → flatten (256) → linear(256→64) → ReLU  =: features φ(x) ∈ ℝ⁶⁴ → linear(64→10) logits.

Training: cross-entropy, AdamW with cosine decay, random shifts of ±1 pixel (zero-padding at the
background value −1), dropout before the last layer, seed 0, one CPU thread. Reproduce the embedded
weights with

    python -m odediff.zoo.classifier --out odediff/zoo/weights/classifier.pt
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .digits import load_data

__all__ = ["FEATURE_DIM", "WEIGHTS", "DigitsClassifier", "accuracy", "features", "load_classifier", "train"]

WEIGHTS = Path(__file__).parent / "weights" / "classifier.pt"
FEATURE_DIM = 64


class DigitsClassifier(nn.Module):
    """logits = W·φ(x) + b, with φ(x) the 64-dimensional penultimate activations."""

    def __init__(self, feature_dim: int = FEATURE_DIM, dropout: float = 0.3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 2 * 2, feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: Tensor) -> Tensor:
        """φ(x): (N, 1, 8, 8) in [−1, 1] → (N, feature_dim)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.features(x)))


def _shift(x: Tensor, g: torch.Generator) -> Tensor:
    """Each image translated by (dy, dx) ∈ {−1, 0, 1}², the uncovered border filled with −1."""
    n = len(x)
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2, n), generator=g)
    rows = (dy[:, None] + torch.arange(8)[None])[:, :, None].expand(n, 8, 8)
    cols = (dx[:, None] + torch.arange(8)[None])[:, None, :].expand(n, 8, 8)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


def train(
    epochs: int = 40,
    *,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-3,
    seed: int = 0,
    threads: int | None = 1,
    out: str | Path | None = None,
    progress: bool = True,
) -> DigitsClassifier:
    """Train on the train split (minimising cross-entropy); return the network in eval mode.

    The learning rate follows lr·½(1 + cos(πk/K)) over the K optimizer steps. Deterministic
    given ``seed`` (and the thread count). Saves ``{"config", "state_dict", "train"}`` to ``out``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = load_data("train")
    net = DigitsClassifier()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    start = time.perf_counter()
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(net(_shift(x[idx], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if progress and (epoch % 10 == 9 or epoch == epochs - 1):
            print(f"epoch {epoch + 1}/{epochs}: train loss {total / len(x):.4f}")
    net.eval()
    elapsed = time.perf_counter() - start
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        ckpt = {
            "config": {"feature_dim": net.head.in_features},
            "state_dict": net.state_dict(),
            "train": {
                "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                "seed": seed, "seconds": round(elapsed, 1), "test_accuracy": accuracy(net),
            },
        }  # fmt: skip
        torch.save(ckpt, out)
    if progress:
        print(f"trained {epochs} epochs in {elapsed:.1f} s")
    return net


@torch.no_grad()
def accuracy(net: DigitsClassifier | None = None, split: str = "test") -> float:
    """Fraction of ``split`` (default: the held-out test split) classified correctly."""
    net = load_classifier() if net is None else net
    x, y = load_data(split)
    return (net(x).argmax(1) == y).float().mean().item()


def load_classifier(path: str | Path | None = None) -> DigitsClassifier:
    """The classifier in eval mode with gradients off; ``path`` defaults to the embedded weights."""
    if path is None:
        return _embedded()
    return _load(Path(path))


def _load(path: Path) -> DigitsClassifier:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = DigitsClassifier(**ckpt["config"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval().requires_grad_(False)


@functools.cache
def _embedded() -> DigitsClassifier:
    return _load(WEIGHTS)


@torch.no_grad()
def features(x: Tensor, net: DigitsClassifier | None = None, batch_size: int = 2048) -> Tensor:
    """φ(x) of the embedded classifier (or ``net``): (N, 1, 8, 8) in [−1, 1] → (N, 64), float32."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise ValueError(f"x: expected digits of shape (N, 1, 8, 8), got {tuple(x.shape)}")
    net = load_classifier() if net is None else net
    x = x.detach().float().cpu()
    return torch.cat([net.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m odediff.zoo.classifier",
        description="Train the 8×8 digits classifier (feature space of the Fréchet distance) on the CPU.",
    )
    p.add_argument("--out", type=Path, required=True, help="where to save the checkpoint (.pt)")
    p.add_argument("--epochs", type=int, default=40, help="passes over the train split (default: 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = p.parse_args(argv)
    net = train(args.epochs, seed=args.seed, threads=args.threads, out=args.out)
    print(f"saved {args.out}; held-out accuracy {accuracy(net):.4f}")


if __name__ == "__main__":
    main()
