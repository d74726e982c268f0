import functools
import math

import pytest
import torch

from odediff import grids
from odediff.schedules import DiscreteSchedule


def test_sigma_t_inverse_and_interpolation():
    s = DiscreteSchedule.linear()
    t = torch.tensor([0.0, 0.25, 1.0, 17.5, 500.3, 998.9, 999.0], dtype=torch.float64)
    sig = s.sigma_of_t(t)
    back = torch.tensor([s.t_of_sigma(float(x)) for x in sig], dtype=torch.float64)
    assert torch.allclose(back, t, atol=1e-9)
    # integer t: σ(t) = sqrt((1−ᾱ)/ᾱ) exactly; halfway: geometric mean of neighbours
    ac = s.alphas_cumprod
    assert torch.allclose(s.sigma_of_t(torch.tensor(3.0)), ((1 - ac[3]) / ac[3]).sqrt(), rtol=1e-14)
    mid = s.sigma_of_t(torch.tensor(3.5))
    assert math.isclose(float(mid), math.sqrt(float(s.sigmas[3] * s.sigmas[4])), rel_tol=1e-13)
    assert s.t_of_sigma(float(s.sigma_of_t(torch.tensor(3.4))), snap=True) == 3.0
    assert s.t_of_sigma(1e-9) == 0.0 and s.t_of_sigma(1e9) == 999.0


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (DiscreteSchedule.linear(), dict(beta_schedule="linear")),
        (
            DiscreteSchedule.scaled_linear(),
            dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        ),
        (DiscreteSchedule.cosine(), dict(beta_schedule="squaredcos_cap_v2")),
    ],
)
def test_schedules_match_diffusers(ours, theirs):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, **theirs).alphas_cumprod.double()
    assert torch.allclose(ours.alphas_cumprod, ref, rtol=1e-5, atol=1e-7)


def test_zero_terminal_snr_is_an_error_or_clamped():
    ac = DiscreteSchedule.linear().alphas_cumprod.clone()
    ac[-1] = 0.0
    with pytest.raises(ValueError, match="terminal_alpha_cumprod"):
        DiscreteSchedule(ac)
    s = DiscreteSchedule(ac, terminal_alpha_cumprod=2**-24)
    assert math.isfinite(s.sigma_max) and math.isclose(s.sigma_max, math.sqrt(2**24 - 1))


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.tensor([0.9, 0.95, 0.5]), "strictly decreasing"),
        (torch.tensor([1.5, 0.5]), r"\(0, 1\]"),
        (torch.tensor([0.9]), "at least 2"),
        (torch.tensor([0.9, float("nan")]), "NaN"),
    ],
)
def test_bad_alphas_cumprod(bad, match):
    with pytest.raises(ValueError, match=match):
        DiscreteSchedule(bad)


@pytest.mark.parametrize("name", sorted(grids.GRIDS))
@pytest.mark.parametrize("n", [1, 2, 5, 10, 37])
def test_grid_shape(name, n):
    s = DiscreteSchedule.linear()
    g = grids.make_grid(s, n, name)
    assert g.dtype == torch.float64 and g.numel() == n + 1
    assert g[-1] == 0 and math.isclose(float(g[0]), s.sigma_max, rel_tol=1e-12)
    assert (g[1:] < g[:-1]).all()
    # trailing by default: the last positive point is one step of the family above σ_min
    family = grids.GRIDS[name]
    if name in ("budget_t", "auto"):  # the family of a budget is the t-power of that budget's p
        family = functools.partial(grids.power_t, p=grids.budget_power(n))
    ref = family(s, n + 1, sigma_last=s.sigma_min)
    assert torch.allclose(g[:-1], ref[:-2], rtol=1e-12)
    if n > 1:
        low = grids.make_grid(s, n, name, sigma_last=s.sigma_min)
        assert math.isclose(float(low[-2]), s.sigma_min, rel_tol=1e-12)


def test_budget_t_is_the_t_power_of_its_budget():
    s = DiscreteSchedule.linear()
    powers = [grids.budget_power(n) for n in range(1, 12)]
    assert powers == [1.25] * 5 + [1.7] + [2.0] * 5
    for n in range(1, 12):
        assert torch.equal(grids.budget_t(s, n), grids.power_t(s, n, p=powers[n - 1]))
    assert torch.equal(grids.budget_t(s, 7), grids.quadratic_t(s, 7))


def test_auto_chooses_by_the_schedules_top_noise_level():
    """log σ on a schedule that ends with visible signal (σ_max ≤ 50), budget_t above."""
    sd = DiscreteSchedule.scaled_linear()
    assert sd.sigma_max < grids.LOW_SIGMA_MAX < DiscreteSchedule.linear().sigma_max
    assert grids.DEFAULT_GRID == "auto"
    for n in (1, 4, 6, 10):
        assert torch.equal(grids.make_grid(sd, n), grids.log_snr(sd, n))
        for far in (DiscreteSchedule.linear(), DiscreteSchedule.cosine()):
            assert torch.equal(grids.make_grid(far, n), grids.budget_t(far, n))
    last = 0.2
    assert torch.equal(grids.auto(sd, 5, sigma_last=last), grids.log_snr(sd, 5, sigma_last=last))
    with pytest.raises(ValueError, match="sigma_last"):
        grids.auto(sd, 5, sigma_last=sd.sigma_max * 2)


def test_grid_families():
    s = DiscreteSchedule.linear()
    u = 1 - torch.arange(6, dtype=torch.float64) / 6  # trailing: u_i = 1 − i/n
    assert torch.allclose(grids.uniform_t(s, 6)[:-1], s.sigma_of_t(999 * u))
    assert torch.allclose(grids.quadratic_t(s, 6)[:-1], s.sigma_of_t(999 * u**2))
    t = torch.linspace(999, 0, 6, dtype=torch.float64)  # ending at σ_min: u_i = 1 − i/(n − 1)
    assert torch.allclose(grids.uniform_t(s, 6, sigma_last=s.sigma_min)[:-1], s.sigma_of_t(t))
    ls = grids.log_snr(s, 6)[:-1].log()
    assert torch.allclose(ls[1:] - ls[:-1], (ls[1] - ls[0]).expand(5))
    k = grids.karras(s, 6, rho=7.0)[:-1] ** (1 / 7)
    assert torch.allclose(k[1:] - k[:-1], (k[1] - k[0]).expand(5))
    ts = [999, 899, 799, 0]
    assert torch.equal(
        grids.from_timesteps(s, ts), torch.cat([s.sigmas[ts], torch.zeros(1, dtype=torch.float64)])
    )


@pytest.mark.parametrize(
    "sigmas, match",
    [
        ([10.0, 20.0, 5.0, 0.0], "monotone"),
        ([10.0, 10.0, 0.0], "monotone"),
        ([1e6, 1.0, 0.0], "within"),
        ([1.0, -0.1], "within"),
        ([1.0], "at least 2"),
    ],
)
def test_bad_sigmas(sigmas, match):
    with pytest.raises(ValueError, match=f"sigmas.*{match}"):
        grids.check_sigmas(sigmas, DiscreteSchedule.linear())


def test_bad_timesteps():
    s = DiscreteSchedule.linear()
    with pytest.raises(ValueError, match="timesteps.*decreasing"):
        grids.from_timesteps(s, [10, 20])
    with pytest.raises(ValueError, match="timesteps.*999"):
        grids.from_timesteps(s, [1000, 20])
    with pytest.raises(ValueError, match="grid: unknown grid 'nope'"):
        grids.make_grid(s, 5, "nope")


def test_python_lists_keep_float64():
    s = DiscreteSchedule.linear()
    g = grids.check_sigmas([s.sigma_max, 1.0 / 3.0, 0.0], s)
    assert g[0].item() == s.sigma_max and g[1].item() == 1.0 / 3.0
    assert (
        grids.from_timesteps(s, [998.7, 3.3])[0].item()
        == s.sigma_of_t(torch.tensor(998.7, dtype=torch.float64)).item()
    )
    ac = s.alphas_cumprod.tolist()
    assert torch.equal(DiscreteSchedule(ac).alphas_cumprod, s.alphas_cumprod)
