"""NFE vs error: odediff's solvers beside diffusers' schedulers and an independent iPNDM.

Two problems: the Gaussian-mixture digits model (exact ε; truth by DOP853 per noise at
rtol = atol = 1e-10) and the trained digits UNet in float64 (truth by RK4 on a fixed grid through
every integer-timestep knot of t(σ)). Each problem's truth is also solved more finely on its first
``--check`` noises to estimate its own error. Every method's evaluations go through odediff's
counted field; a diffusers scheduler is driven by its own loop on the same noise from t = T−1 to
σ = 0, with num_inference_steps chosen so that its counted NFE is the target or the largest count
below it. See :mod:`odediff.study`.

    python benchmarks/nfe_vs_error.py --model both                  # out/nfe_vs_error/{gmm-digits,digits}/
    python benchmarks/nfe_vs_error.py --model all --methods default --noises 32 --nfes 4,5,6,8,10,15,20
    python benchmarks/nfe_vs_error.py --model digits --noises 16 --nfes 5,10,20
    torchrun --nproc_per_node 2 benchmarks/nfe_vs_error.py --model gmm-digits   # same numbers, 2 processes

Writes per problem: nfe_vs_error.csv, nfe_vs_error_per_noise.csv, nfe_vs_error.md, nfe_vs_error.png;
with several problems, also the default's error ÷ the best peer's per problem and NFE, and the
worst over the problems (how defaults are judged: on every network and the mixture at once), to
summary.md.
"""

from __future__ import annotations

import argparse
import os

import torch

from odediff import shard
from odediff.bench.ipndm import ipndm_method
from odediff.bench.study import DEFAULT_LABEL, NFES, ODEDIFF_METHODS, best_at, nfe_error_study
from odediff.zoo import MODELS

NOISES = {"gmm-digits": 64, "digits": 16}  # others: 32
RATIO_NFES = (5, 8, 10, 15, 20, 30)
IPNDM = {f"iPNDM {g}": ipndm_method(g) for g in ("karras", "log_snr", "uniform_t")}
METHODS = {**ODEDIFF_METHODS, **IPNDM}


def ratio_summary(results: dict[str, list[dict]], nfes: list[int]) -> str:
    """Markdown: default ÷ best peer per problem (rows) and NFE (columns), the best peer's name,
    and the worst ratio over the problems."""
    head = "| problem | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    lines, worst = [head, "|---" * (len(nfes) + 1) + "|"], {n: 0.0 for n in nfes}
    for name, rows in results.items():
        cells = []
        for n in nfes:
            ours = best_at(rows, n, lambda r: r["method"] == DEFAULT_LABEL)
            peer = best_at(rows, n, lambda r: r.get("family") == "peer")
            if ours and peer:
                ratio = ours["rmse"] / peer["rmse"]
                worst[n] = max(worst[n], ratio)
                who = peer["method"].removeprefix("diffusers ")
                cells.append(f"{ratio:.2f}× ({who})")
            else:
                cells.append("–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **worst** | " + " | ".join(f"**{worst[n]:.2f}×**" for n in nfes) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict], nfes=RATIO_NFES) -> list[str]:
    """Default adams against the best peer at each NFE, and the issue's targets (lower error than
    the best peer at NFE 10 and 20, at most half of it at NFE 10)."""
    lines, ratio = [], {}
    for n in nfes:
        ours = best_at(rows, n, lambda r: r["method"] == DEFAULT_LABEL)
        peer = best_at(rows, n, lambda r: r.get("family") == "peer")
        if ours and peer:
            ratio[n] = ours["rmse"] / peer["rmse"]
            lines.append(
                f"NFE {n:3d}: default {ours['rmse']:.3g}, best peer {peer['method']} "
                f"({peer['nfe']} NFE) {peer['rmse']:.3g}, ratio {ratio[n]:.2f}"
            )
    if 10 in ratio and 20 in ratio:
        ok = ratio[10] <= 0.5 and ratio[20] < 1
        lines.append(f"targets (≤ 0.5× at NFE 10, < 1× at NFE 20): {'met' if ok else 'NOT met'}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="both", choices=[*MODELS, "both", "all"],
                   help="a zoo model, both (gmm-digits and digits) or all of the zoo")  # fmt: skip
    p.add_argument("--methods", default="all", choices=["all", "default"],
                   help="odediff's configurations of the study, or the default only (+ iPNDM)")  # fmt: skip
    p.add_argument("--noises", type=int, default=None, help="per problem (64 GMM, 16 digits, else 32)")
    p.add_argument("--nfes", default=",".join(map(str, NFES)), help="comma-separated NFE targets")
    p.add_argument("--out", default="out/nfe_vs_error", help="output folder (one subfolder per problem)")
    p.add_argument("--no-peers", action="store_true", help="odediff and iPNDM only (no diffusers)")
    p.add_argument("--chunk", type=int, default=8, help="noises per batch (the unit of sharding)")
    p.add_argument("--check", type=int, default=2, help="noises whose reference is re-solved finely")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (default: 1)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    nfes = [int(v) for v in a.nfes.split(",") if v.strip()]
    models = {"both": ["gmm-digits", "digits"], "all": list(MODELS)}.get(a.model, [a.model])
    methods = METHODS if a.methods == "all" else {DEFAULT_LABEL: ODEDIFF_METHODS[DEFAULT_LABEL], **IPNDM}
    shard.init()
    try:
        summary, results = [], {}
        for name in models:
            rows = nfe_error_study(
                name, os.path.join(a.out, name), noises=a.noises or NOISES.get(name, 32), nfes=nfes,
                methods=methods, peers=not a.no_peers, chunk=a.chunk, check=a.check,
            )  # fmt: skip
            results[name] = rows
            if shard.is_main():
                summary += [
                    f"{name}:",
                    *("  " + ln for ln in verdict(rows, [n for n in RATIO_NFES if n in nfes])),
                ]
        if shard.is_main():
            print("\n".join(summary))
            if len(models) > 1:
                table = ratio_summary(results, nfes)
                with open(os.path.join(a.out, "summary.md"), "w") as f:
                    f.write(f"RMSE of the default ÷ the best peer's, per problem and NFE\n\n{table}\n")
                print(table)
    finally:
        shard.finish()


if __name__ == "__main__":
    main()
