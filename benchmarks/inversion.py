"""Encode → decode reconstruction error vs NFE (the DDIM paper's Table 2 analogue).

x_T = encode(x_0) integrates dx̄/dσ = ε from σ = 0 to σ_max on a solver's grid, reversed;
x̂_0 = decode(x_T) integrates back on the same grid. The error ‖x̂_0 − x_0‖ (RMSE, pixels in
[−1, 1]) is the discretisation error of the two solves, which do not cancel for an ordinary
solver; a reversible solver (``odediff.SOLVERS[name].reversible``) undoes its encode exactly.

Two problems:
- digits: held-out test digits, the trained digits network (odediff.zoo.load("digits"));
- photo: skimage.data's astronaut resized to S×S RGB in [−1, 1], with a randomly initialised
  (seeded) diffusers UNet2DModel standing in for a photo model — none is trained here. As in the
  adapter tests it is made to behave like a trained ε-predictor at high noise, ε = x_t + 0.1·unet,
  so x_T stays O(1); its numbers measure how the solvers round-trip a network-shaped field, not
  the quality of a photo model.

Rows: euler (= DDIM inversion), heun, adams and every solver registered as reversible.

    python benchmarks/inversion.py [--digits 100] [--nfes 10,20,50,100,200,500]
        [--photo-nfes 10,20,50,100,200] [--out out/inversion]

Writes inversion.csv, inversion.md, inversion.png (error vs NFE, log-log) and
inversion_strip_{digits,photo}.png (originals beside reconstructions).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

import odediff
from odediff.viz import image_grid

BASE_SOLVERS = ("euler", "heun", "adams")


def solvers() -> list[str]:
    """The base solvers plus every registered reversible one."""
    rev = [name for name, s in odediff.SOLVERS.items() if getattr(s, "reversible", False)]
    return list(BASE_SOLVERS) + [r for r in rev if r not in BASE_SOLVERS]


class TrainedLike(nn.Module):
    """ε = x_t + 0.1·unet(x_t, t): at high noise a trained ε-predictor returns ≈ x_t."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return x + 0.1 * self.unet(x, t).sample


def photo_problem(size: int) -> tuple[odediff.EpsModel, Tensor]:
    """(model, image): a seeded random diffusers UNet2DModel and the astronaut, (1, 3, size, size)."""
    import diffusers
    from skimage import data
    from skimage.transform import resize

    img = resize(data.astronaut(), (size, size), anti_aliasing=True)  # float in [0, 1]
    x0 = torch.tensor(img, dtype=torch.float32).permute(2, 0, 1)[None] * 2 - 1
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=size, in_channels=3, out_channels=3, block_out_channels=(32, 64),
        layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval().requires_grad_(False)  # fmt: skip
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    return odediff.from_diffusers(TrainedLike(unet), sched), x0


def round_trip(model, x0: Tensor, solver: str, nfe: int) -> tuple[Tensor, int, int]:
    """(x̂_0, encode NFE, decode NFE), the counts from ``info.nfe``. The encoding is passed to
    decode as it comes (a tensor, or a Latent for a reversible solver)."""
    with torch.no_grad():
        z, enc = odediff.encode(model, x0, solver=solver, nfe=nfe, return_info=True)
        x, dec = odediff.decode(model, z, solver=solver, nfe=nfe, return_info=True)
    return x, enc.nfe, dec.nfe


def run(problem: str, model, x0: Tensor, names: Sequence[str], nfes: Sequence[int], bar) -> tuple[list, dict]:
    rows, recon = [], {}
    for name in names:
        for nfe in nfes:
            t0 = time.perf_counter()
            try:
                x, enc, dec = round_trip(model, x0, name, nfe)
            except ValueError as e:  # a budget this solver cannot spend: leave the cell empty
                print(f"{problem}, {name}, NFE {nfe}: skipped ({e})")
                bar.update(nfe)
                continue
            err = (x.double() - x0.double()).flatten(1)
            rmse = err.square().mean().sqrt().item()
            rows.append({
                "problem": problem, "solver": name, "nfe": nfe, "encode_nfe": enc, "decode_nfe": dec,
                "rmse": rmse, "max_abs": err.abs().max().item(),
                "psnr": 20 * math.log10(2 / rmse) if rmse > 0 else math.inf,
                "seconds": round(time.perf_counter() - t0, 2),
            })  # fmt: skip
            recon[name, nfe] = x
            bar.update(nfe)
    return rows, recon


def table(rows: list[dict], problem: str, nfes: Sequence[int]) -> str:
    out = ["| solver | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
    for name in dict.fromkeys(r["solver"] for r in rows if r["problem"] == problem):
        v = {r["nfe"]: r["rmse"] for r in rows if r["problem"] == problem and r["solver"] == name}
        out.append(f"| {name} | " + " | ".join(f"{v[k]:.3g}" if k in v else "–" for k in nfes) + " |")
    return "\n".join(out)


def plot(rows: list[dict], path: str, nfes: Sequence[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(1, len(problems), figsize=(5.5 * len(problems), 4.5), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    names = list(dict.fromkeys(r["solver"] for r in rows))
    for ax, problem in zip(axes[0], problems):
        for i, name in enumerate(names):
            pts = sorted(
                (r["nfe"], r["rmse"]) for r in rows if r["problem"] == problem and r["solver"] == name
            )
            if pts:
                # an exact round trip can reach 0 error; floor it so it shows on a log axis
                ys = [max(e, 1e-12) for _, e in pts]
                ls = "--" if getattr(odediff.SOLVERS.get(name), "reversible", False) else "-"
                label = name + (" (exact 0 drawn at 1e-12)" if min(e for _, e in pts) == 0 else "")
                ax.loglog([k for k, _ in pts], ys, ls, marker="o", ms=3, color=colors[i % 10], label=label)
        ax.set_xticks(list(nfes), [str(k) for k in nfes])
        ax.minorticks_off()
        ax.set_xlabel("NFE budget per direction (encode, then decode)")
        ax.set_ylabel("reconstruction RMSE (pixels in [−1, 1])")
        ax.set_title(problem)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def strip(x0: Tensor, recon: dict, names: Sequence[str], nfes: Sequence[int], path: str, title: str) -> None:
    """Rows: solvers; columns: the original, then its reconstruction at each NFE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["original", *(f"NFE {k}" for k in nfes)]
    fig, axes = plt.subplots(
        len(names), len(cols), figsize=(1.6 * len(cols), 1.6 * len(names) + 0.4), squeeze=False
    )
    for i, name in enumerate(names):
        for j, col in enumerate(cols):
            ax = axes[i, j]
            x = x0 if j == 0 else recon.get((name, nfes[j - 1]))
            if x is not None:
                img = image_grid(x)
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col, fontsize=9)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--digits", type=int, default=100, help="held-out digits to round-trip (default: 100)")
    p.add_argument("--nfes", default="10,20,50,100,200,500", help="NFE budgets for the digits")
    p.add_argument("--photo-nfes", default="10,20,50,100,200", help="NFE budgets for the photo")
    p.add_argument("--photo-size", type=int, default=32, help="photo side in pixels (default: 32)")
    p.add_argument("--no-photo", action="store_true", help="digits only")
    p.add_argument("--solvers", default=None, help="comma-separated solvers (default: base + reversible)")
    p.add_argument("--out", default="out/inversion", help="output folder")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from tqdm.auto import tqdm

    from odediff.zoo import load
    from odediff.zoo.digits import load_data

    nfes = [int(k) for k in a.nfes.split(",")]
    photo_nfes = [int(k) for k in a.photo_nfes.split(",")]
    names = a.solvers.split(",") if a.solvers else solvers()
    os.makedirs(a.out, exist_ok=True)
    t_start = time.perf_counter()
    digits = load_data("test")[0][: a.digits]
    problems = [(f"digits ({len(digits)} held-out)", load("digits"), digits, nfes)]
    if not a.no_photo:
        model, img = photo_problem(a.photo_size)
        problems.append((f"astronaut {a.photo_size}×{a.photo_size}, random UNet", model, img, photo_nfes))

    total = sum(len(names) * sum(ks) for *_, ks in problems)
    bar = tqdm(total=total, desc="inversion", unit="NFE")
    rows, strips = [], []
    for problem, model, x0, ks in problems:
        r, recon = run(problem, model, x0, names, ks, bar)
        rows += r
        strips.append((problem, x0, recon))
    bar.close()

    with open(os.path.join(a.out, "inversion.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    md = []
    for problem, _, _, ks in problems:
        md += [f"Reconstruction RMSE after encode → decode, {problem} (pixels in [−1, 1]):", "",
               table(rows, problem, ks), ""]  # fmt: skip
    with open(os.path.join(a.out, "inversion.md"), "w") as f:
        f.write("\n".join(md))
    plot(rows, os.path.join(a.out, "inversion.png"), sorted(set(nfes + photo_nfes)))
    shown = [k for k in nfes if k <= 100] or nfes[:3]
    for (problem, x0, recon), tag in zip(strips, ("digits", "photo")):
        strip(x0[:6], {k: v[:6] for k, v in recon.items()}, names, shown,
              os.path.join(a.out, f"inversion_strip_{tag}.png"), problem)  # fmt: skip
    print("\n".join(md))
    print(f"{time.perf_counter() - t_start:.0f} s -> {a.out}/inversion.{{csv,md,png}}, inversion_strip_*.png")


if __name__ == "__main__":
    main()
