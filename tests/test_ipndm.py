"""benchmarks/ipndm.py, an independent iPNDM, against odediff's fixed-weight Adams of order 4."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

import odediff
from odediff.bench.ipndm import AB_WEIGHTS, ipndm, ipndm_sample
from odediff.grids import make_grid
from odediff.zoo import gmm_digits


def test_weights_are_adams_bashforth():
    """k-step weights integrate every polynomial of degree < k exactly over one unit step from
    values at s = 0, −1, …, −(k−1): Σ_j w_j p(−j) = ∫_0^1 p."""
    for k, w in enumerate(AB_WEIGHTS, start=1):
        assert len(w) == k
        for m in range(k):
            lhs = sum(Fraction(wj).limit_denominator(100) * Fraction(-j) ** m for j, wj in enumerate(w))
            assert lhs == Fraction(1, m + 1), (k, m)


@pytest.mark.parametrize("grid", ["karras", "log_snr", "uniform_t"])
@pytest.mark.parametrize("n", [3, 7, 12])
def test_matches_odediff_fixed_adams_order_4(grid, n):
    model = gmm_digits()
    noise = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    sigmas = make_grid(model.schedule, n, grid)
    x_ref, nfe = ipndm_sample(model, noise, sigmas)
    x, info = odediff.sample(
        model,
        noise,
        solver="adams",
        order=4,
        weights="fixed",
        variable="sigma",
        predict="eps",
        corrector=False,
        sigmas=sigmas,
        return_info=True,
    )
    assert nfe == info.nfe == n
    scale = x_ref.abs().max().item()
    assert (x - x_ref).abs().max().item() <= 1e-12 * scale
    if n > 3:  # the comparison can tell orders apart: order 3 differs once the 4th weight is used
        x3 = odediff.sample(
            model,
            noise,
            solver="adams",
            order=3,
            weights="fixed",
            variable="sigma",
            predict="eps",
            corrector=False,
            sigmas=sigmas,
        )
        assert (x3 - x_ref).abs().max().item() > 1e-6


def test_rejects_grid_not_ending_at_zero():
    with pytest.raises(ValueError, match="ending at 0"):
        ipndm(lambda x, s: x, torch.zeros(1), [2.0, 1.0])
