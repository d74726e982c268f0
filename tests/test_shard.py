"""odediff.shard: the split, and a 2-process NFE study equal to the single-process one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from odediff import shard

SCRIPT = """
import importlib.util
import sys
import torch
torch.set_num_threads(1)
from odediff import shard
from odediff.bench.quality import quality_study
from odediff.bench.study import PEERS, nfe_error_study
from odediff.reference import Reference
shard.init()
nfe_error_study(
    "gmm-digits", sys.argv[1], noises=5, nfes=(4, 8), peers=False, progress=False, chunk=2, check=1,
    methods={"odediff adams": dict(solver="adams"), "odediff euler": dict(solver="euler")},
    reference=Reference(rtol=1e-6),
)
peers = {"diffusers Heun": PEERS["diffusers Heun"]} if importlib.util.find_spec("diffusers") else False
quality_study(
    sys.argv[1], model_name="gmm-digits", n=25, nfes=(4,), chunk=10, resamples=20, progress=False,
    methods={"odediff adams": dict(solver="adams"), "DDIM η = 1": dict(solver="ddim", eta=1.0)},
    ipndm=("karras",), peers=peers, ddpm=False,
)
shard.finish()
"""


@pytest.mark.parametrize("world", [1, 2, 3, 7])
@pytest.mark.parametrize("n", [0, 1, 5, 16])
def test_blocks_tile_the_items_in_order(n, world):
    blocks = [shard.block(n, r, world) for r in range(world)]
    assert [i for b in blocks for i in b] == list(range(n))
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_single_process_is_trivial():
    assert shard.init() == (0, 1)
    assert shard.is_main()
    assert shard.share(5) == range(5)
    t = torch.arange(6.0).view(3, 2)
    assert shard.gather(t) is t
    shard.finish()
    with pytest.raises(ValueError):
        shard.block(3, 2, 2)


def _gloo() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


def _one_and_two_processes(tmp_path, text: str, timeout: float):
    """Run the script ``text`` with an output folder argument, in one process and under torchrun
    with 2 (both at once: the single-process run costs no extra wall time); the two folders."""
    script = tmp_path / "script.py"
    script.write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    # this checkout's odediff first, whatever odediff is installed
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    pipes = dict(env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(one)], **pipes),
        subprocess.Popen([*launcher, str(script), str(two)], **pipes),
    ]
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
        assert p.returncode == 0, err[-2000:]
    return one, two


@pytest.mark.skipif(not _gloo(), reason="torch.distributed with gloo is not available")
def test_two_processes_write_what_one_writes(tmp_path):
    """Noise i is the same tensor row and goes through the same chunk (chunks of 2 noises: 5 noises
    make 3 chunks, so the ranks hold 1 and 2 chunks and gather pads), the reference is solved per
    noise, every process runs one thread, and rank 0 reduces the gathered per-noise sums in noise
    order: so the files must agree bit for bit, not just to a tolerance. The per-noise CSV would
    also catch a gather that returned the rows in another order. The quality study's chunks of
    samples have their own seeds and rank 0 computes every distance, so its files agree too."""
    one, two = _one_and_two_processes(tmp_path, SCRIPT, timeout=180)

    for name in ("nfe_vs_error.csv", "nfe_vs_error_per_noise.csv", "nfe_vs_error.md", "nfe_vs_quality.csv",
                 "nfe_vs_quality.md"):  # fmt: skip
        a, b = (one / name).read_text(), (two / name).read_text()
        assert a == b, name
    lines = (one / "nfe_vs_error.csv").read_text().splitlines()
    assert len(lines) == 1 + 1 + 2 * 2  # header, reference, 2 methods × 2 NFE
    assert all(",5," in ln for ln in lines[1:])  # every row covers all 5 noises
    assert len((one / "nfe_vs_error_per_noise.csv").read_text().splitlines()) == 1 + 5 * 2 * 2
    # the quality study: 3 chunks of 10, 10 and 5 samples; a stochastic row (DDIM η = 1) included
    quality = (one / "nfe_vs_quality.csv").read_text()
    assert all(s in quality for s in ("odediff adams", "DDIM η = 1", "iPNDM karras", "real train data"))


TUNE_SCRIPT = """
import sys
import torch
torch.set_num_threads(1)
import odediff
from odediff import shard
from odediff.zoo import gmm_digits

def reference(model, x):
    with torch.no_grad():
        out, info = odediff.sample(model, x, nfe=200, return_info=True)
    return out, info.nfe

shard.init()
model = gmm_digits()
runs = {
    "adams": dict(nfe=5, iterations=12, check=3, patience=8),
    "heun": dict(nfe=7, evaluations=40),
}
for solver, kw in runs.items():
    g = odediff.tune_grid(model, solver=solver, noises=5, holdout=3, reference=reference, progress=False,
                          model_name="gmm-digits", **kw)
    if shard.is_main():
        g.save(f"{sys.argv[1]}/{solver}.json")
shard.finish()
"""


def _numbers(v):
    """Every number of a JSON value, in order (lists and dicts flattened)."""
    if isinstance(v, dict):
        return [x for k in sorted(v) for x in _numbers(v[k])]
    if isinstance(v, list):
        return [x for e in v for x in _numbers(e)]
    return [float(v)] if isinstance(v, (int, float)) and not isinstance(v, bool) else []


@pytest.mark.skipif(not _gloo(), reason="torch.distributed with gloo is not available")
def test_tuning_on_two_processes_gives_the_one_process_solver(tmp_path):
    """5 training and 3 held-out noises over 2 ranks (shares of 2 + 3 and 1 + 2): adams by Adam
    through the solve (gradients summed over the ranks) and heun's grid by Powell (the global error
    on every rank). Only the order of the sums differs, so the solvers agree to round-off; Powell's
    search is kept short enough that round-off cannot turn one of its comparisons."""
    import json

    one, two = _one_and_two_processes(tmp_path, TUNE_SCRIPT, timeout=240)
    for solver in ("adams", "heun"):
        a, b = (json.loads((d / f"{solver}.json").read_text()) for d in (one, two))
        a.pop("seconds"), b.pop("seconds")
        assert a.keys() == b.keys() and a["cost_nfe"] == b["cost_nfe"]
        assert a["train_error"] < a["default_error"]  # it tuned something
        x, y = _numbers(a), _numbers(b)
        assert len(x) == len(y) and len(x) >= 10
        gap = max(abs(u - v) / max(abs(u), 1e-3) for u, v in zip(x, y))
        print(f"{solver}: {len(x)} numbers, largest relative difference {gap:.1e}")
        assert gap < 1e-9, solver
