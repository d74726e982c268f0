"""Reversible solvers: decode undoes encode to round-off for any network; honest NFE; clear errors."""

import itertools
import math

import pytest
import torch
from conftest import TinyNet
from test_solvers import flow_error, slope

import odediff
from odediff import Latent
from odediff.solvers import SOLVERS

REVERSIBLE = sorted(name for name, s in SOLVERS.items() if s.reversible)
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def test_at_least_two_reversible_solvers():
    assert len(REVERSIBLE) >= 2 and all(SOLVERS[n].reversible for n in REVERSIBLE)


def random_model(dtype=torch.float32, channels=1, seed=0):
    torch.manual_seed(seed)
    return odediff.EpsModel(TinyNet(channels).to(dtype).eval(), odediff.DiscreteSchedule.linear())


def round_trip(model, x0, solver, n, **opts):
    with torch.no_grad():
        z, enc = odediff.encode(model, x0, solver=solver, nfe=n, return_info=True, **opts)
        back, dec = odediff.decode(model, z, return_info=True)
    return z, back, enc.nfe, dec.nfe


@pytest.mark.parametrize("solver", REVERSIBLE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_is_exact_for_a_random_network(solver, dtype):
    model = random_model(dtype)
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype) * 2 - 1
    for n in (2, 3, 5, 10, 50, 1000):
        z, back, n_enc, n_dec = round_trip(model, x0, solver, n)
        assert isinstance(z, Latent) and back.dtype == dtype and z.x.dtype == dtype
        assert n_enc == n and n_dec == n - 1  # the carried state spares decoding its first step
        err = (back - x0).abs().max().item()
        assert err <= TOL[dtype], (solver, dtype, n, err)
        assert torch.isfinite(z.xT).all()


@pytest.mark.parametrize("solver", REVERSIBLE)
@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (5, 1, 8, 8), (2, 3, 16, 16), (4, 3, 12, 20)])
def test_round_trip_shapes_and_grids(solver, shape):
    model = random_model(channels=shape[1], seed=2)
    x0 = torch.rand(shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    for grid in ("uniform_t", "karras", "log_snr"):
        _, back, _, _ = round_trip(model, x0, solver, 7, grid=grid)
        assert (back - x0).abs().max().item() <= 1e-5


@pytest.mark.parametrize("solver", REVERSIBLE)
def test_held_out_digits_with_the_trained_network(solver):
    from odediff.zoo import load
    from odediff.zoo.digits import load_data

    model = load("digits")
    x0 = load_data("test")[0][:32]
    for n in (5, 10, 100):
        _, back, _, _ = round_trip(model, x0, solver, n)
        assert (back - x0).abs().max().item() <= 1e-5
    # float64 at NFE 1000: where encoding amplifies most (fine non-uniform grid)
    model64, x64 = load("digits"), x0[:4].double()
    model64.net.double()
    _, back, _, _ = round_trip(model64, x64, solver, 1000)
    assert (back - x64).abs().max().item() <= 1e-10
    # DDIM inversion at the same budget is visibly lossy: the reason these solvers exist
    with torch.no_grad():
        ddim = odediff.decode(
            model, odediff.encode(model, x0, solver="euler", nfe=10), solver="euler", nfe=10
        )
    assert (ddim - x0).abs().max().item() > 1e-2


@pytest.fixture(scope="module")
def photo_unet():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()  # fmt: skip
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    return odediff.from_diffusers(unet, sched)


def photo(name: str, size: int) -> torch.Tensor:
    skimage = pytest.importorskip("skimage")
    from skimage.transform import resize

    img = getattr(skimage.data, name)()
    img = resize(img, (size, size), anti_aliasing=True)  # floats in [0, 1]
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() * 2 - 1


@pytest.mark.parametrize("solver", REVERSIBLE)
def test_real_photos_round_trip(photo_unet, solver):
    x0 = torch.cat([photo(name, 32) for name in ("astronaut", "coffee", "chelsea")])
    for n in (5, 20):
        _, back, _, _ = round_trip(photo_unet, x0, solver, n)
        assert (back - x0).abs().max().item() <= 1e-5
    x64 = torch.cat([photo(name, 64) for name in ("astronaut", "coffee", "chelsea")])
    _, back, _, _ = round_trip(photo_unet, x64, solver, 10)
    assert (back - x64).abs().max().item() <= 1e-5


def test_latent_mismatch_is_a_clear_error():
    model = random_model()
    x0 = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    z = odediff.encode(model, x0, solver="bdia", nfe=10)
    for kwargs in (
        dict(solver="belm"), dict(solver="bdia", nfe=12), dict(solver="bdia", gamma=1.0),
        dict(grid="karras"), dict(solver="euler"),
    ):  # fmt: skip
        with pytest.raises(
            ValueError, match=r"xT: this latent was encoded by bdia\(gamma='neutral'\) with nfe=10"
        ):
            odediff.decode(model, z, **kwargs)
    # the same settings spelt out are accepted, and give the same image
    same = odediff.decode(model, z, solver="bdia", nfe=10, grid=odediff.grids.DEFAULT_GRID)
    assert torch.equal(same, odediff.decode(model, z))


def test_latent_saves_and_loads(tmp_path):
    model = random_model()
    x0 = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    z = odediff.encode(model, x0, solver="belm", nfe=6, variable="sigma")
    torch.save(z.to_dict(), tmp_path / "z.pt")
    z2 = Latent.from_dict(torch.load(tmp_path / "z.pt", weights_only=True))
    assert z2.solver == z.solver and z2.nfe == 6 and z2.dtype == torch.float32
    assert torch.equal(odediff.decode(model, z2), odediff.decode(model, z))
    with pytest.raises(ValueError, match="latent: not an odediff latent"):
        Latent.from_dict({"xT": z.xT})


def _kinds():
    """(name, model, dtype): every kind of network a user brings."""
    from odediff.zoo import load

    unet = TinyNet().eval()
    torch.manual_seed(0)
    sched = odediff.DiscreteSchedule.linear()
    yield "parameters float32", odediff.EpsModel(unet, sched), torch.float32
    yield "parameters float64", odediff.EpsModel(TinyNet().double().eval(), sched), torch.float64
    yield "lambda around a network", odediff.EpsModel(lambda x, t: unet(x, t), sched), torch.float32
    yield "parameter-free float32 (gmm-digits)", load("gmm-digits"), torch.float32
    yield "parameter-free float64 (gmm-digits)", load("gmm-digits"), torch.float64
    w = torch.linspace(-0.5, 0.5, 64).reshape(1, 1, 8, 8)
    yield (
        "parameter-free float16",
        odediff.EpsModel(lambda x, t: x + w.to(x) * torch.tanh(x), sched),
        (torch.float16),
    )


@pytest.mark.parametrize("solver", REVERSIBLE)
def test_round_trip_is_exact_for_every_kind_of_network(solver):
    """Encode and decode evaluate the network in the same dtype, so the round trip is exact in
    float32/float64 and, in half precision, within the half round-off of the input."""
    for kind, model, dtype in _kinds():
        x0 = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(9)) * 2 - 1).to(dtype)
        with torch.no_grad():
            back = odediff.decode(model, odediff.encode(model, x0, solver=solver, nfe=10))
        assert back.dtype == dtype, kind
        err = (back.double() - x0.double()).abs().max().item()
        tol = TOL.get(dtype, torch.finfo(torch.float16).eps * x0.abs().max().item())
        assert err <= tol, (kind, err)


def test_decoding_with_another_model_is_refused_unless_allowed(tmp_path):
    from odediff.fingerprint import fingerprint

    model, other = random_model(seed=0), random_model(seed=1)
    x0 = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(7)) * 2 - 1
    z = odediff.encode(model, x0, solver="belm", nfe=6)
    for wrong in (other, odediff.EpsModel(model.net, odediff.DiscreteSchedule.cosine())):
        with pytest.raises(
            ValueError, match="xT: this latent was encoded by another model.*allow_other_model=True"
        ):
            odediff.decode(wrong, z)
    edited = odediff.decode(other, z, allow_other_model=True)
    assert edited.shape == x0.shape and not torch.allclose(edited, x0, atol=1e-3)
    # the same weights in a new object, or after a save and load of the latent, are the same model
    twin = random_model(seed=0)
    assert fingerprint(twin) == fingerprint(model) != fingerprint(other)
    torch.save(z.to_dict(), tmp_path / "z.pt")
    z2 = Latent.from_dict(torch.load(tmp_path / "z.pt", weights_only=True))
    assert (odediff.decode(twin, z2) - x0).abs().max().item() <= 1e-5
    # guidance weight and conditioning are part of the model
    with pytest.raises(TypeError, match="allow_other_model: expected True or False"):
        odediff.decode(model, z, allow_other_model="yes")


def test_fingerprint_sees_weights_closures_and_guidance():
    from odediff.fingerprint import fingerprint

    sched = odediff.DiscreteSchedule.linear()
    net = TinyNet().eval()
    a = odediff.EpsModel(lambda x, t: net(x, t), sched)
    before = fingerprint(a)
    with torch.no_grad():
        net.out.bias.add_(1e-3)  # a lambda's closure holds the network: its weights count
    assert fingerprint(a) != before
    assert fingerprint(odediff.EpsModel(lambda x, t: 2 * x, sched)) != fingerprint(
        odediff.EpsModel(lambda x, t: 3 * x, sched)
    )
    cond = {"c": torch.ones(1, 3)}
    uncond = {"c": torch.zeros(1, 3)}
    m = odediff.EpsModel(lambda x, t, c: x, sched)
    g1, g2 = (odediff.Guided(m, cond=cond, uncond=uncond, w=w) for w in (1.0, 2.0))
    g3 = odediff.Guided(m, cond={"c": 2 * torch.ones(1, 3)}, uncond=uncond, w=1.0)
    assert len({fingerprint(g1), fingerprint(g2), fingerprint(g3)}) == 3


def test_decoding_x_alone_starts_afresh():
    """latent.x is a plain tensor: decoding it samples from x_T (not exact, but close)."""
    model = random_model()
    x0 = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(6)) * 2 - 1
    z = odediff.encode(model, x0, solver="bdia", nfe=20)
    fresh, info = odediff.decode(model, z.x, solver="bdia", nfe=20, return_info=True)
    assert info.nfe == 20 and fresh.shape == x0.shape and fresh.dtype == x0.dtype


def test_bad_parameters():
    with pytest.raises(ValueError, match="gamma: expected 'neutral' or a number in"):
        odediff.get_solver("bdia", gamma=0.0)
    with pytest.raises(ValueError, match="variable: expected"):
        odediff.get_solver("belm", variable="t")


@pytest.fixture(scope="module")
def gmm_truth():
    from odediff.reference import reference_solve
    from odediff.zoo import gmm_digits

    model = gmm_digits()
    noise = torch.randn(32, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    truth, _ = reference_solve(model, noise)
    return model, noise, truth


def rmse(model, noise, truth, **kw) -> float:
    return (odediff.sample(model, noise, **kw) - truth).square().mean().sqrt().item()


NFES = (5, 6, 8, 10, 12, 15, 20, 30, 50, 100, 200, 500, 1000)


@pytest.mark.parametrize("solver", REVERSIBLE)
def test_sampler_neither_diverges_nor_oscillates(gmm_truth, solver):
    """Default parameters as a sampler from NFE 5 to 1000: the error falls steadily towards 0."""
    errs = [rmse(*gmm_truth, solver=solver, nfe=n) for n in NFES]
    assert all(math.isfinite(e) for e in errs)
    assert errs[0] < 0.5 and errs[-1] < 1e-5, errs
    assert all(b < 1.1 * a for a, b in itertools.pairwise(errs)), errs  # no rebound from one NFE to the next


@pytest.mark.parametrize("solver", REVERSIBLE)
def test_latent_stays_gaussian_sized_at_any_nfe(solver):
    from odediff.zoo import load
    from odediff.zoo.digits import load_data

    model, x0 = load("digits"), load_data("test")[0][:8]
    for n in (5, 100, 1000):
        with torch.no_grad():
            z = odediff.encode(model, x0, solver=solver, nfe=n)
        std = z.x.std().item()
        assert 0.6 < std < 1.5, (n, std)


def test_belm_within_one_and_a_half_of_the_best_non_reversible_solver(gmm_truth):
    candidates = [
        dict(solver="adams"),
        dict(solver="adams", order=4),
        dict(solver="heun"),
        dict(solver="euler"),
    ]
    for n in (10, 20):
        best = min(rmse(*gmm_truth, nfe=n, **kw) for kw in candidates)
        ours = rmse(*gmm_truth, solver="belm", nfe=n)
        assert ours <= 1.5 * best, (n, ours, best)


@pytest.mark.parametrize("solver", REVERSIBLE)
def test_empirical_order_is_two(gauss, solver):
    res = [flow_error(gauss, solver, n) for n in (80, 160, 320)]
    p = slope(*zip(*res))
    assert 1.85 <= p <= 2.3, (p, res)
