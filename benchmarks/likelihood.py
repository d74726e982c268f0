"""The README's likelihood tables: error against NFE on the mixture, bits/dim of the zoo's digits models.

    python benchmarks/likelihood.py error              # mixture: log p error vs NFE (≈ 1 min)
    python benchmarks/likelihood.py bpd --n 64         # digits models: held-out vs train bits/dim

``error``: 16 samples of the zoo mixture (seed 0), float64, exact divergence; the truth is the
closed form log p(x_0; σ_min). "total" uses the schedule's prior (what :func:`odediff.log_likelihood`
returns), "ODE part" replaces it by the mixture's exact log p(x̄(σ_max); σ_max), isolating the
solver's error. ``bpd``: the first ``n`` images of each split (:func:`odediff.zoo.digits.load_data`),
bits/dim with the digits' bin width 1/8 (``bits=4``), mean ± its standard error over images
(and, for Hutchinson, the probes' spread is included in each image's value).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from odediff.likelihood import bits_per_dim, log_likelihood
from odediff.zoo import gmm_digits, load
from odediff.zoo.digits import load_data

FIXED = ("euler", "heun", "adams")
NFES = (10, 20, 50, 100, 200)
TOLS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-8)


def error_table(n: int = 16) -> None:
    g = gmm_digits()
    x0 = g.sample_data(n, torch.Generator().manual_seed(0), dtype=torch.float64)
    truth = g.log_prob(x0, g.schedule.sigma_min)
    s_max, dim = g.schedule.sigma_max, g.dim
    print(
        f"mixture gmm-digits, {n} samples, exact divergence; error in nats/dim (|log p − closed form| / D)\n"
    )
    print("| solver | NFE | total: mean | total: max | ODE part: max | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    runs = [(s, dict(solver=s, nfe=k)) for s in FIXED for k in NFES]
    runs += [
        (f"rk45 rtol=atol={t:g}" + (" (default)" if t == 1e-5 else ""), dict(rtol=t, atol=t)) for t in TOLS
    ]
    for label, kw in runs:
        t0 = time.perf_counter()
        lp, info = log_likelihood(g, x0, **kw)
        secs = time.perf_counter() - t0
        exact_prior = g.log_prob(info.xT.double() * math.sqrt(1 + s_max**2), s_max)
        total = (lp - truth).abs() / dim
        ode = (info.delta + exact_prior - truth).abs() / dim
        cells = f"{total.mean():.2e} | {total.max():.2e} | {ode.max():.2e}"
        print(f"| {label} | {info.nfe} | {cells} | {secs:.1f} |", flush=True)


def bpd_table(n: int, models: list[str], n_probes: int, tol: float) -> None:
    print(
        f"first {n} images of each split; rk45 rtol = atol = {tol:g}; networks: Hutchinson, {n_probes} "
        "Rademacher probes (seed 0); gmm-digits: exact divergence, and its closed form\n"
    )
    print("| model | held-out bits/dim | train bits/dim | NFE (held-out, train) | seconds |")
    print("|---|---:|---:|---:|---:|")
    splits = {s: load_data(s)[0][:n] for s in ("test", "train")}
    for name in models:
        model = load(name)
        cells, nfes, t0 = [], [], time.perf_counter()
        for x in splits.values():
            if name == "gmm-digits":
                x = x.double()
                kw = dict(divergence="exact")
            else:
                kw = dict(
                    divergence="hutchinson", n_probes=n_probes, generator=torch.Generator().manual_seed(0)
                )
            lp, info = log_likelihood(model, x, rtol=tol, atol=tol, **kw)
            b = bits_per_dim(lp, x.shape[1:], bits=4)
            cells.append(f"{b.mean():.3f} ± {b.std() / math.sqrt(len(b)):.3f}")
            nfes.append(str(info.nfe))
            if name == "gmm-digits":
                exact = bits_per_dim(model.log_prob(x, model.schedule.sigma_min), x.shape[1:], bits=4)
                cells[-1] += f" (closed form {exact.mean():.3f})"
        secs = time.perf_counter() - t0
        print(f"| {name} | {cells[0]} | {cells[1]} | {', '.join(nfes)} | {secs:.0f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=("error", "bpd"))
    p.add_argument("--n", type=int, default=64, help="images per split (bpd), samples (error: 16)")
    p.add_argument("--models", default="gmm-digits,digits,digits-seed1,digits-dit")
    p.add_argument("--probes", type=int, default=4)
    p.add_argument("--tol", type=float, default=1e-4)
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.table == "error":
        error_table(16 if a.n == 64 else a.n)
    else:
        bpd_table(a.n, a.models.split(","), a.probes, a.tol)


if __name__ == "__main__":
    main()
