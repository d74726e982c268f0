"""Tuned grids (and Adams weights) against the best peer, on noises the tuning never saw.

    python benchmarks/tuned_grid.py --model gmm-digits --nfe 5 10 --out out/tuned
    python benchmarks/tuned_grid.py --model digits --nfe 5 10 --train 16 --evaluations 400

For each NFE: ``odediff.tune_grid`` on ``--train`` noises drawn with seed 1, once for the grid
alone and once with ``tune_weights=True``; then the RMSE of x_0 on the NFE study's noises
(seed 0, the same count as ``benchmarks/nfe_vs_error.py``) against the same reference, beside
the default and the best peer read from that study's CSV (run it first). Tuned grids are saved
as JSON next to the table.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time

import torch

import odediff
from odediff.bench.study import best_at, load_problem
from odediff.reference import default_reference

STUDY_NOISES = {"gmm-digits": 64, "digits": 16}


def best_peers(study_csv: str) -> list[dict]:
    with open(study_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["target"], r["nfe"], r["rmse"] = int(r["target"]), float(r["nfe"]), float(r["rmse"])
    return rows


def rmse(x: torch.Tensor, truth: torch.Tensor) -> float:
    return (x.double() - truth).square().mean().sqrt().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gmm-digits", choices=sorted(STUDY_NOISES))
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    p.add_argument("--train", type=int, default=128, help="training noises (seed 1)")
    p.add_argument("--evaluations", type=int, default=800, help="loss evaluations of each search")
    p.add_argument("--study", default="out/nfe_vs_error", help="folder of nfe_vs_error.py's output")
    p.add_argument("--out", default="out/tuned")
    a = p.parse_args()
    torch.set_num_threads(1)

    model, title = load_problem(a.model)
    ref = default_reference(model)

    def reference(m, x):
        x0, n = ref.solve(m, x)
        return x0, int(n.sum())

    shape = tuple(model.sample_shape)
    gen = torch.Generator().manual_seed(0)  # the NFE study's noises
    test = torch.randn((STUDY_NOISES[a.model], *shape), dtype=torch.float64, generator=gen)
    truth, _ = ref.solve(model, test)
    study_csv = os.path.join(a.study, a.model, "nfe_vs_error.csv")
    rows = best_peers(study_csv) if os.path.exists(study_csv) else []
    os.makedirs(a.out, exist_ok=True)

    lines = [
        f"#### {title}: tuned on {a.train} noises (seed 1), RMSE on the study's {len(test)} noises (seed 0)",
        "",
        "| NFE | default | tuned grid | tuned grid + weights | best peer | grid ÷ peer | "
        "grid + weights ÷ peer | tuning cost (NFE) |",
        "|---" * 8 + "|",
    ]
    for n in a.nfe:
        with torch.no_grad():
            default = rmse(odediff.sample(model, test, nfe=n), truth)
        errs, cost = {}, 0
        for tw in (False, True):
            t0 = time.perf_counter()
            g = odediff.tune_grid(
                model, n, noises=a.train, holdout=None, robust=True, evaluations=a.evaluations,
                seed=1, reference=reference, model_name=a.model, tune_weights=tw,
            )  # fmt: skip
            g.save(os.path.join(a.out, f"{a.model}_nfe{n}{'_weights' if tw else ''}.json"))
            with torch.no_grad():
                errs[tw] = rmse(odediff.sample(model, test, **g.kwargs()), truth)
            cost += g.cost_nfe
            print(f"NFE {n} tune_weights={tw}: {errs[tw]:.4g} (default {default:.4g}), "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
        peer = best_at(rows, n, lambda r: r["family"] == "peer")
        pr = peer["rmse"] if peer else math.nan
        who = f"{pr:.3g} {peer['method']}" if peer else "– (run nfe_vs_error.py)"
        lines.append(
            f"| {n} | {default:.3g} | {errs[False]:.3g} | {errs[True]:.3g} | {who} | "
            f"{errs[False] / pr:.2f}× | {errs[True] / pr:.2f}× | {cost} |"
        )
    md = "\n".join(lines)
    print(md)
    with open(os.path.join(a.out, f"{a.model}.md"), "w") as f:
        f.write(md + "\n")


if __name__ == "__main__":
    main()
