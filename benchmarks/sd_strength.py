"""Where img2img starts at a given strength: the (t, σ) that Stable Diffusion's img2img pipeline
noises the image to and first calls the UNet at, for the stock DDIM and DPM++ schedulers and for
ODEScheduler, with Stable Diffusion 1.x's scheduler config.

The pipeline's own ``get_timesteps`` (StableDiffusionImg2ImgPipeline's code, on the scheduler
alone: no weights needed) picks the start; σ = sqrt((1 − ᾱ_t)/ᾱ_t).

    python benchmarks/sd_strength.py [--steps 10] [--strengths 0.3 0.5 0.8]
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import diffusers
import torch

from odediff.diffusers import ODEScheduler
from odediff.zoo.tiny_sd import SD_SCHEDULER


def start(scheduler, steps: int, strength: float) -> tuple[int | float, float]:
    """(t, σ) of the first UNet call of img2img at ``strength``."""
    scheduler.set_timesteps(steps)
    pipe = SimpleNamespace(scheduler=scheduler)
    timesteps, _ = diffusers.StableDiffusionImg2ImgPipeline.get_timesteps(pipe, steps, strength, "cpu")
    t = timesteps[0].item()
    a = scheduler.alphas_cumprod[round(t)].double()
    return t, float(((1 - a) / a).sqrt())


def schedulers() -> dict[str, object]:
    stock = lambda cls: cls.from_config(SD_SCHEDULER)
    ddim = stock(diffusers.DDIMScheduler)
    dpm = stock(diffusers.DPMSolverMultistepScheduler)
    return {
        "DDIM": ddim,
        "DPM++": dpm,
        "ODEScheduler adams (from DDIM)": ODEScheduler.from_config(ddim, solver="adams"),
        "ODEScheduler adams (from DPM++)": ODEScheduler.from_config(dpm, solver="adams"),
        "ODEScheduler adams, quadratic_t (from DDIM)": ODEScheduler.from_config(
            ddim, solver="adams", grid="quadratic_t"
        ),
        "ODEScheduler heun (from DDIM)": ODEScheduler.from_config(ddim, solver="heun"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.3, 0.5, 0.8])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| scheduler | " + " | ".join(f"strength {s} (t, σ)" for s in args.strengths) + " |")
    print("|---" * (len(args.strengths) + 1) + "|")
    for name, sched in schedulers().items():
        cells = [start(sched, args.steps, s) for s in args.strengths]
        print(f"| {name} | " + " | ".join(f"{t:g}, {sigma:.3g}" for t, sigma in cells) + " |")


if __name__ == "__main__":
    main()
