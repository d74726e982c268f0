"""ODEScheduler: odediff's solvers inside real diffusers pipelines, with an exact NFE."""

import copy
import importlib.util
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import odediff
from odediff.grids import make_grid

diffusers = pytest.importorskip("diffusers")
from odediff.diffusers import ODEScheduler  # noqa: E402

SHAPE = (2, 3, 8, 8)
FIXED = sorted(name for name, s in odediff.SOLVERS.items() if not s.adaptive)


@pytest.fixture(scope="module")
def unet64(unet):
    """In float64 the pipeline and odediff.sample agree to round-off. In float32 they differ by
    the result's sensitivity to one rounding of the noise: odediff.sample's first UNet input is
    float32(x_T·sqrt(1+σ²))/sqrt(1+σ²), the pipeline's is x_T itself."""
    return copy.deepcopy(unet).double()


@contextmanager
def counted(unet, prediction="epsilon"):
    """Count UNet calls; for ε-prediction make ε = x_t + 0.1·unet, as a trained predictor has
    ε ≈ x_t at high noise (a random ε-UNet drives x_0 to |x| ~ σ_max, beyond float32's 1e-5)."""
    calls = []

    def hook(mod, args, out):
        calls.append(float(torch.as_tensor(args[1]).reshape(-1)[0]))
        if prediction == "epsilon":
            return type(out)(sample=args[0] + 0.1 * out.sample)
        return None

    handle = unet.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def run(pipe, n, seed=1, **kwargs):
    """The pipeline's last ``prev_sample`` (x_0 before its clamping to an image)."""
    scheduler, last = pipe.scheduler, []
    step = scheduler.step
    scheduler.step = lambda *a, **k: last.append(step(*a, **k)) or last[-1]
    try:
        pipe.set_progress_bar_config(disable=True)
        pipe(batch_size=SHAPE[0], generator=torch.Generator().manual_seed(seed), num_inference_steps=n,
             output_type="pt", **kwargs)  # fmt: skip
    finally:
        del scheduler.step
    return last[-1].prev_sample


def noise(seed=1, dtype=torch.float32):
    """What the pipelines draw: randn of the UNet's dtype from a generator seeded ``seed``."""
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# Euler ≡ diffusers' DDIM inside its own pipelines ----------------------------------------------

# each β schedule with a spacing; the pipeline alternates. DDIMScheduler steps from t to
# t − T//n, so only spacings whose timesteps are that far apart are DDIM on its own timesteps
SCHEDULES = {
    "linear": (dict(timestep_spacing="trailing"), diffusers.DDPMPipeline),
    "scaled_linear": (dict(timestep_spacing="leading", steps_offset=1), diffusers.DDIMPipeline),
    "squaredcos_cap_v2": (dict(timestep_spacing="leading"), diffusers.DDIMPipeline),
}


@pytest.mark.parametrize("beta_schedule", list(SCHEDULES))
@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
@torch.no_grad()
def test_euler_reproduces_ddim_in_its_pipelines(unet, prediction, beta_schedule):
    spacing, pipeline = SCHEDULES[beta_schedule]
    ddim = diffusers.DDIMScheduler(
        beta_schedule=beta_schedule, prediction_type=prediction, clip_sample=False, set_alpha_to_one=True,
        **spacing,
    )  # fmt: skip
    pipe = pipeline(unet, ddim)
    with counted(unet, prediction):
        ref = run(pipe, 10)
        ref_t = pipe.scheduler.timesteps.clone()
        pipe.scheduler = ODEScheduler.from_config(
            pipe.scheduler.config, solver="euler", grid="timestep_spacing"
        )
        with counted(unet, "sample") as calls:  # counts only; the outer hook shapes the output
            ours = run(pipe, 10)
    assert isinstance(pipe.scheduler, ODEScheduler)
    assert torch.equal(pipe.scheduler.timesteps, ref_t)
    assert calls == ref_t.tolist()
    err = (ours - ref).abs().max().item()
    assert err <= 1e-5, err


# exact NFE, and the same result as odediff.sample -----------------------------------------------


@pytest.mark.parametrize("nfe", [5, 10, 20])
@pytest.mark.parametrize("solver", FIXED)
@torch.no_grad()
def test_pipeline_spends_exactly_nfe_and_equals_sample(unet64, solver, nfe):
    ddpm = diffusers.DDPMScheduler()
    pipe = diffusers.DDPMPipeline(unet64, ddpm)
    pipe.scheduler = ODEScheduler.from_config(ddpm.config, solver=solver, grid=odediff.grids.DEFAULT_GRID)
    model = odediff.from_diffusers(unet64, diffusers.DDPMScheduler())
    with counted(unet64) as calls:
        ours = run(pipe, nfe)
        assert len(calls) == len(pipe.scheduler.timesteps) == nfe
        ref, info = odediff.sample(
            model, noise(dtype=torch.float64), solver=solver, nfe=nfe, return_info=True
        )
    assert info.nfe == nfe
    grid = make_grid(model.schedule, odediff.SOLVERS[solver].intervals(nfe))
    assert torch.equal(pipe.scheduler.grid_sigmas, grid)
    err = (ours - ref).abs().max().item()
    assert err <= 1e-10, err


@torch.no_grad()
def test_stochastic_ddim_draws_from_the_pipeline_generator(unet):
    ddpm = diffusers.DDPMScheduler()
    pipe = diffusers.DDPMPipeline(unet, ddpm)
    pipe.scheduler = ODEScheduler.from_config(
        ddpm.config, solver="ddim", solver_options={"eta": 1.0}, grid="quadratic_t"
    )
    model = odediff.from_diffusers(unet, ddpm)
    g = torch.Generator().manual_seed(3)
    with counted(unet) as calls:
        ours = run(pipe, 8, seed=3)
        assert len(calls) == 8
        ref = odediff.sample(
            model, torch.randn(SHAPE, generator=g), solver="ddim", eta=1.0, nfe=8, generator=g
        )
        other = run(pipe, 8, seed=4)
    assert (ours - ref).abs().max().item() <= 1e-5
    assert (ours - other).abs().max().item() > 0.1  # the noise does come from the generator


def test_heun_stages_are_timesteps_of_their_own():
    s = ODEScheduler(solver="heun", grid="log_snr")
    s.set_timesteps(5)  # grid σ0 > σ1 > σ2 > 0: Heun, Heun, then Euler into σ = 0
    g = s.grid_sigmas.tolist()
    assert len(g) == 4
    # Heun's second stage is at σ + (σ' − σ), σ' to round-off
    assert s.evaluation_sigmas.tolist() == [g[0], g[0] + (g[1] - g[0]), g[1], g[1] + (g[2] - g[1]), g[2]]
    t = [s.schedule.t_of_sigma(v) for v in (g[0], g[1], g[1], g[2], g[2])]
    assert s.timesteps.dtype == torch.float32 and s.timesteps[1] != s.timesteps[1].round()
    assert s.timesteps.tolist() == pytest.approx(t, rel=1e-6)
    assert s.order == 1 and s.solver.order == 2

    s = ODEScheduler(solver="heun", grid="log_snr", snap_timesteps=True)
    s.set_timesteps(5)
    assert s.timesteps.dtype == torch.int64
    assert s.timesteps.tolist() == [round(v) for v in t]

    s = ODEScheduler(solver="heun", grid="timestep_spacing")  # integer timesteps, stages included
    s.set_timesteps(5)
    assert s.timesteps.tolist() == [800, 400, 400, 0, 0]  # 3 of DDIM's 5 steps, stages included


# the pipeline's own sample, image-to-image, save/load ---------------------------------------------


def loop(scheduler, unet, x, *, change=None):
    """A hand-written pipeline loop; ``change(i, x)`` may replace the sample before step i."""
    for i, t in enumerate(scheduler.timesteps):
        if change is not None:
            x = change(i, x)
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return x


@torch.no_grad()
def test_a_sample_changed_by_the_pipeline_is_taken(unet):
    ddpm = diffusers.DDPMScheduler()
    model = odediff.from_diffusers(unet, ddpm)
    s = ODEScheduler.from_config(ddpm.config, solver="euler")
    s.set_timesteps(6)
    delta = 0.1 * noise(2)
    with counted(unet):
        plain = loop(s, unet, noise())
        s.set_timesteps(6)
        same = loop(s, unet, noise(), change=lambda i, x: x.clone() if i == 3 else x)
        s.set_timesteps(6)
        changed = {}
        inpainted = loop(
            s, unet, noise(), change=lambda i, x: changed.setdefault(i, x + delta) if i == 3 else x
        )
        ref = odediff.sample(model, changed[3], solver="euler", sigmas=s.grid_sigmas[3:])
    assert torch.equal(same, plain)  # an equal copy keeps the float64 state
    assert (inpainted - ref).abs().max().item() <= 1e-5
    assert (inpainted - plain).abs().max().item() > 1e-3


@pytest.mark.parametrize("grid", [None, "quadratic_t", "karras"])
@pytest.mark.parametrize("solver", ["adams", "heun", "belm", "ddim"])
@torch.no_grad()
def test_begin_index_starts_where_ddim_starts_from_any_entry(unet, solver, grid):
    """Every begin_index k (Heun's second evaluations too) starts at DDIM's k-th timestep for
    the same num_inference_steps, spends the n − k evaluations left, and is the solve
    odediff.sample makes from there on the grid it reports."""
    ddpm = diffusers.DDPMScheduler()
    model = odediff.from_diffusers(unet, ddpm)
    s = ODEScheduler.from_config(ddpm.config, solver=solver, grid=grid)
    ddim = diffusers.DDIMScheduler.from_config(ddpm.config)
    n = 8
    ddim.set_timesteps(n)
    x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    for k in range(1, n):
        s.set_timesteps(n)
        if k == n - 1 and solver == "belm":  # a two-step method needs two evaluations
            with pytest.raises(
                ValueError, match="begin_index: 7 leaves 1 of the 8 evaluations; .*belm needs"
            ):
                s.set_begin_index(k)
            continue
        view = s.timesteps[k:]  # what a pipeline holds
        s.set_begin_index(k)
        assert int(view[0]) == int(ddim.timesteps[k])
        assert torch.equal(view, s.timesteps[k:]) and len(view) == n - k
        x = s.add_noise(x0, noise(), view[:1])
        sigma = float(s.evaluation_sigmas[k])
        assert sigma == pytest.approx(float(s.schedule.sigma_of_t(ddim.timesteps[k])), rel=1e-12)
        assert torch.allclose(x, (x0 + sigma * noise()) / math.sqrt(1 + sigma**2), atol=1e-6)
        with counted(unet) as calls:
            ours = x
            for t in view:
                ours = s.step(unet(ours, t).sample, t, ours).prev_sample
            assert len(calls) == n - k
            g = s.grid_sigmas
            assert float(g[0]) == sigma and float(g[-1]) == 0.0
            ref = odediff.sample(model, x, solver=solver, sigmas=g, nfe=n - k)
        assert (ours - ref).abs().max().item() <= 1e-5, k


def test_begin_index_on_a_custom_grid_starts_at_its_own_entry():
    sigmas = [80.0, 20.0, 5.0, 1.0, 0.2, 0.0]
    s = ODEScheduler(solver="adams")
    s.set_timesteps(sigmas=sigmas)
    s.set_begin_index(2)
    assert s.grid_sigmas.tolist() == pytest.approx(sigmas[2:]) and len(s.timesteps[2:]) == 3
    heun = ODEScheduler(solver="heun")
    heun.set_timesteps(sigmas=sigmas)  # heun, heun, heun, heun, then euler into 0: 9 entries
    heun.set_begin_index(2)  # the first evaluation of the second step
    assert heun.grid_sigmas.tolist() == pytest.approx(sigmas[1:])
    with pytest.raises(
        ValueError, match=r"begin_index: 1 leaves 8 of the 9 .* cannot start at timesteps\[1\] of a custom"
    ):
        heun.set_begin_index(1)  # a second evaluation: the given grid has no point to restart from


@torch.no_grad()
def test_save_and_load_round_trip(unet, tmp_path):
    ddpm = diffusers.DDPMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction")
    pipe = diffusers.DDPMPipeline(unet, ddpm)
    tuned = make_grid(odediff.from_diffusers(unet, ddpm).schedule, 7, "log_snr").tolist()
    for i, kwargs in enumerate(
        [
            dict(solver="heun", grid="karras", nfe=9),
            dict(solver="adams", solver_options={"order": 4}, sigmas=tuned),
        ]
    ):
        pipe.scheduler = ODEScheduler.from_config(ddpm.config, **kwargs)
        pipe.scheduler.save_config(tmp_path / str(i))
        loaded = ODEScheduler.from_pretrained(tmp_path / str(i))
        public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}
        assert public(loaded.config) == public(pipe.scheduler.config)
        assert loaded.solver == pipe.scheduler.solver
        with (
            counted(unet, "v_prediction") as calls,
            pytest.warns(UserWarning, match="num_inference_steps=50"),
        ):
            a = run(pipe, 50)
            pipe.scheduler = loaded
            b = run(pipe, 50)
        assert len(calls) == 2 * (9 if i == 0 else 7)  # the config's budget, not num_inference_steps
        assert torch.equal(a, b)
    assert loaded.config.sigmas == tuned  # floats survive JSON bit for bit

    pipe.save_pretrained(tmp_path / "pipe")  # a whole pipeline finds the scheduler's class again
    again = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert type(again.scheduler) is ODEScheduler
    assert public(again.scheduler.config) == public(loaded.config)


SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="leading",
          steps_offset=1, clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True)  # fmt: skip
SOURCES = ["DDIMScheduler", "DPMSolverMultistepScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
           "UniPCMultistepScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler"]  # fmt: skip


@pytest.mark.parametrize("source", SOURCES)
def test_img2img_starts_where_its_source_scheduler_starts(source):
    """StableDiffusionImg2ImgPipeline's own get_timesteps, on the scheduler alone: at every
    strength ODEScheduler's first timestep is the replaced scheduler's, for any grid and solver."""
    from types import SimpleNamespace

    stock = getattr(diffusers, source).from_config(SD)
    pick = diffusers.StableDiffusionImg2ImgPipeline.get_timesteps
    for solver, grid in [("adams", None), ("heun", None), ("adams", "quadratic_t"), ("belm", "karras")]:
        ours = ODEScheduler.from_config(stock, solver=solver, grid=grid)
        assert ours.config.source == source
        for n in (10, 25):
            for strength in (0.3, 0.5, 0.8, 1.0):
                stock.set_timesteps(n)
                ours.set_timesteps(n)
                ref, _ = pick(SimpleNamespace(scheduler=stock), n, strength, "cpu")
                got, steps = pick(SimpleNamespace(scheduler=ours), n, strength, "cpu")
                assert round(float(got[0])) == round(float(ref[0])), (solver, grid, n, strength)
                assert len(got) == steps == int(n * strength)  # every entry is one evaluation


# the attributes pipelines and editing methods read ------------------------------------------------


def test_public_attributes_are_the_stock_schedulers():
    cfg = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="leading",
               steps_offset=1)  # fmt: skip
    ddim, ddpm = diffusers.DDIMScheduler(**cfg), diffusers.DDPMScheduler(**cfg)
    euler = diffusers.EulerDiscreteScheduler(**cfg)
    s = ODEScheduler.from_config(euler, solver="euler")
    assert s.config.source == "EulerDiscreteScheduler"
    for name in ("betas", "alphas", "alphas_cumprod"):
        assert torch.equal(getattr(s, name), getattr(ddim, name)), name
    assert float(s.final_alpha_cumprod) == 1.0  # every solve ends at σ = 0
    assert s.timesteps.dtype == torch.int64 and torch.equal(s.timesteps, ddim.timesteps)  # training ones
    assert torch.allclose(s.sigmas, euler.sigmas, rtol=1e-6) and s.sigmas.dtype == torch.float32
    s.set_timesteps(10)
    euler.set_timesteps(10)
    assert s.timesteps.dtype == torch.int64 and torch.equal(s.timesteps, euler.timesteps.long())
    assert torch.allclose(s.sigmas, euler.sigmas, rtol=1e-6)  # σ of each evaluation, then 0
    heun = ODEScheduler.from_config(ddim, solver="heun", grid="log_snr")
    heun.set_timesteps(7)
    assert heun.timesteps.dtype == torch.float32  # fractional t(σ)
    assert heun.sigmas[:-1].tolist() == pytest.approx(heun.evaluation_sigmas.tolist(), rel=1e-6)
    x0, eps = noise(1), noise(2)
    t = torch.tensor([10, 500])
    assert torch.allclose(s.get_velocity(x0, eps, t), ddpm.get_velocity(x0, eps, t), atol=1e-6)
    assert torch.allclose(s.add_noise(x0, eps, t), ddpm.add_noise(x0, eps, t), atol=1e-6)
    names = {c.__name__ for c in s.compatibles}
    assert {"DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler"} <= names
    with pytest.raises(ValueError, match="timesteps: empty; with img2img, strength is too small"):
        s.add_noise(x0, eps, torch.tensor([], dtype=torch.int64))
    with pytest.raises(ValueError, match="source: expected the name of a diffusers scheduler class"):
        ODEScheduler(source="NoSuchScheduler")


@torch.no_grad()
def test_custom_sigmas_follow_euler_convention():
    """n σ values are n − 1 steps, ending at the last one: the same evaluations and result as
    EulerDiscreteScheduler (whose sample is x̄ = x·sqrt(1+σ²), VE-scaled)."""
    sigmas = [14.0, 5.0, 1.0, 0.1]
    euler, ours = diffusers.EulerDiscreteScheduler(), ODEScheduler(solver="euler")
    euler.set_timesteps(sigmas=sigmas)
    ours.set_timesteps(sigmas=sigmas)
    assert len(ours.timesteps) == len(euler.timesteps) == 3
    assert ours.timesteps.tolist() == pytest.approx(euler.timesteps.tolist(), abs=1e-3)
    net = lambda x, t: 0.5 * x + 0.01 * t
    x, xe = noise(), noise() * math.sqrt(1 + 14.0**2)
    for t_ours, t_euler in zip(ours.timesteps, euler.timesteps):
        x = ours.step(net(x, t_ours), t_ours, x).prev_sample
        xe = euler.step(net(euler.scale_model_input(xe, t_euler), t_euler), t_euler, xe).prev_sample
    err = (x * math.sqrt(1 + 0.1**2) - xe).abs().max().item()
    assert err <= 1e-6 * xe.abs().max().item(), err  # float32 round-off of |x̄| ~ 10


# bad input ---------------------------------------------------------------------------------------


def test_bad_input():
    cfg = diffusers.DDPMScheduler().config
    with pytest.raises(ValueError, match="solver: unknown solver 'adam'"):
        ODEScheduler.from_config(cfg, solver="adam")
    for adaptive in ("rk45", "torchdiffeq:dopri5"):
        with pytest.raises(ValueError, match=f"solver: {adaptive} is adaptive .* planned before it starts"):
            ODEScheduler.from_config(cfg, solver=adaptive)
    with pytest.raises(TypeError, match=r"solver_options: adams: unknown option\(s\) \['eta'\]"):
        ODEScheduler.from_config(cfg, solver="adams", solver_options={"eta": 0.5})
    with pytest.raises(TypeError, match="solver: expected a solver name"):
        ODEScheduler.from_config(cfg, solver=odediff.SOLVERS["heun"])
    for solver in ("bdia", "belm"):  # two-step solvers start with one Euler step
        s = ODEScheduler.from_config(cfg, solver=solver)
        with pytest.raises(ValueError, match=f"num_inference_steps: {solver} needs .* ≥ 2, got 1"):
            s.set_timesteps(1)
    with pytest.raises(ValueError, match="num_inference_steps: adams needs .* ≥ 1, got 0"):
        ODEScheduler.from_config(cfg).set_timesteps(0)
    with pytest.raises(ValueError, match="nfe: expected a whole number"):
        ODEScheduler.from_config(cfg, nfe=0)
    with pytest.raises(ValueError, match="prediction_type: expected one of"):
        ODEScheduler.from_config(cfg, prediction_type="flow")
    with pytest.raises(ValueError, match="beta_schedule: expected 'linear'"):
        ODEScheduler.from_config(cfg, beta_schedule="exponential")
    with pytest.raises(ValueError, match="grid: expected one of"):
        ODEScheduler.from_config(cfg, grid="uniform")
    with pytest.raises(ValueError, match="nfe: adams spends nfe=5 on 5 intervals, but the grid given has 3"):
        ODEScheduler.from_config(cfg, sigmas=[80.0, 1.0, 0.1, 0.0], nfe=5)

    s = ODEScheduler.from_config(cfg, solver="euler")
    x = torch.zeros(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps: call"):
        s.step(x, 999, x)
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="timestep: 400.0 is not a timestep where a euler step starts"):
        s.step(x, 400, x)
    with pytest.raises(
        ValueError, match="eta: 0.5 given, but η is the ddim solver's and this scheduler's solver is euler"
    ):
        s.step(x, s.timesteps[0], x, eta=0.5)
    with pytest.raises(ValueError, match=r"model_output: shape \(2, 6, 8, 8\) differs"):
        s.step(torch.zeros(2, 6, 8, 8), s.timesteps[0], x)
    s.step(x, s.timesteps[0], x)
    with pytest.raises(ValueError, match=r"timestep: expected .* \(scheduler.timesteps\[1\]\), got 999.0"):
        s.step(x, 999, x)


def test_needs_diffusers_only_when_imported(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    path = Path(odediff.__file__).parent / "diffusers.py"
    spec = importlib.util.spec_from_file_location("odediff._diffusers_probe", path)
    with pytest.raises(ImportError, match=r"pip install 'odediff\[diffusers\]'"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
