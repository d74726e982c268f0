"""Orders of convergence, exact NFE budgets, round trips and the η family."""

import math

import numpy as np
import pytest
import torch

import odediff
from odediff import grids
from odediff.solvers import SOLVERS, Adams
from odediff.zoo import gmm_digits

FIXED = [name for name, s in SOLVERS.items() if not s.adaptive]
EPS = dict(variable="sigma", predict="eps", corrector=False)  # Adams on ε in σ


def noise64(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def slope(nfes, errs):
    return -np.polyfit(np.log(nfes), np.log(errs), 1)[0]


def flow_error(model, solver, n, **opts):
    """Max error of one solve from σ_max to σ_min (no final step) on a log-SNR grid."""
    sig = grids.log_snr(model.schedule, n + 1)[:-1]
    x = noise64(4, 16)
    out, info = odediff.sample(model, x, solver=solver, sigmas=sig, return_info=True, **opts)
    s0, s1 = float(sig[0]), float(sig[-1])
    exact = model.flow(x * math.sqrt(1 + s0 * s0), s0, s1) / math.sqrt(1 + s1 * s1)
    return info.nfe, (out - exact).abs().max().item()


@pytest.mark.parametrize(
    "solver, opts, lo, hi",
    [
        ("euler", {}, 0.9, 1.1),
        ("ddim", {}, 0.9, 1.1),
        ("heun", {}, 1.85, 2.2),
        ("adams", {**EPS, "order": 2, "weights": "exact"}, 1.85, 2.3),
        ("adams", {**EPS, "order": 3, "weights": "exact"}, 2.8, 3.3),
        ("adams", {**EPS, "order": 4, "weights": "exact"}, 3.6, 4.5),
        ("adams", {**EPS, "order": 4, "variable": "log_sigma", "weights": "exact"}, 3.7, 4.5),
        # the PEC corrector (Adams–Moulton through one more ε) makes order k of a k − 1 predictor
        ("adams", {**EPS, "order": 2, "weights": "fixed", "corrector": True}, 1.85, 2.3),
        ("adams", {**EPS, "order": 3, "weights": "exact", "corrector": True}, 2.8, 3.3),
        ("adams", {**EPS, "order": 4, "weights": "exact", "corrector": True}, 3.6, 4.5),
        # constant-step weights on a non-uniform (here geometric) grid are only 2nd order
        ("adams", {**EPS, "weights": "fixed"}, 1.85, 2.3),
        # the default: order 3 on the data prediction in log σ, with the corrector
        ("adams", {}, 2.8, 3.3),
    ],
)
def test_empirical_order(gauss, solver, opts, lo, hi):
    res = [flow_error(gauss, solver, n, **opts) for n in (80, 160, 320)]
    p = slope(*zip(*res))
    assert lo <= p <= hi, (p, res)


def test_rk45_error_follows_tolerance(gauss):
    errs = []
    for tol in (1e-4, 1e-6, 1e-8):
        sig = torch.tensor([gauss.schedule.sigma_max, gauss.schedule.sigma_min], dtype=torch.float64)
        x = noise64(4, 16)
        out = odediff.sample(gauss, x, solver="rk45", sigmas=sig, rtol=tol, atol=tol)
        s0, s1 = float(sig[0]), float(sig[1])
        exact = gauss.flow(x * math.sqrt(1 + s0 * s0), s0, s1) / math.sqrt(1 + s1 * s1)
        errs.append((out - exact).abs().max().item())
    assert errs[0] > errs[1] > errs[2]
    assert all(e < 100 * t for e, t in zip(errs, (1e-4, 1e-6, 1e-8))), errs


@pytest.mark.parametrize("solver", FIXED)
@pytest.mark.parametrize("grid", sorted(grids.GRIDS))
def test_counted_nfe_equals_budget(gauss, solver, grid):
    for nfe in (1, 2, 3, 4, 5, 6, 7, 10, 15, 20, 33):
        if nfe == 1 and SOLVERS[solver].reversible:  # two-step: needs two intervals
            with pytest.raises(ValueError, match="nfe: .* ≥ 2"):
                odediff.sample(gauss, noise64(2, 4), solver=solver, nfe=nfe, grid=grid)
            continue
        gauss.calls = 0
        _, info = odediff.sample(gauss, noise64(2, 4), solver=solver, nfe=nfe, grid=grid, return_info=True)
        assert info.nfe == nfe == gauss.calls, (solver, grid, nfe, info.nfe, gauss.calls)


@pytest.mark.parametrize(
    "opts", [{}, {"corrector": True, "variable": "log_sigma", "order": 4}, {**EPS, "corrector": True}]
)
def test_corrector_spends_exactly_the_budget(gauss, opts):
    for nfe in (1, 2, 3, 5, 10, 17):
        gauss.calls = 0
        _, info = odediff.sample(gauss, noise64(2, 4), solver="adams", nfe=nfe, return_info=True, **opts)
        assert info.nfe == nfe == gauss.calls


@pytest.mark.parametrize("solver", ["rk45", "torchdiffeq:dopri5", "torchdiffeq:bosh3"])
def test_adaptive_counts_and_never_exceeds_max_nfe(gauss, solver):
    x = noise64(2, 4)
    gauss.calls = 0
    out, info = odediff.sample(gauss, x, solver=solver, rtol=1e-6, atol=1e-6, return_info=True)
    assert info.nfe == gauss.calls > 10
    ref = odediff.sample(gauss, x, solver="rk45", rtol=1e-10, atol=1e-10, max_nfe=20000)
    assert (out - ref).abs().max().item() < 1e-3
    gauss.calls = 0
    with pytest.raises(odediff.BudgetExceeded, match="max_nfe"):
        odediff.sample(gauss, x, solver=solver, rtol=1e-9, atol=1e-9, max_nfe=30)
    assert gauss.calls <= 30


@pytest.mark.parametrize("solver, order", [("euler", 1), ("heun", 2), ("adams", 2)])
def test_round_trip_error_shrinks_at_order(gauss, solver, order):
    x0 = gauss.mu + 0.5 * noise64(3, 16, seed=3)
    errs, nfes = [], (30, 60, 120)
    for n in nfes:
        z = odediff.encode(gauss, x0, solver=solver, nfe=n, grid="log_snr")
        back = odediff.decode(gauss, z, solver=solver, nfe=n, grid="log_snr")
        errs.append((back - x0).abs().max().item())
    assert slope(nfes, errs) >= order - 0.3, errs


def test_encode_reaches_the_exact_latent(gauss):
    """Encoding integrates the same ODE upwards: compare x_T with the closed-form flow."""
    x0 = noise64(2, 8, seed=5)
    z = odediff.encode(gauss, x0, solver="adams", order=4, weights="exact", nfe=400, grid="log_snr")
    s = gauss.schedule
    # leaving σ = 0 is one Euler step with ε evaluated at σ_min; then the exact flow upwards
    sig1 = float(grids.log_snr(s, 400).flip(0)[1])
    xb1 = x0 + sig1 * gauss.eps(x0, s.sigma_min)
    exact = gauss.flow(xb1, sig1, s.sigma_max) / math.sqrt(1 + s.sigma_max**2)
    assert (z - exact).abs().max().item() < 1e-5


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("corrector", [False, True])
def test_fixed_and_exact_weights_agree_on_a_uniform_grid(gauss, order, corrector):
    sig = torch.linspace(gauss.schedule.sigma_max, gauss.schedule.sigma_min, 30, dtype=torch.float64)
    x = noise64(3, 8)
    kw = dict(solver="adams", order=order, corrector=corrector, sigmas=sig, variable="sigma", predict="eps")
    a = odediff.sample(gauss, x, weights="fixed", **kw)
    b = odediff.sample(gauss, x, weights="exact", **kw)
    assert (a - b).abs().max().item() < 1e-12


def test_eta_zero_is_euler(gauss):
    x = noise64(2, 8)
    a = odediff.sample(gauss, x, solver="ddim", eta=0.0, nfe=12, grid="uniform_t")
    b = odediff.sample(gauss, x, solver="euler", nfe=12, grid="uniform_t")
    assert torch.equal(a, b)


def test_eta_one_all_steps_is_ddpm_ancestral(tiny_net):
    net = tiny_net.double()
    sched = odediff.DiscreteSchedule.linear()
    ac = sched.alphas_cumprod
    betas = 1 - ac / torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    x = noise64(2, 1, 8, 8, seed=7)
    ts = list(range(999, -1, -1))
    g = torch.Generator().manual_seed(11)
    ref = x.clone()
    with torch.no_grad():
        for t in ts:  # Ho et al. (2020), Algorithm 2, with σ_t² = β̃_t
            eps = net(ref, torch.full((2,), float(t), dtype=torch.float64))
            mean = (ref - betas[t] / (1 - ac[t]).sqrt() * eps) / (1 - betas[t]).sqrt()
            if t > 0:
                var = (1 - ac[t - 1]) / (1 - ac[t]) * betas[t]
                mean = mean + var.sqrt() * torch.randn(ref.shape, generator=g, dtype=torch.float64)
            ref = mean
        ours = odediff.sample(
            odediff.EpsModel(net, ac), x, solver="ddim", eta=1.0, timesteps=ts,
            generator=torch.Generator().manual_seed(11),
        )  # fmt: skip
    assert (ours - ref).abs().max().item() < 1e-9


def test_eta_reproducible_and_forward_noising(gauss):
    x = noise64(2, 8)
    g = lambda: torch.Generator().manual_seed(4)
    a = odediff.sample(gauss, x, solver="ddim", eta=0.5, nfe=10, generator=g())
    b = odediff.sample(gauss, x, solver="ddim", eta=0.5, nfe=10, generator=g())
    assert torch.equal(a, b)
    # upwards with η = 1 is the forward process: x_T | x_0 ~ N(sqrt(ᾱ_T) x_0, 1 − ᾱ_T)
    x0 = torch.full((20000, 1), 0.7, dtype=torch.float64)
    z = odediff.encode(gauss, x0, solver="ddim", eta=1.0, nfe=3, generator=g())
    aT = float(gauss.schedule.alphas_cumprod[-1])
    assert abs(z.mean().item() - math.sqrt(aT) * 0.7) < 0.03
    assert abs(z.var().item() - (1 - aT)) < 0.03


def test_eta_with_one_generator_per_image(gauss):
    """Item i of a batch drawn with generators [g_0, g_1, …] is what a batch of one drawn with
    g_i alone gives: the initial noise and every step's noise come from its own generator."""
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]
    kw = dict(solver="ddim", eta=0.5, nfe=6, shape=(2, 1, 4, 4))
    both = odediff.sample(gauss, generator=gens(1, 2), **kw)
    assert torch.equal(both, odediff.sample(gauss, generator=gens(1, 2), **kw))
    second = odediff.sample(gauss, generator=gens(2), **{**kw, "shape": (1, 1, 4, 4)})
    assert torch.equal(both[1:], second)
    assert not torch.equal(both[:1], second)
    x = noise64(2, 8)
    swapped = odediff.sample(gauss, x, solver="ddim", eta=0.5, nfe=6, generator=gens(2, 1))
    straight = odediff.sample(gauss, x, solver="ddim", eta=0.5, nfe=6, generator=gens(1, 2))
    assert (swapped - straight).abs().max() > 1e-3
    with pytest.raises(ValueError, match="generator: a list of 2 generators for a batch of 3; expected one"):
        odediff.sample(gauss, shape=(3, 1, 4, 4), solver="ddim", eta=0.5, nfe=6, generator=gens(1, 2))
    with pytest.raises(ValueError, match="generator: a list of 1 generators for a batch of 2"):
        odediff.sample(gauss, x, solver="ddim", eta=0.5, nfe=6, generator=gens(1))
    with pytest.raises(TypeError, match="generator: expected a list of torch.Generator, got .* int"):
        odediff.sample(gauss, x, solver="ddim", eta=0.5, nfe=6, generator=[1, 2])


@pytest.mark.parametrize("variable", ["sigma", "log_sigma"])
def test_blend_mixes_orders_and_keeps_each_step_consistent(variable):
    """β = 1 is plain Adams bit for bit; β = 0 gives the next lower order's weights; any β
    keeps Σ_j b_ij = ∫ w du over the step (the step integrates a constant ε exactly)."""
    sig = tuple(grids.quadratic_t(gmm_digits().schedule, 10).tolist())
    n = len(sig) - 1
    plain = Adams(order=3, variable=variable, predict="eps", corrector=False).coefficients(sig)
    assert (
        Adams(order=3, variable=variable, predict="eps", corrector=False, blend=(1.0,) * n).coefficients(sig)
        == plain
    )
    betas = tuple(torch.linspace(-0.5, 1.5, n, dtype=torch.float64).tolist())
    mixed = Adams(order=3, variable=variable, predict="eps", corrector=False, blend=betas).coefficients(sig)
    lower = Adams(order=2, variable=variable, predict="eps", corrector=False).coefficients(sig)
    zero = Adams(order=3, variable=variable, predict="eps", corrector=False, blend=(0.0,) * n).coefficients(
        sig
    )
    for i in range(n):
        a, b = sig[i], sig[i + 1]
        assert sum(mixed[i]) == pytest.approx(b - a, rel=1e-12, abs=1e-15), i
        if 2 <= i < n - 1:
            assert zero[i][:2] == pytest.approx(lower[i], rel=1e-12) and zero[i][2] == 0.0


def test_blend_bad_input():
    with pytest.raises(ValueError, match="blend: expected a sequence of numbers"):
        Adams(blend="x")
    with pytest.raises(ValueError, match="blend: expected finite"):
        Adams(blend=(1.0, float("nan")))
    with pytest.raises(ValueError, match=r"blend: expected one value per interval of the grid \(10\), got 3"):
        odediff.sample(gmm_digits(), torch.zeros(1, 1, 8, 8), nfe=10, blend=(1.0, 1.0, 1.0))


def test_adams_short_order_on_a_short_grid_from_a_high_sigma_max():
    """Four intervals or fewer from σ_max > 50: order 2 (``short_order``); else ``order``."""
    from odediff.grids import make_grid
    from odediff.schedules import DiscreteSchedule
    from odediff.solvers.adams import SHORT, Adams

    lin, sd = DiscreteSchedule.linear(), DiscreteSchedule.scaled_linear()
    a = Adams()
    assert a.order == 3 and SHORT == 4
    assert [a.order_on(make_grid(lin, n)) for n in (2, 4, 5, 10)] == [2, 2, 3, 3]
    assert a.order_on(make_grid(sd, 4)) == 3  # σ_max ≈ 14.6
    assert Adams(short_order=None).order_on(make_grid(lin, 4)) == 3
    assert Adams(order=4, short_order=1).order_on(make_grid(lin, 3)) == 1
    # the same steps as order 2 throughout, bit for bit, and order 3 with the rule off
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = odediff.EpsModel(lambda x, t: torch.tanh(x) * (1 + t.reshape(-1, 1) / 1000), lin)
    run = lambda **kw: odediff.sample(model, x, nfe=4, **kw)
    assert torch.equal(run(solver="adams"), run(solver=Adams(order=2, short_order=None)))
    assert not torch.equal(run(solver="adams"), run(solver=Adams(short_order=None)))
    with pytest.raises(ValueError, match="short_order"):
        Adams(short_order=5)


def test_adams_final_weight_by_grid_and_prediction():
    """``final``: ½ by default on grids of at most EXTRAPOLATED intervals with the data prediction,
    0 on longer ones and with ε (iPNDM's Euler); an explicit value holds on every grid."""
    from odediff.grids import make_grid
    from odediff.schedules import DiscreteSchedule
    from odediff.solvers.adams import EXTRAPOLATED, Adams

    lin = DiscreteSchedule.linear()
    on = lambda solver, n: solver.final_on(make_grid(lin, n))
    assert EXTRAPOLATED == 8
    assert [on(Adams(), n) for n in (2, 8, 9, 20)] == [0.5, 0.5, 0.0, 0.0]
    assert on(Adams(predict="eps", variable="sigma"), 5) == 0.0
    assert on(Adams(final=1.0), 20) == 1.0 and on(Adams(final=0), 5) == 0.0
    with pytest.raises(ValueError, match="final: expected None or a finite number"):
        Adams(final=float("inf"))
    with pytest.raises(ValueError, match="final: expected None or a finite number"):
        Adams(final="half")
    with pytest.raises(ValueError, match="final: extrapolates x̂_0, so it needs predict='x0'"):
        Adams(final=0.5, predict="eps", variable="sigma")
