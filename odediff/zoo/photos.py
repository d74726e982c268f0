"""A natural-image model: an ε-prediction UNet on 16×16 greyscale patches of real photographs, trained on
Stable Diffusion's scaled-linear schedule (``photos``).

Data (:func:`load_patches`): the photographs bundled with scikit-image (no download), converted to
grey (``skimage.color.rgb2gray``, ITU-R 709 luma), reduced 2× by averaging 2×2 blocks (so a patch
holds more structure than a near-flat 16×16 crop at full resolution), scaled to x = 2·g − 1 ∈ [−1, 1]
and cut on a fixed grid: 16×16 patches every 8 pixels (half-overlapping), top-left anchored, so the
patches are deterministic (no random crops). The photos are split *by photo*, never by patch:

    train (9):     astronaut, camera, coffee, rocket, moon, brick, grass, gravel, stereo_motorcycle (left)
    held out (3):  chelsea (a cat), clock, coins

(an animal's face and fur, and objects, each with train photos of a like kind; the three textures
brick, grass and gravel are all in train). ``cat`` is the same image as ``chelsea`` and is not used;
nor are the scientific images (hubble_deep_field, retina, immunohistochemistry, cell, …), the
synthetic ones and the text scans. That is 8,955 train and 1,258 held-out patches. Training augments
with random horizontal flips (photographs are nearly mirror-symmetric; they are not upside-down
symmetric, so no vertical flips).

Training by the zoo's loop (:mod:`odediff.zoo.training`) on Stable Diffusion's schedule
(``DiscreteSchedule.scaled_linear(1000)``: β_t = linspace(sqrt 0.00085, sqrt 0.012, T)², σ_max ≈ 14.6)
with a = sqrt(ᾱ_t), s = sqrt(1 − ᾱ_t):

    x_t = a·x_0 + s·ε,    loss = ‖ε − ε_θ(x_t, t)‖² / d,

the UNet of :mod:`odediff.zoo.unet` with three resolution levels 16×16 → 8×8 → 4×4. The Fréchet
distance of its samples is measured in the features of :mod:`odediff.zoo.patch_features`, trained
on the same train patches. Reproduce the embedded weights with

    python -m odediff.zoo.photos --out odediff/zoo/weights/photos.pt
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import EpsModel
from ..schedules import DiscreteSchedule
from . import training
from .unet import UNet

__all__ = [
    "PATCH",
    "PHOTOS",
    "UNET_CONFIG",
    "WEIGHTS",
    "flip",
    "load_patches",
    "load_photos_model",
    "patch_positions",
    "schedule",
    "train",
]

WEIGHTS = Path(__file__).parent / "weights" / "photos.pt"
PATCH, STRIDE, REDUCE = 16, 8, 2
SAMPLE_SHAPE = (1, PATCH, PATCH)
UNET_CONFIG = {"channels": 1, "width": 32, "mults": (1, 2, 2)}
PHOTOS: dict[str, tuple[str, ...]] = {
    "train": (
        "astronaut",
        "camera",
        "coffee",
        "rocket",
        "moon",
        "brick",
        "grass",
        "gravel",
        "stereo_motorcycle",
    ),
    "test": ("chelsea", "clock", "coins"),
}

Split = Literal["train", "test"]


def schedule() -> DiscreteSchedule:
    """The training schedule: Stable Diffusion's scaled-linear β, T = 1000 (σ_max ≈ 14.6)."""
    return DiscreteSchedule.scaled_linear(1000)


def load_photo(name: str) -> Tensor:
    """One bundled photo as grey x ∈ [−1, 1], reduced 2× by 2×2 averaging: shape (H/2, W/2), float32."""
    import numpy as np
    import skimage.data
    from skimage.color import rgb2gray

    img = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":
        img = img[0]  # (left, right, disparity): the left view
    g = rgb2gray(img) if img.ndim == 3 else img.astype(np.float64) / 255.0
    x = torch.from_numpy(np.ascontiguousarray(g)).float()[None, None]
    return (2 * F.avg_pool2d(x, REDUCE) - 1)[0, 0]


@functools.cache
def _patches(split: Split) -> tuple[Tensor, Tensor, Tensor]:
    xs, ids, pos = [], [], []
    for i, name in enumerate(PHOTOS[split]):
        grid = load_photo(name).unfold(0, PATCH, STRIDE).unfold(1, PATCH, STRIDE)  # (rows, cols, P, P)
        rows, cols = grid.shape[:2]
        xs.append(grid.reshape(-1, 1, PATCH, PATCH))
        ids.append(torch.full((rows * cols,), i))
        r, c = torch.meshgrid(torch.arange(rows) * STRIDE, torch.arange(cols) * STRIDE, indexing="ij")
        pos.append(torch.stack([r.flatten(), c.flatten()], 1))
    return torch.cat(xs).contiguous(), torch.cat(ids), torch.cat(pos)


def load_patches(split: Split = "train") -> tuple[Tensor, Tensor]:
    """Patches x ∈ [−1, 1] of shape (N, 1, 16, 16) (float32) and the index (N,) of the photo in
    ``PHOTOS[split]`` each came from; deterministic (a fixed grid, see the module docstring)."""
    if split not in PHOTOS:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    x, ids, _ = _patches(split)
    return x.clone(), ids.clone()


def patch_positions(split: Split = "train") -> Tensor:
    """(N, 2): the (row, column) of each patch's top-left pixel in its (2× reduced) photo, in the
    order of :func:`load_patches`."""
    if split not in PHOTOS:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    return _patches(split)[2].clone()


def flip(x: Tensor, g: torch.Generator) -> Tensor:
    """Each image mirrored left-right with probability 1/2."""
    mask = torch.rand(len(x), generator=g) < 0.5
    return torch.where(mask.view(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)


# --- the trained model ------------------------------------------------------------------------


def load_photos_model(path: str | Path | None = None, name: str = "photos") -> EpsModel:
    """The trained photo-patch UNet as an :class:`~odediff.EpsModel` (ε-prediction, scaled-linear).

    The network is in eval mode with gradients off; ``model.sample_shape == (1, 16, 16)`` and
    ``model.name == name``. ``path`` defaults to the embedded weights.
    """
    path = WEIGHTS if path is None else path
    return training.load_model(path, UNet, schedule(), "epsilon", SAMPLE_SHAPE, name)


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
    """Train the UNet on the train patches (with random flips); return the EMA network (and save it
    to ``out`` with its config and the training metadata)."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = UNet(**UNET_CONFIG)
    ema, meta = training.train_denoiser(
        net, load_patches("train")[0], schedule(), "epsilon", steps=steps, batch_size=batch_size, lr=lr,
        warmup=warmup, weight_decay=weight_decay, ema_decay=ema_decay, seed=seed, augment=flip,
        progress=progress, desc="photos",
    )  # fmt: skip
    if out is not None:
        meta = {**meta, "schedule": "scaled_linear(1000)", "prediction": "epsilon", "augment": "flip-lr"}
        training.save_checkpoint(out, UNET_CONFIG, ema, meta)
    return ema


def main(argv: list[str] | None = None) -> None:
    net, args = training.train_from_command_line(
        "python -m odediff.zoo.photos",
        "Train the 16×16 photo-patch ε-prediction UNet on the CPU and save its EMA weights.",
        train,
        argv,
        steps=4000,
    )
    model = EpsModel(net, schedule(), prediction="epsilon")
    print(f"saved {args.out}; held-out ε-MSE {training.eps_mse(model, load_patches('test')[0]):.4f}")


if __name__ == "__main__":
    main()
