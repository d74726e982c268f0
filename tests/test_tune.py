"""Learned solvers and tune_grid: the learned solver starts as adams, tuning lowers the error it is
trained on and generalises, gradients are right, NFE is exact, files load back bit for bit, the
shipped solvers work through ``grid="tuned"``, and bad input gets an error naming the argument."""

import copy
import json
import math

import pytest
import torch

import odediff
from odediff.cli import main
from odediff.grids import make_grid
from odediff.learned import Learned, multistep_weights
from odediff.tune import SHIPPED, grid_from_logits, shipped
from odediff.zoo import gmm_digits, load

SHAPE = (1, 8, 8)
ROUND_OFF = 4 * 2.0**-52  # a few float64 ulps of the largest weight of a row


def noises(n, seed, dtype=torch.float64):
    return torch.randn(n, *SHAPE, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def cheap_reference(model, x):
    """adams at NFE 200: tight enough for the mixture at NFE 5 (its error is ≈ 1e-5)."""
    with torch.no_grad():
        out, info = odediff.sample(model, x, nfe=200, return_info=True)
    return out, info.nfe


class Anonymous:
    """A model with no sample_shape and no name (the Model protocol only)."""

    def __init__(self, model):
        self.schedule, self.eps, self.parameters_like = model.schedule, model.eps, model.parameters_like


@pytest.fixture(scope="module")
def tuned():
    model = gmm_digits()
    g = odediff.tune_grid(
        model, nfe=5, noises=noises(64, 1), holdout=noises(64, 2), reference=cheap_reference,
        iterations=80, check=10, patience=8, progress=False, model_name="gmm-digits",
    )  # fmt: skip
    return model, g


@pytest.mark.parametrize("nfe", [4, 6, 10])
@pytest.mark.parametrize(
    "options", [{}, {"order": 2, "corrector": False}, {"predict": "eps", "variable": "sigma"}]
)
def test_learned_solver_with_adams_weights_is_adams(nfe, options):
    model = gmm_digits()
    grid = make_grid(model.schedule, nfe)
    solver = Learned(
        tuple(grid.tolist()), multistep_weights("adams", grid, model.schedule.sigma_min, **options)
    )
    x = noises(4, 0)
    a = odediff.sample(model, x, sigmas=grid, **options)
    b, info = odediff.sample(model, x, solver=solver, sigmas=grid, return_info=True)
    assert info.nfe == nfe and (a - b).abs().max() < 1e-12 * a.abs().max()


def test_multistep_weights_of_euler_are_ddim_and_runge_kutta_is_refused():
    grid = make_grid(gmm_digits().schedule, 6)
    assert multistep_weights("euler", grid) == ((1.0,),) * 6
    with pytest.raises(ValueError, match="solver: heun evaluates ε at .* one evaluation per interval"):
        multistep_weights("heun", grid)


def test_learned_solver_checks_its_weights_grid_and_budget():
    model = gmm_digits()
    grid = tuple(make_grid(model.schedule, 4).tolist())
    ok = ((1.0,), (1.5, -0.5), (1.0, 0.0))
    with pytest.raises(ValueError, match=r"weights: row 1 must have 1 to 2 weights summing to 1"):
        Learned(grid, ((1.0,), (1.5, -0.4), (1.0,)))
    with pytest.raises(ValueError, match="weights: expected 3 or 4 rows"):
        Learned(grid, ok[:2])
    with pytest.raises(ValueError, match="times: expected 4 network noise levels"):
        Learned(grid, ok, times=grid[:2])
    solver = Learned(grid, ok)
    with pytest.raises(ValueError, match="sigmas: a learned solver runs only on the grid it was tuned on"):
        odediff.sample(model, noises(1, 0), solver=solver, nfe=4, grid="karras")
    with pytest.raises(ValueError, match="nfe: this learned solver was tuned for nfe=4"):
        odediff.sample(model, noises(1, 0), solver=solver, nfe=5, sigmas=grid)


def test_tuning_lowers_the_training_error_and_generalises(tuned):
    _, g = tuned
    assert g.solver == "learned" and g.learn == ("grid", "weights") and g.nfe == 5 and len(g.sigmas) == 6
    assert g.train_error < 0.8 * g.default_error, g
    assert g.holdout_error <= 1.5 * g.train_error, g
    assert g.cost_nfe > 80 * 5 and g.seconds > 0


def test_tuned_solver_spends_exactly_its_nfe_and_its_grid_is_free_at_the_end(tuned):
    model, g = tuned
    counted = []

    class Counting:  # an independent count of the network's calls, next to the loop's own
        schedule = model.schedule

        def eps(self, xbar, sigma):
            counted.append(sigma)
            return model.eps(xbar, sigma)

        def parameters_like(self):
            return None

    x, info = odediff.sample(Counting(), noises(3, 3), return_info=True, **g.kwargs())
    assert info.nfe == 5 and len(counted) == 5 and torch.isfinite(x).all()
    s = torch.tensor(g.sigmas)
    assert s[0] == model.schedule.sigma_max and s[-1] == 0 and (s[1:] < s[:-1]).all()
    assert s[-2] > 1.01 * model.schedule.sigma_min  # the last evaluation is not pinned at σ_min


def test_weights_were_learned_and_stay_consistent_to_round_off(tuned):
    _, g = tuned
    start = multistep_weights("adams", make_grid(gmm_digits().schedule, 5))
    rows = g.options["weights"]
    assert len(rows) == 5 and rows != start  # one row per interval, the final step's too
    for row in rows:
        assert abs(math.fsum(row) - 1) <= ROUND_OFF * max(map(abs, row)), row


def test_saved_solver_loads_back_to_the_same_samples_bit_for_bit(tuned, tmp_path):
    model, g = tuned
    g.save(tmp_path / "t.json")
    g2 = odediff.TunedGrid.load(tmp_path / "t.json")
    assert g2 == g
    x = noises(4, 4)
    assert torch.equal(odediff.sample(model, x, **g.kwargs()), odediff.sample(model, x, **g2.kwargs()))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="path: .* is not a tuned grid"):
        odediff.TunedGrid.load(tmp_path / "bad.json")


def float64_unet():
    m = load("digits")
    return odediff.EpsModel(copy.deepcopy(m.net).double(), m.schedule)


@pytest.mark.parametrize(
    "make, h, rel",
    [(gmm_digits, 1e-5, 1e-6), (float64_unet, 1e-4, 5e-3)],  # the UNet embeds t in float32
    ids=["mixture", "unet"],
)
def test_gradient_matches_finite_differences(make, h, rel):
    """d RMSE / d(grid logit, weight, time offset) through the solve, against central differences."""
    model = make()
    x, truth = noises(2, 5), noises(2, 6) * 0.5
    s = model.schedule
    base = make_grid(s, 4)
    theta0 = torch.log(-torch.diff(torch.cat([base[:-1].log(), torch.tensor([math.log(s.sigma_min)])])))
    w0 = multistep_weights("adams", base, short_order=None)  # order 3: every weight row has 3 entries

    def loss(theta, free, delta):
        sig = grid_from_logits(theta, s.sigma_max, s.sigma_min)
        weights = tuple((1 - f.sum(), *f.unbind()) for f in free)
        times = (sig[0], *(sig[1:4] * delta.exp()).unbind())
        solver = Learned(tuple(sig.unbind()), weights, times)
        out = odediff.sample(model, x, solver=solver, sigmas=sig.detach(), grad=True)
        return (out - truth).square().mean().sqrt()

    theta = theta0.clone().requires_grad_()
    free = [torch.tensor(r[1:], dtype=torch.float64, requires_grad=True) for r in w0]
    delta = torch.tensor([0.05, -0.1, 0.2], dtype=torch.float64, requires_grad=True)
    loss(theta, free, delta).backward()
    for p, i in [(theta, 1), (theta, 3), (free[2], 1), (delta, 0), (delta, 2)]:
        with torch.no_grad():
            p[i] += h
            up = loss(theta, free, delta).item()
            p[i] -= 2 * h
            down = loss(theta, free, delta).item()
            p[i] += h
        fd = (up - down) / (2 * h)
        assert p.grad[i].item() == pytest.approx(fd, rel=rel), (p.shape, i)
    assert all(g != 0 for g in delta.grad)  # the network's time is differentiated, not only the update


def test_any_fixed_step_solver_can_tune_its_grid():
    model = gmm_digits()
    g = odediff.tune_grid(model, nfe=7, solver="heun", noises=noises(8, 1), holdout=noises(8, 2),
                          reference=cheap_reference, evaluations=40, progress=False)  # fmt: skip
    assert g.solver == "heun" and g.learn == ("grid",) and g.train_error <= g.default_error
    _, info = odediff.sample(model, noises(2, 3), return_info=True, **g.kwargs())
    assert info.nfe == 7 and math.isfinite(g.holdout_error)


def test_holdout_is_drawn_in_the_shape_of_the_training_noises():
    model = Anonymous(gmm_digits())  # no sample_shape
    g = odediff.tune_grid(model, nfe=4, noises=noises(4, 1), holdout=4, reference=cheap_reference,
                          iterations=3, check=1, progress=False)  # fmt: skip
    assert math.isfinite(g.holdout_error) and g.model == "Anonymous"


def test_bad_input_names_the_argument():
    model, x = gmm_digits(), noises(2, 0)
    kw = dict(reference=cheap_reference, progress=False)
    cases = [
        (dict(solver="heun", learn=("grid", "weights")), r"learn: \['weights'\] tunes adams' multistep"),
        (dict(nfe=2), "nfe: adams at nfe=2 takes 2 intervals; tuning needs ≥ 3"),
        (dict(noises=torch.zeros(2, 1, 4, 4)), r"noises: expected noises of shape \(batch, 1, 8, 8\), got"),
        (dict(holdout=torch.zeros(2, 64)), r"holdout: expected noises of shape \(batch, 1, 8, 8\)"),
        (dict(noises=0), "noises: expected a number of noises ≥ 1"),
        (dict(learn=("grid", "steps")), "learn: expected a non-empty subset"),
        (dict(solver="rk45"), "solver: rk45 is adaptive"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            odediff.tune_grid(model, **{"noises": x, **args, **kw})
    with pytest.raises(ValueError, match="noises: this model has no sample_shape"):
        odediff.tune_grid(Anonymous(model), noises=4, **kw)


SHIPPED_FILES = sorted(SHIPPED.glob("*_nfe*.json"))


def test_every_trained_zoo_network_has_shipped_solvers():
    names = {p.stem for p in SHIPPED_FILES}
    for model in ("digits", "digits-seed1", "digits-dit", "photos"):
        assert {f"{model}_nfe{n}" for n in (4, 5, 6, 8, 10)} <= names, model


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda p: p.stem)
def test_shipped_solver_is_consistent_and_beat_the_default(path):
    g = odediff.TunedGrid.load(path)
    assert path.stem == f"{g.model}_nfe{g.nfe}" and g.solver == "learned"
    # never worse than the adams it starts from, on the training noises; generalises to the held-out ones
    assert g.train_error <= g.default_error and g.holdout_error <= 1.5 * g.train_error
    assert all(abs(math.fsum(r) - 1) <= ROUND_OFF * max(map(abs, r)) for r in g.options["weights"])
    assert json.loads(path.read_text())["sigmas"][-1] == 0


def test_grid_tuned_uses_the_shipped_solver_with_exact_nfe():
    model, x = load("digits"), noises(3, 7, torch.float32)
    y, info = odediff.sample(model, x, nfe=5, grid="tuned", return_info=True)
    assert info.nfe == 5 and torch.equal(y, odediff.sample(model, x, **shipped("digits", 5).kwargs()))
    listed = (
        r"grid: no tuned solver shipped for model 'digits' at nfe=7; shipped: .*digits at nfe 4, 5, 6, 8, 10;"
    )
    with pytest.raises(ValueError, match=listed):
        odediff.sample(model, x, nfe=7, grid="tuned")
    with pytest.raises(ValueError, match="grid: 'tuned' brings its own solver and grid"):
        odediff.sample(model, x, nfe=5, grid="tuned", solver="heun")
    with pytest.raises(ValueError, match="nfe: grid='tuned' needs nfe="):
        odediff.sample(model, x, grid="tuned")
    with pytest.raises(ValueError, match=r"grid: no tuned solver shipped for this model \(it has no .name\)"):
        odediff.sample(gmm_digits(), noises(1, 0), nfe=5, grid="tuned")


def test_cli_tune(tmp_path, capsys):
    assert main(["tune", "--help"]) == 0
    assert "--nfe" in capsys.readouterr().out
    assert main(["tune", "--model", "digits", "--nfe", "5", "--out", str(tmp_path / "t.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --out: a tuned solver is written as JSON" in err
    assert main(["tune", "--model", "digits", "--nfe", "2", "--out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: nfe: adams at nfe=2 takes 2 intervals" in err
    assert main(["tune", "--nfe", "5", "--learn", "grid,steps", "--out", str(tmp_path / "t.json")]) == 2
    assert "argument --learn" in capsys.readouterr().err


def test_a_search_that_never_improves_returns_the_consistent_start():
    model = gmm_digits()  # a huge learning rate: every step makes the held-out error worse
    g = odediff.tune_grid(model, nfe=5, noises=noises(8, 1), holdout=noises(8, 2), reference=cheap_reference,
                          learn=("weights",), iterations=4, check=2, lr=50.0, progress=False)  # fmt: skip
    start = multistep_weights("adams", make_grid(model.schedule, 5), model.schedule.sigma_min)
    assert g.train_error == g.default_error and g.options["weights"] == start
