"""Check a zoo network: held-out ε-MSE against the Gaussian baselines, and the quality of its samples.

For every network (in ε-space, whatever its prediction type; :func:`odediff.zoo.training.eps_mse`,
10 draws of (t, ε) per held-out image, seed 0): the network, the per-pixel Gaussian, the
full-covariance Gaussian (Wiener filter) and ε̂ = 0. Then ``n`` samples (noise from seed 0, ``heun``
at 51 NFE by default):

- digits networks: the digits classifier's mean max-probability and its class histogram, and the
  Fréchet distance in its 64-d features (:func:`odediff.quality.digits_frechet`) to the 360 held-out
  digits; as a floor, the same for ``n`` real train digits;
- ``photos``: the Fréchet distance in the 64-d patch features (:mod:`odediff.zoo.patch_features`) of
  the samples to the held-out patches and to the train patches, of held-out to train patches, of
  ``n`` real train patches to all of them (the floor at this sample size), and of held-out patches
  after a blur or added noise (what the features are sensitive to); the same in the 256-d pixel
  space (``pixels_…``).

With ``--out``, PNG grids of the first 100 samples and of 100 held-out images.

    python -m odediff.zoo.evaluate digits-dit --out out/zoo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import load, training


def data(name: str) -> tuple[Tensor, Tensor]:
    """(train, held-out) images of a zoo network's data set."""
    if name.startswith("digits"):
        from .digits import load_data

        return load_data("train")[0], load_data("test")[0]
    if name == "photos":
        from .photos import load_patches

        return load_patches("train")[0], load_patches("test")[0]
    raise ValueError(f"name: no data set known for {name!r}")


def heldout_losses(name: str, repeats: int = 10, seed: int = 0) -> dict[str, float]:
    """Held-out ε-MSE of the network and of the baselines, on the same draws."""
    model = load(name)
    x_train, x_test = data(name)
    s = model.schedule
    kw = dict(repeats=repeats, seed=seed)
    return {
        "net": training.eps_mse(model, x_test, **kw),
        "gauss_diag": training.eps_mse(training.GaussianPredictor(x_train, s), x_test, s, **kw),
        "gauss_full": training.eps_mse(
            training.GaussianPredictor(x_train, s, full_covariance=True), x_test, s, **kw
        ),
        "zero": training.eps_mse(lambda x_t, t: torch.zeros_like(x_t), x_test, s, **kw),
    }


def _blur(x: Tensor) -> Tensor:
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None]) / 16
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.view(1, 1, 3, 3))


@torch.no_grad()
def sample_quality(
    name: str,
    n: int = 500,
    solver: str = "heun",
    nfe: int = 51,
    seed: int = 0,
    out: Path | None = None,
    grid: str | None = None,
) -> dict[str, Any]:
    """Quality numbers of ``n`` samples (see the module docstring)."""
    import odediff

    from ..quality import digits_frechet, frechet_distance

    model = load(name)
    x_train, x_test = data(name)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    x = odediff.sample(model, shape=(n, *model.sample_shape), solver=solver, nfe=nfe, grid=grid, generator=g)
    res: dict[str, Any] = {
        "n": n,
        "solver": solver,
        "nfe": nfe,
        "grid": grid,
        "sample_seconds": round(time.perf_counter() - start, 1),
    }
    res["finite"] = bool(torch.isfinite(x).all())
    res["outside_[-1.05,1.05]"] = float((x.abs() > 1.05).float().mean())
    x = x.float().clamp(-1, 1)
    if name.startswith("digits"):
        from .classifier import load_classifier

        clf = load_classifier()
        p = clf(x).softmax(1)
        ref = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:n]]
        res["mean_max_prob"] = p.max(1).values.mean().item()
        res["mean_max_prob_heldout"] = clf(x_test).softmax(1).max(1).values.mean().item()
        res["class_counts"] = p.argmax(1).bincount(minlength=10).tolist()
        res |= {f"samples_vs_heldout_{k}": v for k, v in digits_frechet(x, x_test).items()}
        res |= {f"train{len(ref)}_vs_heldout_{k}": v for k, v in digits_frechet(ref, x_test).items()}
    else:
        from .patch_features import features

        f_x, f_test, f_train = features(x), features(x_test), features(x_train)
        noise = torch.randn(x_test.shape, generator=torch.Generator().manual_seed(1))
        half = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:n]
        res |= {
            "samples_vs_heldout": frechet_distance(f_x, f_test),
            "samples_vs_train": frechet_distance(f_x, f_train),
            "heldout_vs_train": frechet_distance(f_test, f_train),
            f"train{n}_vs_train": frechet_distance(f_train[half], f_train),
            "heldout_blurred_vs_heldout": frechet_distance(features(_blur(x_test)), f_test),
            "heldout_noise0.05_vs_heldout": frechet_distance(
                features((x_test + 0.05 * noise).clamp(-1, 1)), f_test
            ),
            "heldout_noise0.1_vs_heldout": frechet_distance(
                features((x_test + 0.1 * noise).clamp(-1, 1)), f_test
            ),
            "pixels_samples_vs_heldout": frechet_distance(x, x_test),
            "pixels_samples_vs_train": frechet_distance(x, x_train),
            "pixels_heldout_vs_train": frechet_distance(x_test, x_train),
            f"pixels_train{n}_vs_train": frechet_distance(x_train[half], x_train),
            "sample_std": x.std().item(),
            "heldout_std": x_test.std().item(),
            "train_std": x_train.std().item(),
        }
    if out is not None:
        from ..viz import save_grid

        out.mkdir(parents=True, exist_ok=True)
        scale = 4 if model.sample_shape[-1] <= 8 else 3
        tag = f"{solver}{nfe}" + (f"_{grid}" if grid else "")
        save_grid(x[:100], str(out / f"{name}_samples_{tag}.png"), nrow=10, scale=scale)
        save_grid(
            x_test[:: max(1, len(x_test) // 100)][:100],
            str(out / f"{name}_heldout.png"),
            nrow=10,
            scale=scale,
        )
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m odediff.zoo.evaluate",
        description="Held-out ε-MSE vs Gaussian baselines and sample quality of a zoo network.",
    )
    p.add_argument("name", help="zoo network, e.g. digits, digits-seed1, digits-dit, photos")
    p.add_argument("--n", type=int, default=None, help="samples (default: 500 digits, 1000 photos)")
    p.add_argument("--solver", default="heun")
    p.add_argument("--nfe", type=int, default=51)
    p.add_argument("--grid", default=None, help="σ grid (default: odediff's default, auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="folder for sample grids (PNG)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.n or (1000 if args.name == "photos" else 500)
    res = {"name": args.name, "heldout_eps_mse": heldout_losses(args.name)}
    res["samples"] = sample_quality(args.name, n, args.solver, args.nfe, args.seed, args.out, args.grid)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
