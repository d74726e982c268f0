"""The public API: info, callbacks, dtypes, inputs untouched, slerp, and every bad input."""

import math

import pytest
import torch

import odediff


def test_info_callback_and_progress(gauss, capsys):
    seen = []
    x = torch.randn(2, 4)
    out, info = odediff.sample(
        gauss, x, solver="heun", nfe=9, progress=True, callback=seen.append, return_info=True
    )
    assert info.nfe == 9 and info.steps == 5 and info.solver == "heun"
    assert torch.equal(info.sigmas, odediff.plan(gauss.schedule, odediff.get_solver("heun"), nfe=9))
    assert [s.index for s in seen] == list(range(5))
    assert [s.sigma for s in seen] == info.sigmas[1:].tolist()
    assert seen[-1].nfe == 9 and torch.equal(seen[-1].xbar.to(out.dtype), out)  # σ = 0: x̄ = x


def test_partial_grid_starts_below_sigma_max(gauss):
    """Image-to-image: start at σ = 2 from x_t in VP scale; the result is the flow from there."""
    x0 = torch.randn(3, 8, dtype=torch.float64)
    s = torch.tensor([2.0, gauss.schedule.sigma_min], dtype=torch.float64)
    out = odediff.sample(gauss, x0, solver="rk45", sigmas=s, rtol=1e-10, atol=1e-10, max_nfe=10000)
    exact = gauss.flow(x0 * math.sqrt(5), 2.0, float(s[1])) / math.sqrt(1 + float(s[1]) ** 2)
    assert (out - exact).abs().max().item() < 1e-8


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_noise(gauss, dtype):
    """The network sees the caller's dtype; the solver's state is float64; output in the input dtype."""
    seen, states = [], []

    class Spy:
        schedule = gauss.schedule

        def eps(self, xbar, sigma):
            seen.append(xbar.dtype)
            return gauss.eps(xbar, sigma)

        def parameters_like(self):
            return None

    # |x| ≤ 2 keeps σ_max²·x (this model's ε numerator) within float16's range
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(0)).clamp(-2, 2).to(dtype)
    out = odediff.sample(Spy(), x, solver="adams", nfe=10, callback=lambda st: states.append(st.xbar.dtype))
    assert out.dtype == dtype and set(seen) == {dtype} and set(states) == {torch.float64}


def test_float32_state_keeps_its_digits_at_large_sigma_max():
    """σ_max = 4096 (zero terminal SNR clamped): x̄ = 4096·x_T would lose 12 bits in a float32
    state. With a model exact in float64, float32 noise gives the float64 answer to output rounding."""
    from conftest import GaussianData

    class Exact64(GaussianData):
        def eps(self, xbar, sigma):
            return super().eps(xbar.double(), sigma)

    ac = odediff.DiscreteSchedule.scaled_linear().alphas_cumprod.clone()
    ac[-1] = 0
    g = Exact64(schedule=odediff.DiscreteSchedule(ac, terminal_alpha_cumprod=2**-24))
    x = torch.randn(4, 64, dtype=torch.float64)
    a = odediff.sample(g, x.float(), solver="euler", nfe=10, grid="uniform_t")
    b = odediff.sample(g, x, solver="euler", nfe=10, grid="uniform_t")
    assert a.dtype == torch.float32
    assert (a.double() - b).abs().max().item() < 4e-7


@pytest.mark.parametrize(
    "kwargs", [dict(solver="euler", nfe=6), dict(solver="heun", nfe=6), dict(solver="adams", nfe=6),
               dict(solver="rk45"), dict(solver="ddim", eta=0.5, nfe=6)]
)  # fmt: skip
def test_inputs_never_modified(gauss, kwargs):
    x = torch.randn(2, 8)
    keep = x.clone()
    odediff.sample(gauss, x, **kwargs)
    odediff.encode(gauss, x, **kwargs)
    assert torch.equal(x, keep)


def test_shape_and_generator(tiny_net):
    model = odediff.EpsModel(tiny_net, odediff.DiscreteSchedule.linear())
    with torch.no_grad():
        a = odediff.sample(model, shape=(2, 1, 8, 8), nfe=5, generator=torch.Generator().manual_seed(3))
        b = odediff.sample(model, shape=(2, 1, 8, 8), nfe=5, generator=torch.Generator().manual_seed(3))
    assert a.shape == (2, 1, 8, 8) and torch.equal(a, b)


def test_solver_registry_attributes():
    for name, s in odediff.SOLVERS.items():
        assert isinstance(s.order, int) and s.order >= 1, name
        assert isinstance(s.adaptive, bool) and isinstance(s.reversible, bool)
    assert odediff.SOLVERS["rk45"].adaptive and not odediff.SOLVERS["adams"].adaptive
    assert odediff.get_solver("adams", order=2).order == 2
    assert odediff.get_solver("torchdiffeq:dopri5").order == 5


def test_slerp():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    assert torch.allclose(odediff.slerp(z0, z1, 0.0), z0, atol=1e-6)
    assert torch.allclose(odediff.slerp(z0, z1, 1.0), z1, atol=1e-6)
    e0, e1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mid = odediff.slerp(e0, e1, 0.5)
    assert torch.allclose(mid, torch.tensor([[1.0, 1.0]]) / math.sqrt(2))
    many = odediff.slerp(z0, z1, torch.linspace(0, 1, 5))
    assert many.shape == (5, 3, 4, 8, 8) and torch.allclose(many[2], odediff.slerp(z0, z1, 0.5))
    assert torch.allclose(odediff.slerp(e0, e0, 0.3), e0)  # parallel: no NaN


class Bad:
    def __init__(self, out):
        self.schedule, self.out = odediff.DiscreteSchedule.linear(), out

    def eps(self, xbar, sigma):
        return self.out(xbar, sigma)

    def parameters_like(self):
        return None


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (
            dict(solver="nope"),
            ValueError,
            r"solver: unknown solver 'nope'; expected one of \['adams', 'bdia', 'belm', 'ddim'",
        ),
        (dict(solver="torchdiffeq:nope"), ValueError, "unknown torchdiffeq method"),
        (dict(nfe=0), ValueError, "nfe: .*≥ 1"),
        (dict(nfe=2.5), ValueError, "nfe: "),
        (dict(solver="rk45", nfe=10), ValueError, "nfe: rk45 is adaptive"),
        (dict(sigmas=[5.0, 10.0, 1.0, 0.0]), ValueError, "sigmas: .*monotone"),
        (dict(sigmas=[500.0, 1.0, 0.0]), ValueError, "sigmas: .*within"),
        (dict(sigmas=[0.0, 1.0]), ValueError, "sigmas: expected a decreasing grid"),
        (dict(sigmas=[5.0, 1.0, 0.0], nfe=5), ValueError, "nfe: euler spends nfe=5 on 5 intervals"),
        (dict(sigmas=[5.0, 0.0], timesteps=[5]), ValueError, "give one of them"),
        (dict(grid="nope"), ValueError, "grid: unknown grid"),
        (dict(eta=2.0, solver="ddim"), ValueError, r"eta: expected a value in \[0, 1\]"),
        (dict(solver="adams", order=7), ValueError, "order: expected 1, 2, 3 or 4"),
        (dict(solver="heun", order=3), TypeError, "heun: unknown option"),
    ],
)
def test_bad_arguments(gauss, kwargs, err, match):
    kwargs = {"solver": "euler", **kwargs}
    with pytest.raises(err, match=match):
        odediff.sample(gauss, torch.randn(2, 4), **kwargs)


def test_bad_inputs(gauss, tiny_net):
    with pytest.raises(ValueError, match="noise, shape: give exactly one"):
        odediff.sample(gauss)
    with pytest.raises(TypeError, match="noise: expected a floating-point tensor"):
        odediff.sample(gauss, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="model: expected an odediff model"):
        odediff.sample(tiny_net, torch.randn(2, 1, 8, 8))
    model = odediff.EpsModel(tiny_net, odediff.DiscreteSchedule.linear())
    with pytest.raises(
        TypeError, match=r"noise: dtype torch.float64 but the network's parameters are torch.float32"
    ):
        odediff.sample(model, torch.randn(2, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="noise: on meta but the network is on cpu"):
        odediff.sample(model, torch.randn(2, 1, 8, 8, device="meta"))


def test_bad_network_outputs():
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"ε has shape \(2, 3\), expected the input's \(2, 4\)"):
        odediff.sample(Bad(lambda xb, s: xb[:, :3]), x, solver="euler", nfe=4)

    def nan_below_one(xb, s):
        return xb * (float("nan") if s < 1 else 0.1)

    with pytest.raises(FloatingPointError, match=r"NaN or Inf at step \d+, σ=0\.\d+"):
        odediff.sample(Bad(nan_below_one), x, solver="euler", nfe=10)
    net = lambda x_t, t: x_t[:, :3]
    with pytest.raises(ValueError, match=r"net: output shape \(2, 3\) differs"):
        odediff.sample(odediff.EpsModel(net, odediff.DiscreteSchedule.linear()), x, nfe=3)
    with pytest.raises(ValueError, match="prediction: expected one of"):
        odediff.EpsModel(net, odediff.DiscreteSchedule.linear(), prediction="score")


def test_parameter_free_network_sees_the_input_dtype(tiny_net):
    seen = []

    def net(x_t, t):  # a plain function around a float32 module: it has no .parameters()
        seen.append(x_t.dtype)
        return tiny_net(x_t, t)

    model = odediff.EpsModel(net, odediff.DiscreteSchedule.linear())
    with torch.no_grad():
        out = odediff.sample(model, torch.randn(2, 1, 8, 8), solver="heun", nfe=5)
    assert out.dtype == torch.float32 and set(seen) == {torch.float32}


def test_half_precision_network_gets_exact_fractional_timesteps():
    seen = []

    def net(x_t, t):
        seen.append((x_t.dtype, t.dtype, float(t[0])))
        return x_t

    sched = odediff.DiscreteSchedule.linear()
    model = odediff.EpsModel(net, sched)
    sigma = float(sched.sigma_of_t(torch.tensor(998.3, dtype=torch.float64)))
    model.eps(torch.zeros(2, 3, dtype=torch.float16), sigma)
    assert seen[0][:2] == (torch.float16, torch.float32) and abs(seen[0][2] - 998.3) < 1e-3
