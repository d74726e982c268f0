"""A small diffusion transformer (DiT, Peebles & Xie 2023) on 2×2 patches of the 8×8 digits, trained
with v-prediction on the cosine schedule (``digits-dit``).

Network: the image (C, H, W) is cut into (H/p)·(W/p) patches of p×p pixels (p = 2: 16 tokens of 4
pixels), each embedded linearly, plus a learned position embedding. The timestep enters through
c = MLP(sinusoid(t)) and adaptive layer norm with zero-initialised gates (adaLN-Zero): in each block

    (β₁, γ₁, α₁, β₂, γ₂, α₂) = W·SiLU(c),
    h ← h + α₁ ⊙ Attention(LN(h)·(1 + γ₁) + β₁),    h ← h + α₂ ⊙ MLP(LN(h)·(1 + γ₂) + β₂),

and a final adaLN + linear map back to p×p·C values per token, un-patchified to (C, H, W). Every
block starts as the identity and the output as 0.

Data: :func:`odediff.zoo.digits.load_data` (train split, 1437 images, x = pixel/8 − 1 ∈ [−1, 1]).
Training by the zoo's loop (:mod:`odediff.zoo.training`) on Nichol & Dhariwal's cosine schedule
(``DiscreteSchedule.cosine(1000)``, σ_max ≈ 2·10⁴) with the v target: a = sqrt(ᾱ_t), s = sqrt(1 − ᾱ_t),

    x_t = a·x_0 + s·ε,    v = a·ε − s·x_0,    loss = ‖v − v_θ(x_t, t)‖² / d,

(so ε̂ = a·v̂ + s·x_t; at σ_max, where x_t is nearly pure noise, v ≈ −x_0 stays well-posed where ε
would not be).

Sampling: σ_max ≈ 2·10⁴ is far above the data scale, and grids uniform or quadratic in t jump from
σ_max straight to σ ≈ 8–15 (``quadratic_t``, the default from 7 intervals on, at 25: 20291 → 7.8). Euler
(DDIM) and Adams take that step exactly enough, but Heun's corrector multiplies the change of ε
over the interval by Δσ/2 ≈ 10⁴ and diverges (72 % of pixels out of [−1, 1] at 51 NFE); on grids
geometric in σ (``karras``, ``log_snr``) Heun is fine. Reproduce the embedded weights with

    python -m odediff.zoo.dit --out odediff/zoo/weights/digits-dit.pt
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import EpsModel
from ..schedules import DiscreteSchedule
from . import training
from .digits import load_data
from .unet import timestep_embedding

__all__ = ["DIT_CONFIG", "WEIGHTS", "DiT", "DiTBlock", "load_dit_model", "schedule", "train"]

WEIGHTS = Path(__file__).parent / "weights" / "digits-dit.pt"
SAMPLE_SHAPE = (1, 8, 8)
DIT_CONFIG = {"channels": 1, "size": 8, "patch": 2, "width": 96, "depth": 4, "heads": 4, "mlp_ratio": 4}
PREDICTION = "v_prediction"


def schedule() -> DiscreteSchedule:
    """The training schedule: the cosine schedule with T = 1000."""
    return DiscreteSchedule.cosine(1000)


def _modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return h * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning on c (see the module docstring)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width: {width} is not divisible by heads = {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * width, width),
        )
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)  # gates α = 0: the block starts as the identity
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        b, n, w = h.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=1)
        q, k, v = self.qkv(_modulate(self.norm1(h), shift1, scale1)).view(b, n, 3, self.heads, -1).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = h + gate1[:, None] * self.proj(a.transpose(1, 2).reshape(b, n, w))
        return h + gate2[:, None] * self.mlp(_modulate(self.norm2(h), shift2, scale2))


class DiT(nn.Module):
    """f_θ(x_t, t): ``forward(x, t)`` with x of shape (batch, channels, size, size) and real t of shape
    (batch,) (a scalar is broadcast); the output has the shape of x. ``size`` must be divisible by
    ``patch``."""

    def __init__(
        self,
        channels: int = 1,
        size: int = 8,
        patch: int = 2,
        width: int = 96,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        if size % patch:
            raise ValueError(f"size: {size} is not divisible by patch = {patch}")
        self.channels, self.size, self.patch, self.width = channels, size, patch, width
        self.grid = size // patch
        self.embed = nn.Linear(channels * patch * patch, width)
        self.pos = nn.Parameter(0.02 * torch.randn(1, self.grid * self.grid, width))
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, channels * patch * patch)
        for layer in (self.ada, self.out):  # the output starts as 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def patchify(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, (H/p)(W/p), C·p·p), tokens in row-major order of the patch grid."""
        b, c, p, g = x.shape[0], self.channels, self.patch, self.grid
        return x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """The inverse of :meth:`patchify`."""
        b, c, p, g = tokens.shape[0], self.channels, self.patch, self.grid
        return tokens.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * p, g * p)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        c = self.time_mlp(timestep_embedding(t, self.width).to(x.dtype))
        h = self.embed(self.patchify(x)) + self.pos
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada(F.silu(c)).chunk(2, dim=1)
        return self.unpatchify(self.out(_modulate(self.norm(h), shift, scale)))


def load_dit_model(path: str | Path | None = None, name: str = "digits-dit") -> EpsModel:
    """The trained digits DiT as an :class:`~odediff.EpsModel` (v-prediction, cosine schedule).

    The network is in eval mode with gradients off; ``model.sample_shape == (1, 8, 8)`` and
    ``model.name == name``. ``path`` defaults to the embedded weights.
    """
    path = WEIGHTS if path is None else path
    return training.load_model(path, DiT, schedule(), PREDICTION, SAMPLE_SHAPE, name)


def train(
    steps: int = 8000,
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
    """Train the DiT on the digits train split (v target, cosine schedule); return the EMA network
    (and save it to ``out`` with its config and the training metadata)."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = DiT(**DIT_CONFIG)
    ema, meta = training.train_denoiser(
        net, load_data("train")[0], schedule(), PREDICTION, steps=steps, batch_size=batch_size, lr=lr,
        warmup=warmup, weight_decay=weight_decay, ema_decay=ema_decay, seed=seed, progress=progress,
        desc="digits-dit",
    )  # fmt: skip
    if out is not None:
        meta = {**meta, "schedule": "cosine(1000)", "prediction": PREDICTION}
        training.save_checkpoint(out, DIT_CONFIG, ema, meta)
    return ema


def main(argv: list[str] | None = None) -> None:
    net, args = training.train_from_command_line(
        "python -m odediff.zoo.dit",
        "Train the digits v-prediction DiT (cosine schedule) on the CPU; save its EMA weights.",
        train,
        argv,
        steps=8000,
    )
    model = EpsModel(net, schedule(), prediction=PREDICTION)
    test = load_data("test")[0]
    print(f"saved {args.out}; held-out ε-MSE {training.eps_mse(model, test):.4f}")


if __name__ == "__main__":
    main()
