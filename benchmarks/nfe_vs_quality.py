"""Sample quality vs NFE: odediff's solvers against every diffusers scheduler and iPNDM, per model.

For each model (``--model``; ``all`` = every built-in model with a feature space), n samples per
(method, NFE) from the same noises, and their Fréchet distance to the model's held-out data in the
features of a classifier trained on its data (the digits classifier for ``digits``, ``gmm-digits``
and any ``digits-*``; the patch classifier for ``photos`` where it is installed), ± its bootstrap
standard error over the generated samples. Rows: odediff's default and a few configurations of the
NFE-vs-error study, iPNDM on three grids, the error study's diffusers schedulers (each by its own
loop; a scheduler that cannot spend an NFE exactly is shown at the count it spent), DDPM ancestral
over all 1000 steps, the ODE's own samples (the default at NFE 200: what an exact solve gives; a
sampler below it is off the ODE), and real train data as the floor. See
:func:`odediff.bench.quality.quality_study`.

    python benchmarks/nfe_vs_quality.py --model digits gmm-digits            # out/nfe_vs_quality/<model>/
    python benchmarks/nfe_vs_quality.py --model gmm-digits --samples 1000 --nfes 5,10,20 --no-ddpm
    python benchmarks/nfe_vs_quality.py --model all --no-ddpm --tuned         # + the shipped tuned solvers
    torchrun --nproc_per_node 2 benchmarks/nfe_vs_quality.py --model digits  # same files, 2 processes

Writes per model: nfe_vs_quality.csv (one row per method and target NFE: counted nfe, n, fd, fd_se),
nfe_vs_quality.md (FD ± SE, methods × NFE; the default against the best peer at each NFE) and
nfe_vs_quality.png (FD vs NFE with SE bars).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from odediff import shard
from odediff.bench.quality import N_SAMPLES, NFES, RESAMPLES, default_methods, quality_models, quality_study

TUNED_LABEL = 'odediff tuned (grid="tuned")'
ODE_NFE = 200


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["digits", "gmm-digits"],
                   help="built-in models, or 'all' (default: digits gmm-digits)")  # fmt: skip
    p.add_argument("--samples", type=int, default=N_SAMPLES, help=f"samples per entry (default: {N_SAMPLES})")
    p.add_argument("--nfes", default=",".join(map(str, NFES)), help="comma-separated target NFE")
    p.add_argument("--out", default="out/nfe_vs_quality", help="output folder (one subfolder per model)")
    p.add_argument("--no-peers", action="store_true", help="odediff and iPNDM only (no diffusers)")
    p.add_argument("--no-ddpm", action="store_true", help="skip the 1000-step DDPM row (the slow one)")
    p.add_argument("--ode-nfe", type=int, default=ODE_NFE,
                   help=f"the default's NFE standing for an exact solve (0: none; {ODE_NFE})")  # fmt: skip
    p.add_argument("--tuned", action="store_true",
                   help="add the tuned solver shipped for the model at each NFE that has one")  # fmt: skip
    p.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples per entry")
    p.add_argument("--chunk", type=int, default=250, help="samples per seeded chunk (the unit of sharding)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (default: 1)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    models = quality_models() if a.model == ["all"] else a.model
    nfes = [int(k) for k in a.nfes.split(",") if k.strip()]
    methods = {**default_methods(), TUNED_LABEL: dict(grid="tuned")} if a.tuned else None
    rank, world = shard.init()
    try:
        for name in models:
            t0 = time.perf_counter()
            out = os.path.join(a.out, name)
            rows = quality_study(
                out, model_name=name, n=a.samples, nfes=nfes, methods=methods, peers=not a.no_peers,
                ddpm=not a.no_ddpm, ode_nfe=a.ode_nfe or None, resamples=a.resamples, chunk=a.chunk,
                seed=a.seed, progress=rank == 0,
            )  # fmt: skip
            if rows is not None:
                with open(os.path.join(out, "nfe_vs_quality.md")) as f:
                    print(f.read())
                seconds = time.perf_counter() - t0
                print(f"{name}: {world} process(es), {seconds:.0f} s -> {out}/nfe_vs_quality.*")
    finally:
        shard.finish()


if __name__ == "__main__":
    main()
