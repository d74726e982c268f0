"""Learned solvers for the zoo's trained networks, against the default and the best peer.

    python benchmarks/tuned_grid.py --model digits --nfe 4 5 6 8 10 --ship   # tune, write the package's files
    python benchmarks/tuned_grid.py --model all --study out/study              # measure the shipped files

Tuning (``--ship``, or ``--out`` for elsewhere): ``odediff.tune_grid`` on ``--train`` noises and
``--holdout`` noises (seed 1; the reference solves are made once per network and reused for
every NFE). Measuring: RMSE of x_0 on the NFE study's ``--noises`` noises (seed 0, default 32,
the float64 network, against its knot reference), which the tuning never saw, for the default
``adams``, the tuned solver and the best peer of ``nfe_error_study``'s CSV in ``--study/<model>/``
(run the study first on as many noises, e.g. ``python benchmarks/nfe_vs_error.py --model all
--methods default --noises 32 --nfes 4,5,6,8,10 --check 0 --out out/study``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import os
from pathlib import Path

import torch

import odediff
from odediff.bench.study import best_at, load_problem
from odediff.reference import default_reference
from odediff.tune import SHIPPED, TunedGrid, tune_grid
from odediff.zoo import load

TRAINED = ("digits", "digits-seed1", "digits-dit", "photos")


def memo_reference():
    """The default reference solve, computed once per set of noises."""
    cache: dict[str, tuple[torch.Tensor, int]] = {}

    def reference(model, x):
        key = hashlib.sha1(x.detach().double().numpy().tobytes()).hexdigest()
        if key not in cache:
            x0, n = default_reference(model).solve(model, x)
            cache[key] = (x0, int(n.max()))
        return cache[key]

    return reference


def tune(name: str, nfes: list[int], a: argparse.Namespace, out: Path) -> None:
    model, reference = load(name), memo_reference()
    learn = tuple(a.learn.split(","))
    for n in nfes:
        g = tune_grid(model, n, noises=a.train, holdout=a.holdout, learn=learn, reference=reference,
                      iterations=a.iterations, seed=1, model_name=name)  # fmt: skip
        g.save(out / f"{name}_nfe{n}.json")
        print(f"{name} NFE {n}: train {g.train_error:.4g}, held out {g.holdout_error:.4g} (default "
              f"{g.default_error:.4g}); {g.seconds:.0f} s, {g.cost_nfe} evaluations", flush=True)  # fmt: skip


def peers(study: str, name: str) -> list[dict]:
    path = os.path.join(study, name, "nfe_vs_error.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["target"], r["nfe"], r["rmse"] = int(r["target"]), float(r["nfe"]), float(r["rmse"])
    return rows


def measure(name: str, nfes: list[int], study: str, folder: Path, noises: int = 32) -> list[str]:
    model, _ = load_problem(name)  # float64, as the study's peers
    gen = torch.Generator().manual_seed(0)
    test = torch.randn(noises, *model.sample_shape, dtype=torch.float64, generator=gen)
    truth, _ = default_reference(model).solve(model, test)
    rows, lines = peers(study, name), []
    for n in nfes:
        g = TunedGrid.load(folder / f"{name}_nfe{n}.json")
        with torch.no_grad():
            default = (odediff.sample(model, test, nfe=n) - truth).square().mean().sqrt().item()
            y, info = odediff.sample(model, test, return_info=True, **g.kwargs())
        assert info.nfe == n
        tuned = (y - truth).square().mean().sqrt().item()
        p = best_at(rows, n, lambda r: r["family"] == "peer")
        pr = p["rmse"] if p else math.nan
        who = f"{pr:.3g} {p['method'].removeprefix('diffusers ')}" if p else "–"
        lines.append(f"| {name} | {n} | {default:.3g} | {tuned:.3g} | {who} | {default / pr:.2f}× | "
                     f"**{tuned / pr:.2f}×** | {g.seconds / 60:.1f} min, {g.cost_nfe} |")  # fmt: skip
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="all", choices=("all", *TRAINED))
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6, 8, 10])
    p.add_argument("--train", type=int, default=64, help="training noises (seed 1)")
    p.add_argument("--holdout", type=int, default=32, help="held-out noises for early stopping (seed 1)")
    p.add_argument("--noises", type=int, default=32, help="the study's noises (seed 0) to measure on")
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--learn", default="grid,weights")
    p.add_argument("--ship", action="store_true", help="tune and write the package's files")
    p.add_argument("--out", default=None, help="tune and write the files here instead")
    p.add_argument("--study", default="out/study", help="nfe_error_study's output folder (the peers)")
    a = p.parse_args()
    torch.set_num_threads(1)
    names = TRAINED if a.model == "all" else (a.model,)
    folder = Path(a.out) if a.out else SHIPPED
    if a.ship or a.out:
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            tune(name, a.nfe, a, folder)
    lines = ["| network | NFE | default adams | tuned | best peer | default ÷ peer | tuned ÷ peer | "
             "tuning (time, NFE) |", "|---" * 8 + "|"]  # fmt: skip
    for name in names:
        lines += measure(name, a.nfe, a.study, folder, a.noises)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
