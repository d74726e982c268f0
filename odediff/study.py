"""NFE-vs-error studies against a high-accuracy float64 reference.

The reference integrates dx̄/dσ = ε from σ_max to σ_min with SciPy's DOP853 (rtol = atol =
1e-10 by default) in float64 and then takes the final Euler step to σ = 0 that every solver
shares (design.md §1), so a solver's error is its error in solving the same problem.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .api import sample
from .integrate import CountedField
from .models import Model

__all__ = ["markdown_table", "nfe_error_rows", "plot_nfe_error", "reference_solve"]


def reference_solve(
    model: Model, noise: Tensor, rtol: float = 1e-10, atol: float = 1e-10
) -> tuple[Tensor, int]:
    """x_0 from VP noise x_T by DOP853 in float64 down to σ_min, then one Euler step to 0.

    Returns (x_0, network evaluations used)."""
    from scipy.integrate import solve_ivp

    s = model.schedule
    x = noise.detach().to(torch.float64)
    fld = CountedField(model, torch.float64)
    shape = x.shape

    def f(sigma: float, y: np.ndarray) -> np.ndarray:
        return fld(torch.from_numpy(y).view(shape), float(sigma)).double().numpy().ravel()

    y0 = (x * math.sqrt(1 + s.sigma_max**2)).numpy().ravel()
    sol = solve_ivp(f, (s.sigma_max, s.sigma_min), y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    xbar = torch.from_numpy(sol.y[:, -1].copy()).view(shape)
    x0 = xbar - s.sigma_min * fld(xbar, s.sigma_min)
    return x0.to(noise.dtype), fld.nfe


def nfe_error_rows(
    model: Model,
    noise: Tensor,
    truth: Tensor,
    methods: Mapping[str, Mapping[str, Any]],
    nfes: Iterable[int],
    data_range: float = 2.0,
) -> list[dict[str, Any]]:
    """One row per (method, NFE): counted NFE, RMSE of x_0 against ``truth`` and PSNR.

    ``methods`` maps a label to keyword arguments of :func:`odediff.sample` (solver, grid, …)."""
    rows = []
    with torch.no_grad():
        for label, kwargs in methods.items():
            for n in nfes:
                x0, info = sample(model, noise, nfe=n, return_info=True, **kwargs)
                rmse = (x0.double() - truth.double()).square().mean().sqrt().item()
                psnr = 20 * math.log10(data_range / rmse) if rmse > 0 else math.inf
                rows.append({"method": label, "nfe": info.nfe, "rmse": rmse, "psnr": psnr})
    return rows


def plot_nfe_error(
    rows: list[dict[str, Any]], path: str, title: str = "", ticks: Iterable[int] | None = None
) -> None:
    """Log-log error vs NFE, one line per method; methods whose label starts with "odediff" solid,
    others dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["method"] for r in rows))
    colors = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20").colors
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, label in enumerate(labels):
        pts = sorted((r["nfe"], r["rmse"]) for r in rows if r["method"] == label)
        style = "--" if not label.startswith("odediff") and "odediff" in " ".join(labels) else "-"
        ax.loglog(*zip(*pts), style, marker="o", ms=3, color=colors[i % len(colors)], label=label)
    ticks = sorted(set(ticks) if ticks is not None else {r["nfe"] for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("network evaluations (counted)")
    ax.set_ylabel("RMSE of x₀ vs float64 reference")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(rows: list[dict[str, Any]], nfes: Iterable[int], key: str = "rmse") -> str:
    """Methods as rows, NFE as columns."""
    nfes = list(nfes)
    out = ["| method | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
    for label in dict.fromkeys(r["method"] for r in rows):
        vals = {r["nfe"]: r[key] for r in rows if r["method"] == label}
        out.append(f"| {label} | " + " | ".join(f"{vals[n]:.3g}" if n in vals else "–" for n in nfes) + " |")
    return "\n".join(out)
