"""Fréchet distance against closed forms and an independent matrix square root; the digits classifier."""

import numpy as np
import pytest
import scipy.linalg
import torch

from odediff.bench.quality import digits_frechet, frechet_distance, frechet_from_stats, gaussian_stats
from odediff.zoo.classifier import FEATURE_DIM, accuracy, features, load_classifier, train
from odediff.zoo.digits import load_data

ACCURACY_BAR = 0.97  # the embedded weights score 0.983 on the 360 held-out digits


def random_cov(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def test_frechet_of_a_set_with_itself_is_zero():
    x = torch.randn(300, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    tr = np.trace(gaussian_stats(x)[1])
    assert frechet_distance(x, x) <= 1e-9 * tr
    # and a shifted copy differs by exactly the squared shift of the mean
    assert frechet_distance(x, x + 0.5) == pytest.approx(64 * 0.25, rel=1e-9)


def test_frechet_closed_form_for_proportional_covariances():
    # Σ₂ = c·Σ₁ (not diagonal): tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2}) = (1 − √c)² tr Σ₁
    rng = np.random.default_rng(0)
    d, c = 12, 3.7
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1 = random_cov(rng, d)
    expected = np.sum((mu1 - mu2) ** 2) + (1 - np.sqrt(c)) ** 2 * np.trace(s1)
    assert frechet_from_stats(mu1, s1, mu2, c * s1) == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_scipy_sqrtm_for_non_commuting_covariances():
    rng = np.random.default_rng(1)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_cov(rng, d), random_cov(rng, d, 2.0)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    got = frechet_from_stats(mu1, s1, mu2, s2)
    assert got == pytest.approx(expected, rel=1e-9)
    assert frechet_from_stats(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-9)  # symmetric


def test_frechet_of_samples_approaches_the_gaussians_distance():
    # two diagonal Gaussians: d² = ‖μ₁ − μ₂‖² + Σ_i (a_i − b_i)² with standard deviations a, b
    g = torch.Generator().manual_seed(0)
    a, b = torch.linspace(0.5, 2.0, 4), torch.linspace(1.5, 0.5, 4)
    mu1, mu2 = torch.zeros(4), torch.tensor([1.0, -1.0, 0.5, 0.0])
    x = mu1 + a * torch.randn(200_000, 4, generator=g)
    y = mu2 + b * torch.randn(200_000, 4, generator=g)
    expected = ((mu1 - mu2) ** 2).sum() + ((a - b) ** 2).sum()
    assert frechet_distance(x, y) == pytest.approx(expected.item(), rel=0.01)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="covariances"):
        frechet_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


def test_classifier_accuracy_on_held_out_digits():
    assert accuracy() > ACCURACY_BAR


def test_features_shape_and_separation():
    x, y = load_data("test")
    f = features(x)
    assert f.shape == (len(x), FEATURE_DIM) and f.dtype == torch.float32
    # the feature space knows classes: held-out 0s and 1s are far apart, real vs noise further still
    d01 = frechet_distance(f[y == 0], f[y == 1])
    d_same = frechet_distance(f[y == 0][:18], f[y == 0][18:])
    assert d01 > 5 * d_same
    noise = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fd = digits_frechet(noise, x)
    fd_real = digits_frechet(load_data("train")[0][:200], x)
    assert fd["fd_features"] > 5 * fd_real["fd_features"]
    assert fd["fd_pixels"] > 5 * fd_real["fd_pixels"]
    with pytest.raises(ValueError, match="shape"):
        features(torch.zeros(3, 64))


def test_training_is_deterministic():
    nets = [train(1, seed=3, progress=False) for _ in range(2)]
    for (k, p), q in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(p, q), k
    assert not torch.equal(nets[0].head.weight, load_classifier().head.weight)
