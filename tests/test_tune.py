"""tune_grid: lowers the error it is tuned on, generalises, saves and loads bit for bit."""

import pytest
import torch

import odediff
from odediff.reference import reference_solve
from odediff.zoo import gmm_digits


def noises(n, seed):
    return torch.randn(n, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tuned():
    model = gmm_digits()
    grid = odediff.tune_grid(
        model, nfe=8, noises=noises(32, 1), holdout=noises(32, 2), evaluations=200, progress=False,
        model_name="gmm-digits", robust=True,
    )  # fmt: skip
    return model, grid


def test_tuning_lowers_the_training_error_and_generalises(tuned):
    _, g = tuned
    assert g.train_error < 0.9 * g.default_error, g
    assert g.holdout_error <= 1.5 * g.train_error, g
    assert g.cost_nfe > 100 * 8 and g.nfe == 8 and g.solver == "adams" and len(g.sigmas) == 9


def test_the_grid_is_valid_and_sample_accepts_it(tuned):
    model, g = tuned
    s = torch.tensor(g.sigmas, dtype=torch.float64)
    assert s[0] == pytest.approx(model.schedule.sigma_max) and s[-2] > model.schedule.sigma_min and s[-1] == 0
    assert (s[1:] < s[:-1]).all()
    x, info = odediff.sample(model, noises(4, 3), return_info=True, **g.kwargs())
    assert info.nfe == 8 and torch.isfinite(x).all()


def test_saved_grid_loads_back_to_the_same_samples_bit_for_bit(tuned, tmp_path):
    model, g = tuned
    g.save(tmp_path / "grid.json")
    g2 = odediff.TunedGrid.load(tmp_path / "grid.json")
    assert g2 == g
    x = noises(4, 4)
    assert torch.equal(odediff.sample(model, x, **g.kwargs()), odediff.sample(model, x, **g2.kwargs()))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="path: .* is not a tuned grid"):
        odediff.TunedGrid.load(tmp_path / "bad.json")


def test_holdout_error_is_measured_against_its_own_reference(tuned):
    model, g = tuned
    held = noises(32, 2)
    truth, _ = reference_solve(model, held)
    x = odediff.sample(model, held, **g.kwargs())
    per_noise = (x - truth).square().flatten(1).mean(1).sqrt()
    assert g.holdout_error == pytest.approx(per_noise.mean().item(), rel=1e-12)


def test_bad_arguments():
    model = gmm_digits()
    with pytest.raises(ValueError, match="solver: rk45 is adaptive"):
        odediff.tune_grid(model, solver="rk45", noises=noises(2, 0), progress=False)
    with pytest.raises(ValueError, match="nfe: .* tuning needs ≥ 3"):
        odediff.tune_grid(model, nfe=2, noises=noises(2, 0), progress=False)
    with pytest.raises(ValueError, match="noises: expected a number of noises"):
        odediff.tune_grid(model, noises=0, progress=False)


@pytest.fixture(scope="module")
def tuned_weights():
    model = gmm_digits()
    grid = odediff.tune_grid(
        model, nfe=8, noises=noises(64, 1), holdout=noises(64, 2), evaluations=200, progress=False,
        model_name="gmm-digits", robust=True, tune_weights=True,
    )  # fmt: skip
    return model, grid


def test_tuned_weights_lower_the_error_and_load_back_bit_for_bit(tuned_weights, tmp_path):
    model, g = tuned_weights  # twice the parameters of a grid alone: 64 training noises, not 16
    assert g.train_error < 0.9 * g.default_error, g
    assert g.holdout_error <= 1.5 * g.train_error, g
    blend = g.options["blend"]
    assert len(blend) == 8 and blend[0] == blend[-1] == 1.0 and any(b != 1.0 for b in blend)
    g.save(tmp_path / "grid.json")
    g2 = odediff.TunedGrid.load(tmp_path / "grid.json")
    assert g2 == g
    x = noises(4, 4)
    y, info = odediff.sample(model, x, return_info=True, **g2.kwargs())
    assert info.nfe == 8 and torch.equal(y, odediff.sample(model, x, **g.kwargs()))


def test_tune_weights_needs_adams():
    model = gmm_digits()
    with pytest.raises(ValueError, match="tune_weights: euler has no multistep weights"):
        odediff.tune_grid(model, solver="euler", noises=noises(2, 0), progress=False, tune_weights=True)
    with pytest.raises(ValueError, match="tune_weights, blend"):
        odediff.tune_grid(model, noises=noises(2, 0), progress=False, tune_weights=True, blend=(1.0,) * 10)
