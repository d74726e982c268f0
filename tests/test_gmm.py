"""odediff.zoo.GaussianMixture: ε, log p and samples against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

import odediff
from odediff.zoo import GaussianMixture, gmm_digits

SCHED = odediff.DiscreteSchedule.linear()
# σ_min, σ_max and σ at fractional timesteps (between the schedule's grid points)
FRACTIONAL_T = torch.tensor([0.5, 123.4, 640.75, 998.3])
SIGMAS = [SCHED.sigma_min, *SCHED.sigma_of_t(FRACTIONAL_T).tolist(), 1.0, SCHED.sigma_max]


def random_params(k: int, d: int, seed: int, eig_min: float = 1e-3):
    """Weights, means and covariances with eigenvalues spread over [eig_min, ~2], random axes."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.2
    mu = 1.5 * torch.randn(k, d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=torch.float64))
    eig = torch.logspace(math.log10(eig_min), 0.3, d, dtype=torch.float64)
    eig = eig[torch.stack([torch.randperm(d, generator=g) for _ in range(k)])]
    cov = q @ torch.diag_embed(eig) @ q.mT
    return w / w.sum(), mu, (cov + cov.mT) / 2


@pytest.fixture(scope="module")
def mix():
    w, mu, cov = random_params(3, 4, seed=0)
    return GaussianMixture(w, mu, cov, sample_shape=(2, 2))


def noisy_points(model: GaussianMixture, sigma: float, n: int = 12, seed: int = 1) -> torch.Tensor:
    """x̄ = x_0 + σ·n, the points where the ODE actually evaluates ε (plus a few far away)."""
    g = torch.Generator().manual_seed(seed)
    x0 = model.sample_data(n, g, dtype=torch.float64)
    xbar = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    far = 5 * (1 + sigma) * torch.randn((3, *model.sample_shape), generator=g, dtype=torch.float64)
    return torch.cat([xbar, far])


def reference_log_p(model: GaussianMixture, sigma: float) -> MixtureSameFamily:
    """p(x̄; σ) = Σ_k π_k N(μ_k, Σ_k + σ²I), built by torch.distributions (Cholesky, not eigh)."""
    eye = torch.eye(model.dim, dtype=torch.float64)
    comps = MultivariateNormal(model.means, covariance_matrix=model.covariances + sigma**2 * eye)
    return MixtureSameFamily(Categorical(probs=model.weights), comps)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_eps_is_minus_sigma_grad_log_p(mix, sigma):
    xbar = noisy_points(mix, sigma)
    x = xbar.reshape(len(xbar), -1).requires_grad_(True)
    (grad,) = torch.autograd.grad(reference_log_p(mix, sigma).log_prob(x).sum(), x)
    ref = (-sigma * grad).reshape(xbar.shape)
    eps = mix.eps(xbar, sigma)
    assert eps.shape == xbar.shape and eps.dtype == torch.float64
    torch.testing.assert_close(eps, ref, rtol=1e-10, atol=1e-10 * ref.abs().max().item())
    eps32 = mix.eps(xbar.float(), sigma)
    assert eps32.dtype == torch.float32
    torch.testing.assert_close(eps32.double(), ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("sigma", [SCHED.sigma_min, 0.37, SCHED.sigma_max])
def test_single_gaussian_closed_form(sigma):
    """K = 1: ε = σ (Σ + σ²I)⁻¹ (x̄ − μ), also for a singular Σ."""
    _, mu, cov = random_params(1, 5, seed=2)
    cov[0] = cov[0] @ torch.diag(torch.tensor([1.0, 1, 1, 1, 0], dtype=torch.float64)) @ cov[0]  # rank 4
    model = GaussianMixture([1.0], mu, cov)
    xbar = mu + torch.randn(7, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = sigma * torch.linalg.solve(cov[0] + sigma**2 * torch.eye(5, dtype=torch.float64), (xbar - mu).T).T
    torch.testing.assert_close(model.eps(xbar, sigma), ref, rtol=1e-10, atol=1e-12 * ref.abs().max().item())


@pytest.mark.parametrize("sigma", [0.0, 0.7])
def test_log_prob_matches_scipy(mix, sigma):
    x = noisy_points(mix, 0.5, seed=4)
    flat = x.reshape(len(x), -1).numpy()
    cov = mix.covariances.numpy() + sigma**2 * np.eye(mix.dim)
    comp = [multivariate_normal(m, c).logpdf(flat) for m, c in zip(mix.means.numpy(), cov)]
    ref = logsumexp(np.log(mix.weights.numpy())[:, None] + np.stack(comp), axis=0)
    np.testing.assert_allclose(mix.log_prob(x, sigma=sigma).numpy(), ref, rtol=1e-11, atol=1e-11)


def test_fit_matches_sklearn():
    from sklearn.mixture import GaussianMixture as SkGMM

    data = GaussianMixture(*random_params(2, 3, seed=5)).sample_data(400, torch.Generator().manual_seed(6))
    model = GaussianMixture.fit(data, 2, seed=7, reg_covar=1e-4)
    sk = SkGMM(2, covariance_type="full", reg_covar=1e-4, random_state=7).fit(data.double().numpy())
    assert model.sample_shape == (3,) and model.n_components == 2
    np.testing.assert_allclose(model.log_prob(data.double()).numpy(), sk.score_samples(data.double().numpy()))


def mixture_moments(model: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor]:
    """m = Σ π_k μ_k,  C = Σ π_k (Σ_k + μ_k μ_kᵀ) − m mᵀ."""
    w, mu = model.weights, model.means
    m = w @ mu
    second = (w[:, None, None] * (model.covariances + mu[:, :, None] * mu[:, None, :])).sum(0)
    return m, second - torch.outer(m, m)


def test_sample_data_moments(mix):
    n = 200_000
    x = mix.sample_data(n, torch.Generator().manual_seed(8), dtype=torch.float64).reshape(n, -1)
    m, c = mixture_moments(mix)
    # 5 standard errors (CLT, with each statistic's variance estimated from the samples themselves)
    assert ((x.mean(0) - m).abs() < 5 * x.std(0) / math.sqrt(n)).all()
    prods = (x - m)[:, :, None] * (x - m)[:, None, :]
    assert ((prods.mean(0) - c).abs() < 5 * prods.std(0) / math.sqrt(n)).all()
    assert (prods.std(0) / math.sqrt(n)).max() < 0.02  # the test has power: errors ≪ entries of C


def test_sample_data_reproducible_and_dtype(mix):
    a = mix.sample_data(6, torch.Generator().manual_seed(9), dtype=torch.float64)
    b = mix.sample_data(6, torch.Generator().manual_seed(9), dtype=torch.float32)
    c = mix.sample_data(6, torch.Generator().manual_seed(10), dtype=torch.float64)
    assert a.shape == (6, 2, 2) and b.dtype == torch.float32
    assert torch.equal(a.float(), b) and not torch.equal(a, c)
    assert mix.sample_data(0).shape == (0, 2, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plugs_into_sample(mix, dtype):
    noise = torch.randn(5, 2, 2, generator=torch.Generator().manual_seed(11)).to(dtype)
    out, info = odediff.sample(mix, noise, solver="euler", nfe=10, return_info=True)
    assert out.shape == noise.shape and out.dtype == dtype and info.nfe == 10
    assert torch.isfinite(out).all()
    assert mix.parameters_like() is None and isinstance(mix, odediff.Model)
    # one cached copy of the parameters per dtype, reused by later calls
    cached = mix._params(dtype, out.device)
    mix.eps(noise, 1.0)
    assert mix._params(dtype, out.device) is cached


def test_whole_chain_single_gaussian_flow():
    """rk45 at 1e-10 reproduces x̄(σ) − μ = (Σ+σ²I)^½ (Σ+σ_max²I)^-½ (x̄(σ_max) − μ), which in the
    eigenbasis of Σ = U diag(d) Uᵀ is elementwise: y(σ) = y(σ_max)·sqrt((d+σ²)/(d+σ_max²))."""
    _, mu, cov = random_params(1, 3, seed=12, eig_min=1e-2)
    model = GaussianMixture([1.0], mu, cov)
    s_max, s_min = SCHED.sigma_max, SCHED.sigma_min
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    sigmas = torch.tensor([s_max, s_min], dtype=torch.float64)
    out = odediff.sample(model, noise, solver="rk45", sigmas=sigmas, rtol=1e-10, atol=1e-10, max_nfe=20_000)
    d, u = torch.linalg.eigh(cov[0])
    y = (noise * math.sqrt(1 + s_max**2) - mu) @ u
    xbar = mu + (y * ((d + s_min**2) / (d + s_max**2)).sqrt()) @ u.T
    exact = xbar / math.sqrt(1 + s_min**2)
    assert (out - exact).abs().max().item() < 1e-8


def test_gmm_digits():
    from odediff.zoo.digits import load_data

    model = gmm_digits()
    assert model is gmm_digits()  # memoised
    assert model.dim == 64 and model.sample_shape == (1, 8, 8)
    assert model.eigenvalues.min() > 0.9e-3  # the reg_covar floor keeps the ODE non-stiff
    held_out = load_data("test")[0].double()  # not seen by the fit
    noise = torch.rand(300, 64, generator=torch.Generator().manual_seed(14), dtype=torch.float64) * 2 - 1
    lp_digits = model.log_prob(held_out)
    lp_noise = model.log_prob(noise.reshape(-1, 1, 8, 8))
    assert lp_digits.min() > lp_noise.max() + 1000
    x = odediff.sample(model, shape=(3, 1, 8, 8), solver="euler", nfe=5, generator=torch.Generator())
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.float32


# bad inputs -------------------------------------------------------------------------------
W, MU, COV = random_params(2, 3, seed=15)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((torch.tensor([0.5, 0.6]), MU, COV), {}, "weights"),
        ((torch.tensor([1.2, -0.2]), MU, COV), {}, "weights"),
        ((W[None], MU, COV), {}, "weights"),
        ((W, MU[:1], COV), {}, "means"),
        ((W, MU.clone().fill_(math.nan), COV), {}, "means"),
        ((W, MU, COV[:, :2, :2]), {}, "covariances"),
        ((W, MU, COV + torch.triu(torch.ones(3, 3, dtype=torch.float64), 1)), {}, "covariances: .*symmetric"),
        ((W, MU, COV - 3 * torch.eye(3, dtype=torch.float64)), {}, "covariances: .*semi-definite"),
        ((W, MU, COV), {"sample_shape": (2, 2)}, "sample_shape"),
    ],
)  # fmt: skip
def test_bad_constructor_inputs(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(*args, **kwargs)


def test_bad_call_inputs(mix):
    with pytest.raises(TypeError, match="weights"):
        GaussianMixture("abc", MU, COV)
    with pytest.raises(ValueError, match="xbar"):
        mix.eps(torch.zeros(2, 4), 1.0)
    with pytest.raises(TypeError, match="xbar"):
        mix.eps(torch.zeros(2, 2, 2, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="x:"):
        mix.log_prob(torch.zeros(2, 3))
    for sigma in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="sigma"):
            mix.eps(torch.zeros(2, 2, 2), sigma)
    with pytest.raises(ValueError, match="n:"):
        mix.sample_data(2.5)
    singular = GaussianMixture([1.0], torch.zeros(1, 2), torch.diag(torch.tensor([1.0, 0.0]))[None])
    with pytest.raises(ValueError, match="sigma: σ = 0"):
        singular.log_prob(torch.zeros(1, 2))
    assert torch.isfinite(singular.log_prob(torch.zeros(1, 2), sigma=0.1)).all()
