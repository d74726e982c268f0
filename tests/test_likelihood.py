"""log_likelihood and bits_per_dim against the zoo mixture's closed-form log-density."""

from __future__ import annotations

import math

import pytest
import torch

import odediff
from odediff import likelihood
from odediff.likelihood import bits_per_dim, log_likelihood
from odediff.zoo import gmm_digits

D = 64


class Counting:
    """A model that counts its own ε evaluations (independently of the loop's counter)."""

    def __init__(self, model, no_grad: bool = False):
        self.model, self.no_grad, self.calls = model, no_grad, 0
        self.schedule, self.sample_shape = model.schedule, model.sample_shape

    def parameters_like(self):
        return None

    def eps(self, xbar, sigma):
        self.calls += 1
        with torch.set_grad_enabled(not self.no_grad and torch.is_grad_enabled()):
            return self.model.eps(xbar, sigma)


@pytest.fixture(scope="module")
def mixture():
    return gmm_digits()


@pytest.fixture(scope="module")
def x0(mixture):
    return mixture.sample_data(6, torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture(scope="module")
def truth(mixture, x0):
    return mixture.log_prob(x0, mixture.schedule.sigma_min)


@pytest.fixture(scope="module")
def exact(mixture, x0):
    return log_likelihood(mixture, x0)


def _exact_prior(mixture, info):
    s = mixture.schedule.sigma_max
    return mixture.log_prob(info.xT.double() * math.sqrt(1 + s * s), s)


def test_matches_closed_form(mixture, exact, truth):
    lp, info = exact
    assert info.divergence == "exact" and info.stderr is None and lp.dtype == torch.float64
    # the ODE's part, Δ = log p(x_0; σ_min) − log p(x̄(σ_max); σ_max), for every image
    ode_error = (info.delta + _exact_prior(mixture, info) - truth).abs() / D
    assert ode_error.max() < 1e-3
    # with the schedule's prior N(0, (1+σ_max²)I), whose mismatch is a random O(‖m‖/σ_max) per image
    assert ((lp - truth).abs() / D).mean() < 1e-3


def test_converges_to_closed_form(mixture, x0, truth):
    _, info = log_likelihood(mixture, x0[:1], rtol=1e-7, atol=1e-7)
    assert ((info.delta + _exact_prior(mixture, info) - truth[:1]).abs() / D).max() < 1e-5


def test_prior_is_the_schedules_gaussian(mixture, exact):
    lp, info = exact
    s = mixture.schedule.sigma_max
    xbar = info.xT.double().reshape(len(lp), -1) * math.sqrt(1 + s * s)
    scale = torch.tensor(math.sqrt(1 + s * s), dtype=torch.float64)
    want = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), scale).log_prob(xbar).sum(1)
    torch.testing.assert_close(info.prior, want, rtol=0, atol=1e-9)
    torch.testing.assert_close(lp, info.prior + info.delta, rtol=0, atol=0)


@pytest.mark.parametrize("probes", ["rademacher", "gaussian"])
def test_hutchinson_unbiased_within_its_standard_error(mixture, x0, exact, probes):
    g = torch.Generator().manual_seed(1)
    lp, info = log_likelihood(mixture, x0, divergence="hutchinson", probes=probes, n_probes=16, generator=g)
    assert info.divergence == "hutchinson" and info.n_probes == 16
    z = (lp - exact[0]) / info.stderr
    assert z.abs().max() < 4  # each image within 4 standard errors
    assert abs(float(z.mean())) * math.sqrt(len(z)) < 4  # no bias across the batch
    assert 0.4 < float(z.std()) < 2.0  # the reported standard error is the spread's


def test_counts(mixture, x0):
    m = Counting(mixture)
    _, info = log_likelihood(m, x0[:2], solver="heun", nfe=10)
    assert info.nfe == m.calls == 10 and info.vjps == 10 * D
    m.calls = 0
    _, info = log_likelihood(m, x0[:2], solver="heun", nfe=10, divergence="hutchinson", n_probes=3)
    assert info.nfe == m.calls == 10 and info.vjps == 10 * 3  # one evaluation serves every probe
    m.calls = 0
    _, info = log_likelihood(m, x0[:1], rtol=1e-3, atol=1e-3)
    assert info.nfe == m.calls and info.vjps == info.nfe * D
    assert (
        info.ode.sigmas[0] == mixture.schedule.sigma_min and info.ode.sigmas[-1] == mixture.schedule.sigma_max
    )


def test_fixed_step_error_falls_with_nfe(mixture, x0, truth):
    errs = [
        (log_likelihood(mixture, x0[:2], solver="adams", nfe=n)[0] - truth[:2]).abs().max() for n in (10, 40)
    ]
    assert errs[1] < errs[0] / 4


def test_exact_divergence_in_chunks(mixture, x0, monkeypatch):
    whole, _ = log_likelihood(mixture, x0[:2], solver="euler", nfe=3)
    monkeypatch.setattr(likelihood, "_CHUNK", 2 * D * 5)  # 5 unit vectors per backward pass
    chunked, info = log_likelihood(mixture, x0[:2], solver="euler", nfe=3)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-10)
    assert info.vjps == 3 * D


def test_auto_rule():
    assert likelihood.EXACT_MAX_DIM >= D  # the zoo's 8×8 digits get the exact divergence


@pytest.mark.parametrize(
    "kwargs, x, name",
    [
        ({}, lambda x: x.reshape(len(x), -1), "x0"),
        ({}, lambda x: x.clone().index_fill_(0, torch.tensor([1]), math.nan), "x0"),
        ({"divergence": "hutch"}, None, "divergence"),
        ({"divergence": "hutchinson", "probes": "normal"}, None, "probes"),
        ({"divergence": "hutchinson", "n_probes": 0}, None, "n_probes"),
        ({"solver": "ddim", "eta": 0.5}, None, "solver"),
        ({"solver": "heun", "sigmas": [0.5, 0.0]}, None, "sigmas"),
        ({"sigma_start": 1e9}, None, "sigma_start"),
    ],
)
def test_bad_input_names_the_argument(mixture, x0, kwargs, x, name):
    with pytest.raises(ValueError, match=f"^{name}: "):
        log_likelihood(mixture, x0[:2] if x is None else x(x0[:2]), **kwargs)


def test_model_without_gradients(mixture, x0):
    with pytest.raises(ValueError, match="^model: ε does not depend differentiably"):
        log_likelihood(Counting(mixture, no_grad=True), x0[:2], solver="euler", nfe=2)


def test_bits_per_dim():
    # the uniform density on [−1, 1]^D, log p = −D log 2, spends exactly `bits` bits per dimension
    shape = (1, 8, 8)
    uniform = torch.full((3,), -D * math.log(2))
    torch.testing.assert_close(
        bits_per_dim(uniform, shape, bits=8), torch.full((3,), 8.0, dtype=torch.float64)
    )
    torch.testing.assert_close(bits_per_dim(uniform, shape, bits=4)[0].item(), 4.0)
    torch.testing.assert_close(bits_per_dim(torch.zeros(1), (5,), 8, data_range=1.0)[0].item(), 8.0)
    for bad, name in ((dict(bits=0), "bits"), (dict(data_range=-1.0), "data_range")):
        with pytest.raises(ValueError, match=f"^{name}: "):
            bits_per_dim(uniform, shape, **bad)


def test_exported():
    assert odediff.log_likelihood is log_likelihood and odediff.bits_per_dim is bits_per_dim


# --- the command line ------------------------------------------------------------------------


def _one_line_error(capsys, text: str) -> None:
    err = capsys.readouterr().err.strip().split("\r")[-1]  # after a progress bar has erased itself
    assert len(err.split("\n")) == 1 and err.startswith("odediff likelihood: error: ") and text in err, err


def test_cli_prints_the_librarys_values(capsys):
    from odediff.cli import main
    from odediff.zoo.digits import load_data

    assert main(["likelihood", "--model", "gmm-digits", "--n", "2", "--solver", "heun", "--nfe", "6"]) == 0
    out = capsys.readouterr().out.splitlines()
    want, _ = log_likelihood(gmm_digits(), load_data("test")[0][:2].double(), solver="heun", nfe=6)
    bpd = bits_per_dim(want, (1, 8, 8), bits=4)
    assert out[0] == f"test[0]: log p = {float(want[0]):.2f} nats, {float(bpd[0]):.4f} bits/dim"
    assert "over 2 images of gmm-digits, heun, exact divergence, 6 NFE, 384 VJPs" in out[-1]


def test_cli_reads_images(tmp_path, capsys):
    from odediff.cli import main, write_image
    from odediff.zoo.digits import load_data

    png = str(tmp_path / "d.png")
    write_image(load_data("test")[0][:1], png, scale=1)
    argv = ["likelihood", png, "--model", "gmm-digits", "--solver", "euler", "--nfe", "3"]
    assert main([*argv, "--divergence", "hutchinson", "--n-probes", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{png}: log p = ") and " ± " in out[0] and "(8-bit bins)" in out[-1]


@pytest.mark.parametrize(
    "argv, text",
    [
        ("--model photos", "argument --model: photos has no built-in data set"),
        ("--solver heun --nfe 0", "argument --nfe"),
        ("--solver rk45 --nfe 5", "argument --nfe: rk45 is adaptive"),
        (
            "--solver torchdiffeq:rk4 --nfe 5 --model gmm-digits",
            "argument --nfe: torchdiffeq:rk4 cannot spend",
        ),
        ("--divergence hutch", "argument --divergence: invalid choice"),
        ("--divergence exact --n-probes 3", "argument --probes/--n-probes"),
        ("{missing}", "no such file"),
        ("{missing} --split test", "argument --split"),
    ],
)
def test_cli_bad_arguments_are_one_line_errors(argv, text, tmp_path, capsys):
    from odediff.cli import main

    capsys.readouterr()
    assert main(["likelihood", *argv.format(missing=str(tmp_path / "nope.png")).split()]) == 2
    _one_line_error(capsys, text)


def test_cli_tables_match_the_library():
    from odediff import cli

    assert cli.DIVERGENCES == likelihood.DIVERGENCES and cli.PROBES == likelihood.PROBES
    assert cli.LIKELIHOOD_NFE == odediff.grids.DEFAULT_NFE and likelihood.DEFAULT_TOL == 1e-5
