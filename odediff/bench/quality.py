"""Sample quality: Fréchet distances, and the NFE-vs-quality study of the digits network.

The Fréchet distance between Gaussians fitted to two sets of vectors (FID when the vectors are
Inception features; here the features of the digits classifier in :mod:`odediff.zoo.classifier`,
or raw pixels):

    d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2})

computed in float64 with symmetric eigen-decompositions (Σ₁^{1/2} Σ₂ Σ₁^{1/2} is symmetric positive
semi-definite and has the eigenvalues of Σ₁Σ₂, so its trace square root is tr (Σ₁Σ₂)^{1/2}).
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DDPM_LABEL",
    "METHODS",
    "digits_frechet",
    "frechet_distance",
    "frechet_from_stats",
    "gaussian_stats",
    "quality_markdown",
    "quality_study",
]

ArrayLike = Tensor | np.ndarray


def _as_rows(x: ArrayLike, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim < 2 or a.shape[0] < 2:
        raise ValueError(f"{name}: expected at least 2 rows (N, ...), got shape {a.shape}")
    return a.reshape(a.shape[0], -1)


def gaussian_stats(x: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean μ and unbiased covariance Σ = (X − μ)ᵀ(X − μ)/(N − 1) of the rows of x (flattened), float64."""
    a = _as_rows(x, "x")
    return a.mean(0), np.cov(a, rowvar=False).reshape(a.shape[1], a.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, u = np.linalg.eigh((s + s.T) / 2)
    return (u * np.sqrt(np.clip(w, 0, None))) @ u.T


def frechet_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}, in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"expected means of one shape (D,) and covariances (D, D), got {mu1.shape}, {cov1.shape}, "
            f"{mu2.shape}, {cov2.shape}"
        )
    a = _psd_sqrt(cov1)
    m = a @ cov2 @ a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * cross)
    return max(d, 0.0)  # round-off can leave −1e-15 for identical sets


def frechet_distance(x: ArrayLike, y: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to the rows of x (N, ...) and y (M, ...)."""
    return frechet_from_stats(*gaussian_stats(x), *gaussian_stats(y))


def digits_frechet(samples: Tensor, reference: Tensor) -> dict[str, float]:
    """Fréchet distances of digit samples to a reference set: in the classifier's 64-d feature space
    (``fd_features``) and in the 64-d pixel space (``fd_pixels``). Samples are clamped to the data
    range [−1, 1] first, as an image would be when saved."""
    from ..zoo.classifier import features

    x = samples.detach().float().cpu().clamp(-1, 1)
    ref = reference.detach().float().cpu()
    return {
        "fd_features": frechet_distance(features(x), features(ref)),
        "fd_pixels": frechet_distance(x, ref),
    }


# --- the NFE-vs-quality study ------------------------------------------------------------------

METHODS: dict[str, dict[str, Any]] = {
    "DDIM η = 0.0": dict(solver="ddim", eta=0.0),
    "DDIM η = 0.2": dict(solver="ddim", eta=0.2),
    "DDIM η = 0.5": dict(solver="ddim", eta=0.5),
    "DDIM η = 1.0": dict(solver="ddim", eta=1.0),
    "euler (≡ DDIM η = 0)": dict(solver="euler"),
    "heun": dict(solver="heun"),
    "adams (default)": dict(solver="adams"),
}
DDPM_LABEL = "DDPM ancestral (all 1000 steps)"


def _chunks(
    model, kwargs: Mapping[str, Any], nfe: int, mine: Sequence[int], chunk: int, seed: int, shape
) -> tuple[Tensor, int]:
    """Samples for this rank's chunks, (len(mine), chunk, *shape), and the NFE counted per chunk.

    Chunk c always draws its noise x_T (and, for η > 0, the fresh noise of every step) from a
    generator seeded with (seed, c), so results do not depend on how many processes share the work
    and every method starts from the same x_T."""
    from ..api import sample

    out, counted = [], set()
    for c in mine:
        g = torch.Generator().manual_seed(seed * 1_000_003 + c)
        noise = torch.randn((chunk, *shape), generator=g)
        with torch.no_grad():
            x, info = sample(model, noise, nfe=nfe, generator=g, return_info=True, **kwargs)
        out.append(x)
        counted.add(info.nfe)
    if len(counted) > 1:
        raise RuntimeError(f"chunks spent different numbers of evaluations: {sorted(counted)}")
    x = torch.stack(out) if out else torch.zeros((0, chunk, *shape))
    return x, (counted.pop() if counted else nfe)


def quality_study(
    out_dir: str | None,
    *,
    model_name: str = "digits",
    n: int = 500,
    nfes: Iterable[int] = (10, 20, 50, 100),
    methods: Mapping[str, Mapping[str, Any]] | None = None,
    ddpm: bool = True,
    chunk: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]] | None:
    """Fréchet distances to the held-out digits (test split, 360 images) of n samples per
    (method, NFE), plus optionally DDPM ancestral sampling over all T steps (``ddim`` with η = 1
    on the timesteps T−1, …, 0), plus a floor: n real train digits.

    Work is split by chunks of ``chunk`` samples over the processes of :mod:`odediff.shard` (e.g.
    under ``torchrun``); the main process gathers, writes ``nfe_vs_quality.{csv,md,png}`` to
    ``out_dir`` (if given) and returns the rows; the others return None.
    """
    from .. import shard as sh
    from ..zoo import load
    from ..zoo.digits import load_data

    model = load(model_name)
    shape = tuple(model.sample_shape)
    if tuple(shape) != (1, 8, 8):
        raise ValueError(f"model_name: the quality study needs a digits model (1, 8, 8), got {shape}")
    if n < 2 or chunk < 1:
        raise ValueError(f"n, chunk: expected n ≥ 2 and chunk ≥ 1, got {n}, {chunk}")
    chunk = min(chunk, n)
    n_chunks = math.ceil(n / chunk)
    mine = list(sh.share(n_chunks))
    methods = METHODS if methods is None else methods
    nfes = list(nfes)
    jobs: list[tuple[str, dict[str, Any], int]] = [
        (m, dict(kw), k) for m, kw in methods.items() for k in nfes
    ]
    if ddpm:
        t_all = torch.arange(model.schedule.T - 1, -1, -1)
        jobs.append((DDPM_LABEL, dict(solver="ddim", eta=1.0, timesteps=t_all), model.schedule.T))

    reference = load_data("test")[0]
    rows: list[dict[str, Any]] = []
    main = sh.is_main()
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(k for _, _, k in jobs), desc="quality", unit="NFE")
    for label, kwargs, nfe in jobs:
        if bar is not None:
            bar.set_postfix_str(f"{label}, NFE {nfe}")
        t0 = time.perf_counter()
        x, counted = _chunks(model, kwargs, nfe, mine, chunk, seed, shape)
        seconds = time.perf_counter() - t0
        x_all = sh.gather(x)
        if main:
            x_all = x_all.reshape(-1, *shape)[:n]
            rows.append({"method": label, "nfe": counted, "n": len(x_all), "seconds": round(seconds, 2),
                         **digits_frechet(x_all, reference)})  # fmt: skip
        if bar is not None:
            bar.update(nfe)
    if bar is not None:
        bar.close()
    if not main:
        return None

    rows.append(_floor(load_data("train")[0], reference, n, seed))
    if out_dir is not None:
        _write(rows, out_dir, nfes)
    return rows


def _floor(train: Tensor, reference: Tensor, n: int, seed: int, repeats: int = 10) -> dict[str, Any]:
    """The distances of ``repeats`` random n-subsets of real train digits: their mean is the floor
    a perfect sampler would reach at this n; their SD gauges the sampling noise of one table entry
    (on the low side: subsets of one train split overlap, and the reference set is fixed)."""
    g = torch.Generator().manual_seed(seed)
    m = min(n, len(train))
    picks = [torch.randperm(len(train), generator=g)[:m] for _ in range(repeats)]
    fds = [digits_frechet(train[p], reference) for p in picks]
    row: dict[str, Any] = {"method": "real train digits", "nfe": 0, "n": m, "seconds": 0.0}
    for key in ("fd_features", "fd_pixels"):
        vals = np.array([f[key] for f in fds])
        row[key], row[key + "_sd"] = float(vals.mean()), float(vals.std(ddof=1))
    return row


def quality_markdown(rows: list[dict[str, Any]], nfes: Iterable[int], key: str = "fd_features") -> str:
    """Rows methods, columns NFE (the DDIM paper's Table 1 layout); one extra column for NFE
    values outside ``nfes`` (the 1000-step DDPM row); the real-data floor as its own row."""
    nfes = list(nfes)
    extra = sorted({r["nfe"] for r in rows if r["nfe"] not in nfes and r["nfe"] > 0})
    cols = nfes + extra
    out = ["| method | " + " | ".join(f"NFE {k}" for k in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label in dict.fromkeys(r["method"] for r in rows):
        vals = {r["nfe"]: r[key] for r in rows if r["method"] == label}
        if set(vals) == {0}:
            sd = next(r.get(key + "_sd") for r in rows if r["method"] == label)
            cells = [f"{vals[0]:.3g} ± {sd:.2g} (floor ± SD)"] + ["" for _ in cols[1:]]
        else:
            cells = [f"{vals[k]:.3g}" if k in vals else "–" for k in cols]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _write(rows: list[dict[str, Any]], out_dir: str, nfes: Sequence[int]) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "nfe_vs_quality.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    n = rows[0]["n"]
    md = [
        f"Fréchet distance to the 360 held-out digits, {n} samples per row (classifier features, 64-d):",
        "",
        quality_markdown(rows, nfes, "fd_features"),
        "",
        f"Floor: the mean over 10 random subsets of {n} real train digits; ± its SD, a low gauge of the "
        "sampling noise of one entry. Deterministic rows share their noises x_T, so their differences "
        "are less noisy than that.",
        "",
        "Fréchet distance in pixel space (64-d, pixels in [−1, 1]):",
        "",
        quality_markdown(rows, nfes, "fd_pixels"),
        "",
    ]
    with open(os.path.join(out_dir, "nfe_vs_quality.md"), "w") as f:
        f.write("\n".join(md))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    labels = [lab for lab in dict.fromkeys(r["method"] for r in rows) if lab != "real train digits"]
    colors = plt.get_cmap("tab10").colors
    for ax, key, name in zip(axes, ("fd_features", "fd_pixels"), ("classifier features", "pixels")):
        for i, label in enumerate(labels):
            pts = sorted((r["nfe"], r[key]) for r in rows if r["method"] == label)
            if len(pts) == 1:  # the DDPM row: one point, drawn as a level to compare against
                ax.axhline(pts[0][1], ls="--", color="k", lw=1, label=f"{label}: NFE {pts[0][0]}")
            else:
                ls = ":" if label.startswith("DDIM") else "-"
                ax.plot(*zip(*pts), ls, marker="o", ms=3, color=colors[i % 10], label=label)
        for r in rows:
            if r["method"] == "real train digits":
                lo, hi = r[key] - r[key + "_sd"], r[key] + r[key + "_sd"]
                ax.axhspan(lo, hi, color="0.6", alpha=0.35, label="real train digits (floor ± SD)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(nfes), [str(k) for k in nfes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("network evaluations (counted)")
        ax.set_ylabel(f"Fréchet distance ({name})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Digits network: sample quality vs NFE ({n} samples, held-out test digits)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "nfe_vs_quality.png"), dpi=120)
    plt.close(fig)
