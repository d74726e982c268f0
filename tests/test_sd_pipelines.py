"""ODEScheduler in the pipelines Stable Diffusion users run, built tiny from configs (odediff.zoo.tiny_sd):
strength, inpainting, SDXL base + refiner, η and generators, and exact inversion through the
pipeline call. The stock DDIMScheduler and DPMSolverMultistepScheduler are the oracles."""

from contextlib import contextmanager

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from odediff.diffusers import ODEScheduler  # noqa: E402
from odediff.zoo import tiny_sd  # noqa: E402

STOCK = {"ddim": diffusers.DDIMScheduler, "dpm++": diffusers.DPMSolverMultistepScheduler}
PROMPT = ["a photo of a cat", "a painting"]


@pytest.fixture(scope="module")
def pipes():
    return {kind: tiny_sd.pipeline(kind) for kind in ("text2img", "img2img", "inpaint", "xl", "xl-img2img")}


def image(seed=0, dtype=torch.float32):
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@contextmanager
def observed(pipe):
    """The timesteps the UNet is called at and the one add_noise noises the image to."""
    seen = {"unet": [], "noised": []}
    hook = pipe.unet.register_forward_hook(
        lambda m, a, o: seen["unet"].append(int(torch.as_tensor(a[1]).reshape(-1)[0]))
    )
    add_noise = pipe.scheduler.add_noise
    pipe.scheduler.add_noise = lambda x, n, t: seen["noised"].append(int(t[0])) or add_noise(x, n, t)
    try:
        yield seen
    finally:
        hook.remove()
        del pipe.scheduler.add_noise


def call(pipe, seed=0, prompt=PROMPT, **kwargs):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return pipe(prompt=prompt, generator=g, output_type="latent", **kwargs).images


def stock(name):
    return STOCK[name].from_config(tiny_sd.SD_SCHEDULER)


@pytest.mark.parametrize("kind", ["img2img", "inpaint"])
@pytest.mark.parametrize("name", list(STOCK))
def test_strength_starts_where_the_stock_scheduler_starts(pipes, kind, name):
    pipe = pipes[kind]
    extra = dict(image=image(), num_inference_steps=10)
    if kind == "inpaint":
        extra["mask_image"] = torch.ones(2, 1, 32, 32)
    for strength in (0.3, 0.5, 0.8):
        pipe.scheduler = stock(name)
        with observed(pipe) as ref:
            call(pipe, strength=strength, **extra)
        for solver, grid in [("adams", None), ("adams", "quadratic_t"), ("heun", None), ("heun", "karras")]:
            pipe.scheduler = ODEScheduler.from_config(stock(name), solver=solver, grid=grid)
            with observed(pipe) as ours:
                call(pipe, strength=strength, **extra)
            assert ours["noised"] == ref["noised"], (strength, solver, grid)
            assert ours["unet"][0] == ref["unet"][0] and len(ours["unet"]) == len(ref["unet"])
            if grid is None and solver == "adams":  # the source's own timesteps
                assert ours["unet"] == ref["unet"]
    pipe.scheduler = ODEScheduler.from_config(stock(name))
    with pytest.raises(ValueError, match=r"begin_index: 10 leaves none of the 10 .* strength ≥ 1/10"):
        call(pipe, strength=0.05, **extra)


def test_sdxl_base_and_refiner_split_as_ddim(pipes):
    base, refiner = pipes["xl"], pipes["xl-img2img"]
    runs = {}
    for label, make in [
        ("ddim", lambda: stock("ddim")),
        ("ode", lambda: ODEScheduler.from_config(stock("ddim"))),
    ]:
        base.scheduler, refiner.scheduler = make(), make()
        with observed(base) as b, observed(refiner) as r:
            latents = call(base, num_inference_steps=10, denoising_end=0.8, height=32, width=32)
            out = call(refiner, image=latents, num_inference_steps=10, denoising_start=0.8)
        runs[label] = (b["unet"], r["unet"], r["noised"], out)
    assert runs["ode"][:3] == runs["ddim"][:3]
    assert len(runs["ode"][0]) == 8 and len(runs["ode"][1]) == 2 and runs["ode"][2] == []
    # heun: the refiner counts heun's planned entries below the cutoff, and starts at DDIM's
    # timestep for the index k that gives (mid-step or not), with the 10 − k evaluations left
    refiner.scheduler = ODEScheduler.from_config(stock("ddim"), solver="heun")
    with observed(refiner) as r:
        call(refiner, image=latents, num_inference_steps=10, denoising_start=0.8)
    ddim = stock("ddim")
    ddim.set_timesteps(10)
    k = 10 - len(r["unet"])
    assert 0 < k < 10 and r["unet"][0] == int(ddim.timesteps[k])


def test_eta_and_per_image_generators_through_the_pipeline(pipes):
    pipe = pipes["img2img"]
    pipe.scheduler = ODEScheduler.from_config(stock("ddim"), solver="ddim")
    kw = dict(image=image(), strength=0.8, num_inference_steps=6)
    plain = call(pipe, **kw)
    noisy = call(pipe, eta=0.5, **kw)
    assert torch.equal(noisy, call(pipe, eta=0.5, **kw))
    assert (noisy - plain).abs().max() > 1e-2
    assert (noisy - call(pipe, seed=1, eta=0.5, **kw)).abs().max() > 1e-2
    gens = lambda *s: [torch.Generator().manual_seed(i) for i in s]
    with torch.no_grad():
        both = pipe(prompt=PROMPT, generator=gens(3, 4), eta=0.5, output_type="latent", **kw).images
        second = pipe(
            prompt=PROMPT[1:],
            generator=gens(4),
            eta=0.5,
            output_type="latent",
            **{**kw, "image": image()[1:]},
        ).images
    assert (both[1:] - second).abs().max() <= 1e-5  # image i from generator i alone
    pipe.scheduler = ODEScheduler.from_config(stock("ddim"), solver="adams")
    with pytest.raises(ValueError, match="eta: 0.5 given, but η is the ddim solver's"):
        call(pipe, eta=0.5, **kw)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_exact_inversion_through_the_pipeline(dtype, tol):
    """invert_next + pipe(latents=x0) encodes under the call's prompt and guidance; decode_next +
    pipe(latents=…) gives the VAE latents back, through the pipeline call itself."""
    pipe = tiny_sd.pipeline("text2img")
    pipe.scheduler = ODEScheduler.from_config(pipe.scheduler, solver="belm")
    pipe.to(dtype)
    with torch.no_grad():
        x0 = pipe.vae.encode(image(dtype=dtype) * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
    kw = dict(num_inference_steps=10, guidance_scale=4.0, height=32, width=32)
    pipe.scheduler.invert_next()
    with observed(pipe) as enc:
        xT = call(pipe, latents=x0, **kw)
    z = pipe.scheduler.latent
    assert torch.equal(xT, z.x) and z.nfe == 10 and len(enc["unet"]) == 10
    assert (xT - x0).abs().max() > 0.1
    with observed(pipe) as dec:
        back = call(pipe, latents=pipe.scheduler.decode_next(z), **kw)
    assert len(dec["unet"]) == 9  # the carried state replaces the first evaluation
    err = (back - x0).abs().max().item()
    assert err <= tol, err
    edited = call(pipe, **{**kw, "prompt": ["a dog", "a boat"]}, latents=pipe.scheduler.decode_next(z))
    assert (edited - x0).abs().max() > 1e-3  # another prompt is an edit, not the inverse
    with pytest.raises(ValueError, match="latents: expected the tensor decode_next returned"):
        pipe.scheduler.decode_next(z)
        call(pipe, latents=xT, **kw)
    adams = ODEScheduler.from_config(pipe.scheduler, solver="adams")
    with pytest.raises(ValueError, match="solver: adams is not reversible"):
        adams.invert_next()
