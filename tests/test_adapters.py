"""Adapters: diffusers models ≡ diffusers' DDIM, the k-diffusion denoiser bridge, guidance in one call."""

import copy
import importlib.util
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import odediff
from odediff.adapters import from_denoiser, from_diffusers, to_denoiser
from odediff.guidance import Guided
from odediff.schedules import DiscreteSchedule

diffusers = pytest.importorskip("diffusers")

BLOCKS = dict(sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)


def ddim(prediction="epsilon", spacing="leading", steps=10, beta_schedule="linear", **kwargs):
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule=beta_schedule, clip_sample=False, set_alpha_to_one=True,
        prediction_type=prediction, timestep_spacing=spacing, **kwargs,
    )  # fmt: skip
    sched.set_timesteps(steps)
    return sched


@pytest.fixture(scope="module")
def cond_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        in_channels=1, out_channels=1, cross_attention_dim=16, attention_head_dim=8, **BLOCKS,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()  # fmt: skip


@contextmanager
def trained_like(unet, prediction):
    """ε-prediction only: ε = x_t + 0.1·unet, as a trained predictor has ε ≈ x_t at high noise.

    A random ε-UNet drives samples to |x_0| ~ σ_max (hundreds), where float32 round-off alone
    exceeds 1e-5; random x̂_0 or v outputs are already O(1) like trained ones.
    """
    if prediction != "epsilon":
        yield
        return
    hook = unet.register_forward_hook(lambda mod, args, out: type(out)(sample=args[0] + 0.1 * out.sample))
    try:
        yield
    finally:
        hook.remove()


def ddim_loop(unet, sched, noise):
    """diffusers' own DDIM (η = 0) loop."""
    x = noise.clone()
    for t in sched.timesteps:
        x = sched.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    return x


# diffusers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
@torch.no_grad()
def test_from_diffusers_equals_diffusers_ddim(unet, prediction, spacing):
    sched = ddim(prediction, spacing)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    model = from_diffusers(unet, sched)
    assert model.prediction == prediction
    with trained_like(unet, prediction):
        ref = ddim_loop(unet, sched, noise)
        ours, info = odediff.sample(model, noise, solver="euler", timesteps=sched.timesteps, return_info=True)
    assert info.nfe == 10
    err = (ours - ref).abs().max().item()
    assert err <= 1e-5, err


@torch.no_grad()
def test_zero_terminal_snr_passes_terminal_alpha(unet):
    # with "linear" β, ᾱ_998 < 2**-24 already; Stable Diffusion's "scaled_linear" leaves room
    sched = ddim("v_prediction", "trailing", beta_schedule="scaled_linear", rescale_betas_zero_snr=True)
    assert sched.alphas_cumprod[-1] == 0
    with pytest.raises(ValueError, match="terminal_alpha_cumprod"):
        from_diffusers(unet, sched)
    # float64: in float32, x̄ = 4096·x_T alone costs ~4e-5 through the first step's cancellation
    unet = copy.deepcopy(unet).double()
    model = from_diffusers(unet, sched, terminal_alpha_cumprod=2**-24)
    assert model.schedule.sigma_max == pytest.approx(math.sqrt(2**24 - 1))
    # diffusers' DDIM on the same schedule with that 0 replaced
    sched.alphas_cumprod[-1] = 2**-24
    noise = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours = odediff.sample(model, noise, solver="euler", timesteps=sched.timesteps)
    assert (ours - ddim_loop(unet, sched, noise)).abs().max().item() <= 1e-5


@torch.no_grad()
def test_conditional_unet_gets_its_kwargs(cond_unet):
    sched = ddim()
    c = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(3))
    x_t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    model = from_diffusers(cond_unet, sched, encoder_hidden_states=c)
    sigma = float(model.schedule.sigmas[500])
    ours = model.eps(x_t * math.sqrt(1 + sigma**2), sigma)
    direct = cond_unet(x_t, torch.tensor([500, 500]), encoder_hidden_states=c).sample
    assert (ours - direct).abs().max().item() <= 1e-5


# denoiser bridge ---------------------------------------------------------------------------


def gaussian_denoiser(mu=0.3, s=0.5):
    """x_0 ~ N(μ, s²): D(x̄, σ) = μ + s²(x̄ − μ)/(s² + σ²); μ may be a per-item tensor."""

    def D(xbar, sigma, mu=mu):
        sig2 = sigma.reshape(-1, *[1] * (xbar.ndim - 1)) ** 2
        if isinstance(mu, torch.Tensor):
            mu = mu.reshape(-1, *[1] * (xbar.ndim - 1))
        return mu + s * s * (xbar - mu) / (s * s + sig2)

    return D


def test_denoiser_round_trips(gauss):
    xbar = torch.randn(4, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 3
    sig = torch.tensor([0.05, 1.0, 1.0, 40.0], dtype=torch.float64)
    D = gaussian_denoiser()
    DD = to_denoiser(from_denoiser(D, DiscreteSchedule.linear()))
    assert torch.allclose(DD(xbar, sig), D(xbar, sig), rtol=0, atol=1e-12)
    assert torch.allclose(DD(xbar, 2.5), D(xbar, torch.full((4,), 2.5, dtype=torch.float64)), atol=1e-12)
    assert torch.equal(DD(xbar, 0.0), xbar)

    m = from_denoiser(to_denoiser(gauss), gauss.schedule)
    for sigma in (0.02, 1.0, 80.0):
        assert torch.allclose(m.eps(xbar, sigma), gauss.eps(xbar, sigma), rtol=0, atol=1e-10)


def test_denoiser_groups_by_sigma(gauss):
    xbar = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    sig = torch.tensor([1.0, 2.0, 1.0, 0.0, 2.0], dtype=torch.float64)
    out = to_denoiser(gauss)(xbar, sig)
    assert gauss.calls == 2  # one evaluation per distinct σ > 0
    expect = xbar.clone()  # σ = 0 rows: x̄ itself
    for v in (1.0, 2.0):
        rows = sig == v
        expect[rows] = xbar[rows] - v * gauss.eps(xbar[rows], v)
    assert torch.equal(out, expect)


def test_denoiser_sigma_range(gauss):
    D = to_denoiser(gauss)
    assert (D.sigma_min, D.sigma_max) == (gauss.schedule.sigma_min, gauss.schedule.sigma_max)


# guidance ----------------------------------------------------------------------------------


def test_guidance_one_call_per_evaluation_analytic():
    calls = []
    D = gaussian_denoiser()
    counted = lambda xbar, sigma, **kw: calls.append(xbar.shape[0]) or D(xbar, sigma, **kw)
    sched = DiscreteSchedule.linear()
    mu_c, mu_u = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    g = Guided(from_denoiser(counted, sched), cond={"mu": mu_c}, uncond={"mu": mu_u}, w=3.0)
    xbar = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    e_c = from_denoiser(D, sched, mu=mu_c).eps(xbar, 2.0)
    e_u = from_denoiser(D, sched, mu=mu_u).eps(xbar, 2.0)
    assert torch.allclose(g.eps(xbar, 2.0), e_u + 3.0 * (e_c - e_u), rtol=0, atol=1e-12)
    assert calls == [6]  # one call on the doubled batch
    for w, e in ((0.0, e_u), (1.0, e_c)):
        assert torch.equal(
            Guided(from_denoiser(D, sched), cond={"mu": mu_c}, uncond={"mu": mu_u}, w=w).eps(xbar, 2.0), e
        )

    calls.clear()
    noise = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    _, info = odediff.sample(g, noise, solver="heun", nfe=7, return_info=True)
    _, plain = odediff.sample(from_denoiser(D, sched, mu=mu_c), noise, solver="heun", nfe=7, return_info=True)
    assert info.nfe == plain.nfe == len(calls) == 7


@torch.no_grad()
def test_guidance_diffusers_conditional_unet(cond_unet):
    sched = ddim(steps=5)
    gen = torch.Generator().manual_seed(9)
    c, u = torch.randn(2, 3, 16, generator=gen), torch.randn(1, 3, 16, generator=gen)
    xbar = torch.randn(2, 1, 8, 8, generator=gen) * 3
    base = from_diffusers(cond_unet, sched)
    model_c = from_diffusers(cond_unet, sched, encoder_hidden_states=c)
    model_u = from_diffusers(cond_unet, sched, encoder_hidden_states=u.expand(2, 3, 16))
    e_c, e_u = model_c.eps(xbar, 2.0), model_u.eps(xbar, 2.0)
    # batched and separate calls differ by round-off only
    guided = lambda w: Guided(
        base, cond={"encoder_hidden_states": c}, uncond={"encoder_hidden_states": u}, w=w
    )
    assert torch.allclose(guided(7.5).eps(xbar, 2.0), e_u + 7.5 * (e_c - e_u), rtol=0, atol=1e-4)
    assert torch.allclose(guided(1.0).eps(xbar, 2.0), e_c, rtol=0, atol=1e-5)
    assert torch.allclose(guided(0.0).eps(xbar, 2.0), e_u, rtol=0, atol=1e-5)

    calls = []
    hook = cond_unet.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        _, info = odediff.sample(
            guided(4.0), xbar, solver="euler", timesteps=sched.timesteps, return_info=True
        )
        _, plain = odediff.sample(model_c, xbar, solver="euler", timesteps=sched.timesteps, return_info=True)
    finally:
        hook.remove()
    assert info.nfe == plain.nfe == 5
    assert calls == [4] * 5 + [2] * 5  # guided: one doubled call per evaluation


# bad inputs --------------------------------------------------------------------------------


def test_bad_diffusers_inputs(unet):
    with pytest.raises(TypeError, match="unet: expected"):
        from_diffusers("unet", ddim())
    with pytest.raises(TypeError, match="scheduler: expected"):
        from_diffusers(unet, "ddim")
    with pytest.raises(ValueError, match="prediction_type 'flow'"):
        from_diffusers(unet, ddim("flow"))
    torch.manual_seed(0)
    learned_var = diffusers.UNet2DModel(
        in_channels=1, out_channels=2, **BLOCKS,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    with pytest.raises(ValueError, match="output shape"), torch.no_grad():
        odediff.sample(from_diffusers(learned_var, ddim()), torch.randn(1, 1, 8, 8), solver="euler", nfe=2)


def test_bad_denoiser_inputs(gauss):
    sched = DiscreteSchedule.linear()
    with pytest.raises(TypeError, match="denoiser: expected a callable"):
        from_denoiser(3, sched)
    with pytest.raises(TypeError, match="schedule: expected a DiscreteSchedule"):
        from_denoiser(gaussian_denoiser(), "linear")
    with pytest.raises(ValueError, match="denoiser: returned"):
        from_denoiser(lambda x, s: x[:1], sched).eps(torch.ones(2, 3), 1.0)
    with pytest.raises(ValueError, match="σ > 0"):
        from_denoiser(gaussian_denoiser(), sched).eps(torch.ones(2, 3), 0.0)
    with pytest.raises(TypeError, match="model: expected an odediff model"):
        to_denoiser(gaussian_denoiser())
    D = to_denoiser(gauss)
    with pytest.raises(ValueError, match=r"sigma: expected a number or shape \(2,\)"):
        D(torch.ones(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match="sigma: expected finite values ≥ 0"):
        D(torch.ones(2, 3), -1.0)
    with pytest.raises(TypeError, match="xbar: expected a batch tensor"):
        D([1.0, 2.0], 1.0)


def test_bad_guidance_inputs(gauss):
    m = from_denoiser(gaussian_denoiser(), DiscreteSchedule.linear())
    mu = {"mu": torch.zeros(2)}
    with pytest.raises(TypeError, match=r"model: expected a model calling model\.net"):
        Guided(gauss, cond=mu, uncond=mu, w=2.0)
    with pytest.raises(TypeError, match="w: expected a real number"):
        Guided(m, cond=mu, uncond=mu, w="2")
    with pytest.raises(TypeError, match="cond, uncond: expected dicts"):
        Guided(m, cond=torch.zeros(2), uncond=mu, w=2.0)
    with pytest.raises(ValueError, match="expected the same keys"):
        Guided(m, cond=mu, uncond={"nu": torch.zeros(2)}, w=2.0)
    with pytest.raises(TypeError, match=r"cond, uncond\['mu'\]: expected batch tensors"):
        Guided(m, cond={"mu": 0.5}, uncond={"mu": 0.0}, w=2.0)
    with pytest.raises(ValueError, match=r"cond: \['mu'\] also given to the model"):
        Guided(from_denoiser(gaussian_denoiser(), m.schedule, mu=0.0), cond=mu, uncond=mu, w=2.0)
    g = Guided(m, cond={"mu": torch.zeros(3)}, uncond=mu, w=2.0)
    with pytest.raises(ValueError, match=r"cond\['mu'\]: batch 3 does not match the sample's batch 2"):
        g.eps(torch.ones(2, 4), 1.0)


def test_imports_without_diffusers(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    path = Path(odediff.__file__).parent / "adapters.py"
    spec = importlib.util.spec_from_file_location("odediff._adapters_probe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert callable(mod.from_diffusers)
