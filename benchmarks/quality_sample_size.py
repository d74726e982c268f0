"""How many samples the NFE-vs-quality study needs: Fréchet distance ± bootstrap SE vs n at one NFE.

Runs every method of :func:`odediff.bench.quality.quality_study` (odediff's, iPNDM, diffusers'
schedulers) once at the largest size and reports each prefix of n samples — exactly the study's
row at that n, since sample i starts from the same noise whatever n is.

    python benchmarks/quality_sample_size.py --model digits --nfe 10 --sizes 500,1000,2000,4000,8000
    torchrun --nproc_per_node 2 benchmarks/quality_sample_size.py --model digits   # same numbers

Writes sample_size.csv and sample_size.md (rows methods, columns n, cells "fd ± se") to --out.
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import torch

from odediff import shard
from odediff.bench.quality import sample_size_study


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits", help="built-in model with a feature space (default: digits)")
    p.add_argument("--nfe", type=int, default=10, help="target NFE (default: 10)")
    p.add_argument("--sizes", default="500,1000,2000,4000,8000", help="comma-separated sample counts")
    p.add_argument("--no-peers", action="store_true", help="odediff and iPNDM only (no diffusers)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (default: 1)")
    p.add_argument("--out", default="out/quality_sample_size", help="output folder")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    sizes = sorted({int(v) for v in a.sizes.split(",") if v.strip()})
    shard.init()
    t0 = time.perf_counter()
    try:
        rows = sample_size_study(a.model, sizes, nfe=a.nfe, peers=not a.no_peers, progress=shard.is_main())
    finally:
        shard.finish()
    if rows is None:
        return
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "sample_size.csv"), "w", newline="") as f:
        keys = [k for k in rows[0] if k != "fd_boot"]
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    cells: dict[str, dict[int, str]] = {}
    for r in rows:
        spent = f" ({r['nfe']})" if r["nfe"] != a.nfe else ""
        cells.setdefault(r["method"] + spent, {})[r["n"]] = f"{r['fd']:.3g} ± {r['fd_se']:.2g}"
    md = [
        f"### {a.model}: Fréchet distance ± bootstrap SE at NFE {a.nfe} vs the number of samples n",
        "",
        "| method | " + " | ".join(f"n = {s}" for s in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
        *(f"| {m} | " + " | ".join(c.get(s, "–") for s in sizes) + " |" for m, c in cells.items()),
        "",
    ]
    with open(os.path.join(a.out, "sample_size.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))
    print(f"{time.perf_counter() - t0:.0f} s -> {a.out}/sample_size.{{csv,md}}")


if __name__ == "__main__":
    main()
