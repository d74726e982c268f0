"""Per-NFE solver overhead, odediff vs a bare loop and diffusers (and k-diffusion if it imports),
in one run.

A near-free network (batch 1, 1×8×8, ε = x_t·0.5) on one thread makes the loop's own cost
visible: overhead per NFE = (time of a whole solve − NFE × time of one bare network call) / NFE.
The bare loop is the least any sampler does: the network call and one axpy x ← x + h·ε per step.

    python benchmarks/overhead.py [--nfe 50] [--repeats 30] [--out out/overhead.csv]
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import torch

import odediff


def scale(x, t):
    return 0.5 * x


CONV = torch.nn.Conv2d(1, 1, 3, padding=1).requires_grad_(False)
NETS = {"scale": scale, "conv": lambda x, t: CONV(x)}


def best_time(fn, repeats: int) -> float:
    fn()  # warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nfe", type=int, default=50)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument(
        "--net",
        choices=sorted(NETS),
        default="scale",
        help="the network: ε = 0.5·x_t (near free), or a 3×3 convolution",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default="out/overhead.csv")
    a = p.parse_args()
    torch.set_num_threads(1)
    net = NETS[a.net]
    x = torch.randn(a.batch, 1, 8, 8)
    t = torch.zeros(a.batch)
    sched = odediff.DiscreteSchedule.linear()
    model = odediff.EpsModel(net, sched.alphas_cumprod)
    per_call = best_time(lambda: [net(x, t) for _ in range(1000)], a.repeats) / 1000

    rows = []
    hs = odediff.plan(sched, odediff.get_solver("euler"), a.nfe).diff().tolist()

    def bare():
        y = x
        for h in hs:
            y = torch.add(y, net(y, t), alpha=h)
        return y

    def record(name: str, fn, nfe: int) -> None:
        total = best_time(fn, a.repeats)
        rows.append((name, nfe, total / nfe * 1e6, (total - nfe * per_call) / nfe * 1e6))

    record("bare loop (network + axpy)", bare, a.nfe)
    for solver in ("euler", "adams", "heun", "ddim"):
        record(f"odediff {solver}", lambda s=solver: odediff.sample(model, x, solver=s, nfe=a.nfe), a.nfe)

    try:
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        def run(s):
            y = x
            for ts in s.timesteps:
                y = s.step(net(y, ts), ts, y).prev_sample
            return y

        for name, cls in (
            ("diffusers DDIM", DDIMScheduler),
            ("diffusers DPMSolver++2M", DPMSolverMultistepScheduler),
        ):
            s = cls(num_train_timesteps=1000, beta_schedule="linear")

            def solve(s=s):
                s.set_timesteps(a.nfe)  # part of every sampling call, as in a pipeline
                return run(s)

            record(name, solve, a.nfe)
    except ImportError:
        print("diffusers not installed: no peer rows")

    try:  # k-diffusion needs torchvision, which has no CPU wheel here: measured only where it imports
        import k_diffusion as K

        kd_sigmas = K.sampling.get_sigmas_karras(a.nfe, sched.sigma_min, sched.sigma_max).double()
        denoiser = odediff.to_denoiser(model)
        xk = x.double() * sched.sigma_max
        kd_euler = lambda: K.sampling.sample_euler(denoiser, xk, kd_sigmas, disable=True)
        record("k-diffusion euler", kd_euler, a.nfe)
    except ImportError:
        print("k-diffusion does not import: no k-diffusion row")

    ref = {r[0]: r[3] for r in rows}.get("diffusers DDIM")
    bare = rows[0][2]
    print(
        f"network ({a.net}, batch {a.batch}) alone: {per_call * 1e6:.1f} µs; NFE per solve: {a.nfe}; "
        f"best of {a.repeats}.\nvs bare loop: time per NFE over the bare loop's; vs DDIM: overhead over its"
    )
    print(f"{'method':28s} {'µs/NFE':>8s} {'overhead µs/NFE':>16s} {'vs bare loop':>13s} {'vs DDIM':>8s}")
    for name, _, us, ov in rows:
        ratio = f"{ov / ref:.2f}×" if ref else "-"
        print(f"{name:28s} {us:8.1f} {ov:16.1f} {us / bare:12.2f}× {ratio:>8s}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["method", "net", "batch", "nfe", "us_per_nfe", "overhead_us_per_nfe", "vs_bare", "vs_ddim"]
        )
        for name, nfe, us, ov in rows:
            w.writerow([name, a.net, a.batch, nfe, f"{us:.2f}", f"{ov:.2f}", f"{us / bare:.3f}",
                        f"{ov / ref:.3f}" if ref else ""])  # fmt: skip


if __name__ == "__main__":
    main()
