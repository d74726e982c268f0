"""A small CNN that tells which train photo a 16×16 patch came from; its penultimate layer is the
feature space of the Fréchet distance for the ``photos`` model (the role Inception-v3 plays for FID,
and :mod:`odediff.zoo.classifier` for the digits).

Data: :func:`odediff.zoo.photos.load_patches` — x ∈ [−1, 1], shape (N, 1, 16, 16), of the train
photos only (9 photos), label = the photo's index in ``PHOTOS["train"]``. To measure how well it
generalises within a photo, the bottom band of every photo is kept out (:func:`split_mask`): the
patches of the last 3 grid rows (the bottom 32 pixels) validate, those overlapping them are
dropped, the rest (the top) train the classifier.

Network: conv3×3(1→32) → ReLU → conv3×3(32→32) → ReLU → maxpool 2 → conv3×3(32→64) → ReLU →
conv3×3(64→64) → ReLU → maxpool 2 → conv3×3(64→64) → ReLU → maxpool 2 → flatten (256) →
linear(256→64) → ReLU  =: features φ(x) ∈ ℝ⁶⁴ → linear(64→9) logits.

Why this feature space. Telling photos apart from a 16×16 window takes what distinguishes natural
image patches: grey level and contrast, edges and their orientation and sharpness, and texture
(the fine grain of gravel, the strokes of grass, the regular courses of brick, smooth skies and
skin, film grain and sensor noise) — the statistics a sampler gets wrong when it blurs, adds
noise, shifts contrast or invents structure. It is trained only on train photos (no held-out
patch, no sample, no image of another domain), without noise or blur augmentation (which would
teach it to ignore exactly those defects), with random left-right flips only, so φ is
insensitive to mirroring, as the data are. It is *not* sensitive to what the labels cannot see: a
flat patch of one photo is indistinguishable from one of another, and an alternative with no task at
all (e.g. a denoising autoencoder's bottleneck) would weigh what is easy to reconstruct (the mean,
low frequencies) rather than what tells patches apart.

Measured Fréchet distances in φ (to the 1,258 held-out patches unless said): 1,000 random train
patches to all train patches 0.5–1.0 (the floor at that sample size); held-out patches blurred
by a [1, 2, 1]² kernel 2.6, with added noise of std 0.05 / 0.1: 0.9 / 13, contrast × 0.8: 4.4,
brightness + 0.1: 5.2, pixels shuffled within each patch: 53; and the held-out photos to the train
photos 159 — the features are photo-specific (trained to tell photos apart), so a gap between
different photos dwarfs most degradations; compare samples with the *train* patches for fidelity,
as :mod:`odediff.bench.quality` does. Against all 8,955 train patches: 1,000 of them 0.97 (the
floor), blurred 36.7, noise of std 0.05 / 0.1: 5.2 / 34, contrast × 0.8: 9.8, brightness + 0.1:
30.6, the held-out photos 174.
Accuracy: 77 % on the patches it was fitted on, 54 % on the kept-out bottom bands (chance 11 %; flat
patches cannot be told apart). Training: cross-entropy, AdamW with cosine
decay, dropout before the last layer, seed 0, one CPU thread. Reproduce the embedded weights with

    python -m odediff.zoo.patch_features --out odediff/zoo/weights/patch_features.pt
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

from .photos import PATCH, PHOTOS, STRIDE, flip, load_patches, patch_positions

__all__ = [
    "FEATURE_DIM",
    "WEIGHTS",
    "PatchClassifier",
    "accuracy",
    "features",
    "load_patch_classifier",
    "split_mask",
    "train",
]

WEIGHTS = Path(__file__).parent / "weights" / "patch_features.pt"
FEATURE_DIM = 64


class PatchClassifier(nn.Module):
    """logits = W·φ(x) + b over the train photos, with φ(x) the 64-dimensional penultimate activations."""

    def __init__(
        self, feature_dim: int = FEATURE_DIM, classes: int = len(PHOTOS["train"]), dropout: float = 0.3
    ):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 2 * 2, feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, classes)

    def features(self, x: Tensor) -> Tensor:
        """φ(x): (N, 1, 16, 16) in [−1, 1] → (N, feature_dim)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.features(x)))


def split_mask(part: str) -> Tensor:
    """Boolean mask over :func:`~odediff.zoo.photos.load_patches` ("train"): the classifier's
    ``"fit"`` patches (top of each photo) or ``"val"`` patches (its last 3 grid rows); disjoint in
    pixels (the grid row between them is in neither)."""
    _, ids = load_patches("train")
    top = patch_positions("train")[:, 0]
    last = torch.zeros_like(top)
    for i in ids.unique():
        last[ids == i] = top[ids == i].max()
    if part == "val":
        return top >= last - 2 * STRIDE
    if part == "fit":
        return top + PATCH <= last - 2 * STRIDE
    raise ValueError(f"part: expected 'fit' or 'val', got {part!r}")


def train(
    epochs: int = 12,
    *,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-3,
    seed: int = 0,
    threads: int | None = 1,
    out: str | Path | None = None,
    progress: bool = True,
) -> PatchClassifier:
    """Train on the train patches (minimising cross-entropy, random flips); return it in eval mode.

    The learning rate follows lr·½(1 + cos(πk/K)) over the K optimizer steps. Deterministic
    given ``seed`` (and the thread count). Saves ``{"config", "state_dict", "train"}`` to ``out``.
    """
    from tqdm.auto import tqdm

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = load_patches("train")
    keep = split_mask("fit")
    x, y = x[keep], y[keep]
    net = PatchClassifier()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    start = time.perf_counter()
    net.train()
    for epoch in tqdm(range(epochs), disable=not progress, desc="patch-features"):
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(net(flip(x[idx], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if progress and (epoch % 4 == 3 or epoch == epochs - 1):
            print(f"epoch {epoch + 1}/{epochs}: train loss {total / len(x):.4f}")
    net.eval()
    elapsed = time.perf_counter() - start
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        ckpt = {
            "config": {"feature_dim": net.head.in_features, "classes": net.head.out_features},
            "state_dict": {k: v.float().contiguous() for k, v in net.state_dict().items()},
            "train": {
                "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                "seed": seed, "seconds": round(elapsed, 1), "fit_accuracy": accuracy(net, "fit"),
                "val_accuracy": accuracy(net, "val"),
            },
        }  # fmt: skip
        torch.save(ckpt, out)
    if progress:
        print(f"trained {epochs} epochs in {elapsed:.1f} s")
    return net


@torch.no_grad()
def accuracy(net: PatchClassifier | None = None, part: str = "val") -> float:
    """Fraction of the ``part`` patches (default: the kept-out bottom bands, see :func:`split_mask`)
    whose photo is named correctly. (The held-out photos of the ``photos`` model have no label among
    the classes.)"""
    net = load_patch_classifier() if net is None else net
    x, y = load_patches("train")
    keep = split_mask(part)
    return (net(x[keep]).argmax(1) == y[keep]).float().mean().item()


def load_patch_classifier(path: str | Path | None = None) -> PatchClassifier:
    """The classifier in eval mode with gradients off; ``path`` defaults to the embedded weights."""
    if path is None:
        return _embedded()
    return _load(Path(path))


def _load(path: Path) -> PatchClassifier:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = PatchClassifier(**ckpt["config"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval().requires_grad_(False)


@functools.cache
def _embedded() -> PatchClassifier:
    return _load(WEIGHTS)


@torch.no_grad()
def features(x: Tensor, net: PatchClassifier | None = None, batch_size: int = 2048) -> Tensor:
    """φ(x) of the embedded classifier (or ``net``): (N, 1, 16, 16) in [−1, 1] → (N, 64), float32.

    Inputs are used as given (clamp samples to [−1, 1] first, as an image would be when saved)."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, PATCH, PATCH):
        raise ValueError(f"x: expected patches of shape (N, 1, {PATCH}, {PATCH}), got {tuple(x.shape)}")
    net = load_patch_classifier() if net is None else net
    x = x.detach().float().cpu()
    return torch.cat([net.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m odediff.zoo.patch_features",
        description="Train the photo-patch classifier (feature space of the photos Fréchet distance).",
    )
    p.add_argument("--out", type=Path, required=True, help="where to save the checkpoint (.pt)")
    p.add_argument("--epochs", type=int, default=12, help="passes over the train patches (default: 12)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = p.parse_args(argv)
    net = train(args.epochs, seed=args.seed, threads=args.threads, out=args.out)
    print(
        f"saved {args.out}; accuracy {accuracy(net, 'fit'):.4f} (fit), {accuracy(net):.4f} (kept-out bands)"
    )


if __name__ == "__main__":
    main()
