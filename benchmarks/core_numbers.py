"""The core claims in numbers: Euler ≡ DDIM to round-off, and each solver's empirical order.

    python benchmarks/core_numbers.py

1. max |odediff euler − diffusers DDIMScheduler| in float32 on a random UNet2DModel (ε = x_t +
   0.1·UNet so that samples stay O(1) as with a trained predictor), "leading" and "trailing"
   spacing, 10/50/200 steps, all three prediction types.
2. Fitted slope of log(error) vs log(NFE) in float64 on Gaussian data, whose flow is closed
   form: x̄(σ) − μ = (x̄(σ₀) − μ)·sqrt((s² + σ²)/(s² + σ₀²)), from σ_max to σ_min on a log-SNR grid.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import odediff
from odediff import grids
from odediff.zoo import GaussianMixture


def ddim_equivalence() -> None:
    from diffusers import DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()  # fmt: skip

    def net(x, t):
        return x + 0.1 * unet(x, t).sample

    print("max |odediff euler - diffusers DDIM|, float32, batch 4 of 1x8x8:")
    worst = 0.0
    for pred in ("epsilon", "sample", "v_prediction"):
        for spacing in ("leading", "trailing"):
            for steps in (10, 50, 200):
                s = DDIMScheduler(
                    num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                    set_alpha_to_one=True, timestep_spacing=spacing, prediction_type=pred,
                )  # fmt: skip
                s.set_timesteps(steps)
                noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
                x = noise
                with torch.no_grad():
                    for t in s.timesteps:
                        x = s.step(net(x, t), t, x).prev_sample
                    ours = odediff.sample(
                        odediff.EpsModel(net, s.alphas_cumprod, pred),
                        noise,
                        solver="euler",
                        timesteps=s.timesteps,
                    )
                d = (ours - x).abs().max().item()
                worst = max(worst, d)
                print(f"  {pred:13s} {spacing:9s} {steps:4d} steps: {d:.2e}   (|x0| ≤ {x.abs().max():.2f})")
    print(f"  worst: {worst:.2e}")


def orders() -> None:
    s2, mu = 0.25, 0.3
    model = GaussianMixture([1.0], [[mu] * 16], [np.eye(16) * s2])
    x = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cases = {
        "euler": {}, "heun": {}, "ddim (eta=0)": {"solver": "ddim"},
        "adams order 2, exact": {"order": 2, "weights": "exact"},
        "adams order 3, exact": {"order": 3, "weights": "exact"},
        "adams order 4, exact": {"order": 4, "weights": "exact"},
        "adams order 4, exact, log σ": {"order": 4, "weights": "exact", "variable": "log_sigma"},
        "adams order 4, fixed": {"order": 4, "weights": "fixed"},
    }  # fmt: skip
    print("fitted order (slope of log error vs log NFE), float64, NFE 80..320, log-SNR grid:")
    for label, opts in cases.items():
        solver = opts.pop("solver", label.split()[0])
        nfes, errs = [], []
        for n in (80, 160, 320):
            sig = grids.log_snr(model.schedule, n + 1)[:-1]
            out, info = odediff.sample(model, x, solver=solver, sigmas=sig, return_info=True, **opts)
            s0, s1 = float(sig[0]), float(sig[-1])
            xb = mu + (x * math.sqrt(1 + s0**2) - mu) * math.sqrt((s2 + s1**2) / (s2 + s0**2))
            nfes.append(info.nfe)
            errs.append((out - xb / math.sqrt(1 + s1**2)).abs().max().item())
        slope = -np.polyfit(np.log(nfes), np.log(errs), 1)[0]
        print(f"  {label:30s} {slope:5.2f}   errors {', '.join(f'{e:.1e}' for e in errs)}")
    print("rk45 error vs tolerance (σ_max → σ_min):")
    for tol in (1e-4, 1e-6, 1e-8, 1e-10):
        sig = torch.tensor([model.schedule.sigma_max, model.schedule.sigma_min], dtype=torch.float64)
        out, info = odediff.sample(
            model, x, solver="rk45", sigmas=sig, rtol=tol, atol=tol, max_nfe=10**5, return_info=True
        )
        s0, s1 = float(sig[0]), float(sig[1])
        xb = mu + (x * math.sqrt(1 + s0**2) - mu) * math.sqrt((s2 + s1**2) / (s2 + s0**2))
        err = (out - xb / math.sqrt(1 + s1**2)).abs().max().item()
        print(f"  rtol=atol={tol:.0e}: error {err:.1e}, {info.nfe} NFE")


if __name__ == "__main__":
    torch.set_num_threads(1)
    orders()
    try:
        ddim_equivalence()
    except ImportError:
        print("diffusers not installed: skipping the DDIM comparison")
