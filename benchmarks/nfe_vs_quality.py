"""Sample quality vs NFE for the trained digits network (the DDIM paper's Table 1, on digits).

Fréchet distance of n samples per row to the 360 held-out test digits, in the 64-d feature
space of the digits classifier (odediff/zoo/classifier.py, trained on the train split only) and
in pixel space. Rows: DDIM η = 0, 0.2, 0.5, 1.0 and euler, heun, adams at NFE 10/20/50/100 on the
default (quadratic-t) grid, plus DDPM ancestral sampling over all 1000 steps (ddim, η = 1, on
the timesteps 999, …, 0), plus n real train digits as the floor the metric can reach.

    python benchmarks/nfe_vs_quality.py [--samples 500] [--out out/nfe_vs_quality]
    torchrun --nproc_per_node 2 benchmarks/nfe_vs_quality.py --samples 500   # chunks split over ranks

Every chunk of samples has its own seed, so the numbers do not depend on the number of ranks.
Writes nfe_vs_quality.csv, .md and .png to --out.
"""

from __future__ import annotations

import argparse
import time

import torch

from odediff import shard
from odediff.bench.quality import quality_study


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=500, help="samples per row (default: 500)")
    p.add_argument("--nfes", default="10,20,50,100", help="comma-separated NFE (default: 10,20,50,100)")
    p.add_argument("--no-ddpm", action="store_true", help="skip the 1000-step DDPM row (the slow one)")
    p.add_argument("--chunk", type=int, default=100, help="samples per seeded chunk (default: 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/nfe_vs_quality", help="output folder")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rank, world = shard.init()
    t0 = time.perf_counter()
    try:
        rows = quality_study(
            a.out, n=a.samples, nfes=[int(k) for k in a.nfes.split(",")], ddpm=not a.no_ddpm,
            chunk=a.chunk, seed=a.seed, progress=rank == 0,
        )  # fmt: skip
    finally:
        shard.finish()
    if rows is not None:
        print(open(f"{a.out}/nfe_vs_quality.md").read())
        print(
            f"{world} process(es), {time.perf_counter() - t0:.0f} s -> {a.out}/nfe_vs_quality.{{csv,md,png}}"
        )


if __name__ == "__main__":
    main()
