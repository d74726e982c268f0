"""Euler on the σ-ODE is DDIM (η = 0), to float round-off, on any grid."""

import pytest
import torch

import odediff
from odediff.schedules import DiscreteSchedule


def ddim_reference(net, ac, timesteps, x):
    """DDIM η = 0 written out in VP coordinates (Song et al. eq. 12), ᾱ_prev = 1 at the end."""
    ts = [int(t) for t in timesteps]
    for i, t in enumerate(ts):
        a, a_prev = ac[t], (ac[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), dtype=ac.dtype))
        eps = net(x, torch.full((x.shape[0],), float(t), dtype=x.dtype))
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("steps", [10, 50])
def test_euler_equals_diffusers_ddim(tiny_net, spacing, steps):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
        set_alpha_to_one=True, timestep_spacing=spacing,
    )  # fmt: skip
    sched.set_timesteps(steps)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(tiny_net(x, t.expand(3).float()), t, x, eta=0.0).prev_sample
        model = odediff.EpsModel(tiny_net, sched.alphas_cumprod)
        ours, info = odediff.sample(model, noise, solver="euler", timesteps=sched.timesteps, return_info=True)
    assert info.nfe == steps
    err = (ours - x).abs().max().item()
    assert err <= 1e-5, err
    ddim = odediff.sample(model, noise, solver="ddim", eta=0.0, timesteps=sched.timesteps)
    assert (ddim - x).abs().max().item() <= 1e-5


@pytest.mark.parametrize("timesteps", [list(range(999, -1, -111)), [999, 500, 3], [640, 20]])
def test_euler_equals_independent_ddim_float64(tiny_net, timesteps):
    net = tiny_net.double()
    ac = DiscreteSchedule.linear().alphas_cumprod
    noise = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = ddim_reference(net, ac, timesteps, noise)
        ours = odediff.sample(odediff.EpsModel(net, ac), noise, solver="euler", timesteps=timesteps)
    assert (ours - ref).abs().max().item() <= 1e-10
