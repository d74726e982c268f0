"""Fréchet distance against closed forms and an independent matrix square root; its bootstrap SE
against the spread over independent sample sets; the digits classifier; the NFE-vs-quality study's
rows (every peer at its counted NFE) and files."""

import csv

import numpy as np
import pytest
import scipy.linalg
import torch

from odediff.bench.quality import (
    EXACT_LABEL,
    FLOOR_LABEL,
    ODE_LABEL,
    FrechetReference,
    default_methods,
    digits_frechet,
    feature_space,
    frechet_distance,
    frechet_from_stats,
    gaussian_stats,
    quality_models,
    quality_study,
)
from odediff.bench.study import DEFAULT_LABEL, ODEDIFF_METHODS, PEERS, peer_steps
from odediff.zoo import load
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


# --- bootstrap standard errors -------------------------------------------------------------


def gaussian_sets(rng, count, n, d=6, shift=0.3, scale=1.3):
    """``count`` independent sets of n rows from N(shift·1, scale²·I) in d dimensions."""
    return shift + scale * rng.normal(size=(count, n, d))


def test_bootstrap_replicates_are_the_distances_of_resampled_rows():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(500, 6))
    ref = FrechetReference(rows)
    x = gaussian_sets(rng, 1, 300)[0]
    fd, reps = ref.bootstrap(x, resamples=8, seed=3, block=64)  # several blocks of rows
    assert fd == pytest.approx(frechet_distance(x, rows), rel=1e-9)
    assert ref.distance(x) == pytest.approx(fd, rel=1e-12)
    idx = np.random.default_rng(3).integers(0, len(x), size=(8, len(x)))  # the documented index sets
    direct = [frechet_distance(x[i], rows) for i in idx]
    np.testing.assert_allclose(reps, direct, rtol=1e-9)


def test_bootstrap_se_matches_the_spread_over_independent_sets_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    ref = FrechetReference(rng.normal(size=(4000, 6)))
    se = {}
    for n in (400, 1600):
        sd = np.std([ref.distance(x) for x in gaussian_sets(rng, 150, n)], ddof=1)
        se[n] = np.mean(
            [ref.bootstrap(x, resamples=200, seed=0)[1].std(ddof=1) for x in gaussian_sets(rng, 8, n)]
        )
        assert se[n] > 0
        assert 0.7 < se[n] / sd < 1.4, (n, se[n], sd)
    assert 1.5 < se[400] / se[1600] < 2.7  # ≈ 2 = sqrt(1600/400)


# --- the study ------------------------------------------------------------------------------


def test_feature_spaces_by_name_and_shape():
    assert feature_space("digits").name == "digits classifier"
    assert feature_space("digits-seed1").name == "digits classifier"  # by name, without loading it
    assert feature_space("gmm-digits").name == "digits classifier"  # by its sample shape (1, 8, 8)
    with pytest.raises(ValueError, match="no feature space"):
        feature_space("someone-elses", (3, 32, 32))
    try:
        space = feature_space("photos", (1, 16, 16))
    except ValueError as e:  # odediff.zoo.patch_features is not in this odediff
        assert "not installed" in str(e)
    else:
        assert space.name == "patch classifier"
    assert {"digits", "gmm-digits"} <= set(quality_models())


def test_default_methods_come_from_the_error_study():
    methods = default_methods()
    assert next(iter(methods)) == DEFAULT_LABEL and methods[DEFAULT_LABEL] == ODEDIFF_METHODS[DEFAULT_LABEL]
    assert all(ODEDIFF_METHODS[k] == v for k, v in methods.items())
    assert 2 <= len(methods) < len(ODEDIFF_METHODS)


def test_study_rows_hold_every_peer_at_its_counted_nfe(tmp_path):
    pytest.importorskip("diffusers")
    nfes = (4, 6)
    rows = quality_study(
        str(tmp_path), model_name="gmm-digits", n=24, nfes=nfes, ipndm=("karras",), ddpm=False,
        resamples=20, chunk=10, progress=False,
    )  # fmt: skip
    sched = load("gmm-digits").schedule
    methods = {r["method"] for r in rows}
    assert set(PEERS) | set(default_methods()) | {"iPNDM karras", FLOOR_LABEL, EXACT_LABEL} == methods
    for r in rows:
        assert r["fd"] > 0 and r["fd_se"] > 0 and len(r["fd_boot"]) == 20
        if r["method"] in PEERS:
            assert r["target"] in nfes and r["nfe"] == peer_steps(sched, PEERS[r["method"]], r["target"])[1]
        elif r["family"] != "data":
            assert r["nfe"] == r["target"] and r["n"] == 24
    heun = {r["target"]: r["nfe"] for r in rows if r["method"] == "diffusers Heun"}
    assert heun == {4: 3, 6: 5}  # 2·steps − 1 evaluations: never exactly an even NFE
    md = (tmp_path / "nfe_vs_quality.md").read_text()
    assert "± " in md and "| 6 | " in md and "beyond 2 SE" in md and "(5)" in md
    with open(tmp_path / "nfe_vs_quality.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and "fd_boot" not in table[0] and "fd_se" in table[0]
    assert (tmp_path / "nfe_vs_quality.png").stat().st_size > 10_000


def test_the_ode_row_is_the_default_solve_at_its_budget(tmp_path):
    kw = dict(model_name="gmm-digits", n=24, ipndm=(), peers=False, ddpm=False, resamples=20, chunk=10)
    rows = quality_study(str(tmp_path), nfes=(4, 6), methods=None, ode_nfe=6, progress=False, **kw)
    ode = [r for r in rows if r["family"] == "ode"]
    assert [(r["method"], r["target"], r["nfe"]) for r in ode] == [(ODE_LABEL.format(6), 6, 6)]
    same = next(r for r in rows if r["method"] == DEFAULT_LABEL and r["target"] == 6)
    assert ode[0]["fd"] == same["fd"] and np.array_equal(ode[0]["fd_boot"], same["fd_boot"])
    assert ODE_LABEL.format(6) in (tmp_path / "nfe_vs_quality.md").read_text()
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="ode_nfe"):
            quality_study(None, nfes=(4,), ode_nfe=bad, **kw)


def test_photo_patches_are_judged_against_the_train_photos():
    """The held-out photos are other scenes: the reference is the train patches, against which n
    of them sit at the sample-size floor and a blur or the held-out photos are far."""
    space = feature_space("photos", (1, 16, 16))
    from odediff.zoo.photos import load_patches

    train, test = load_patches("train")[0], load_patches("test")[0]
    assert torch.equal(space.reference(), train)
    ref = FrechetReference(space.features(train))
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:1000]
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).view(1, 1, 3, 3)
    blurred = torch.nn.functional.conv2d(train[pick], kernel, padding=1)
    floor, blur = ref.distance(space.features(train[pick])), ref.distance(space.features(blurred))
    other = ref.distance(space.features(test[:1000]))
    assert floor < 2 and blur > 10 * floor and other > 50 * floor, (floor, blur, other)
