"""Sample quality: Fréchet distances with bootstrap standard errors, and the NFE-vs-quality study.

The Fréchet distance between Gaussians fitted to two sets of vectors (FID when the vectors are
Inception features; here the features of a small classifier trained on the model's data, see
:data:`FEATURE_SPACES`):

    d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2})

computed in float64 with symmetric eigen-decompositions (Σ₁^{1/2} Σ₂ Σ₁^{1/2} is symmetric positive
semi-definite and has the eigenvalues of Σ₁Σ₂, so its trace square root is tr (Σ₁Σ₂)^{1/2}).

:func:`quality_study` judges samplers the way a user compares them: every sampler draws n samples from
the same noises at each NFE, and each distance to the held-out data comes with its bootstrap standard
error (:meth:`FrechetReference.bootstrap`). It covers odediff's solvers, the independent iPNDM
(:mod:`.ipndm`) and every diffusers scheduler of the NFE-vs-error study (:data:`.study.PEERS`, each
driven by its own loop by :func:`.study.run_peer` with num_inference_steps from
:func:`.study.peer_steps`).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import shard
from ..api import sample
from .ipndm import ipndm_method
from .study import DEFAULT_LABEL, ODEDIFF_METHODS, PEERS, Peer, peer_steps, run_peer

__all__ = [
    "DDPM_LABEL",
    "EXACT_LABEL",
    "FEATURE_SPACES",
    "FLOOR_LABEL",
    "IPNDM_GRIDS",
    "NFES",
    "N_SAMPLES",
    "ODE_LABEL",
    "RESAMPLES",
    "FeatureSpace",
    "FrechetReference",
    "default_methods",
    "digits_frechet",
    "feature_space",
    "frechet_distance",
    "frechet_from_stats",
    "gaussian_stats",
    "plot_quality",
    "quality_markdown",
    "quality_models",
    "quality_study",
    "ratio_table",
    "sample_size_study",
]

ArrayLike = Tensor | np.ndarray

NFES = (4, 5, 6, 8, 10, 15, 20)
# measured (benchmarks/quality_sample_size.py, digits, NFE 10): the bootstrap SE of the default is 0.81,
# 0.47, 0.44, 0.39 at n = 4000, 8000, 10000, 12000, and that of the best peer 0.38 at 10000
N_SAMPLES = 10_000
RESAMPLES = 200
IPNDM_GRIDS = ("karras", "log_snr", "uniform_t")
DDPM_LABEL = "DDPM ancestral (all 1000 steps)"
FLOOR_LABEL = "real train data (floor)"
EXACT_LABEL = "exact samples of the model (what an exact solve gives)"
ODE_LABEL = "the ODE's own samples (default adams, NFE {})"
# odediff configurations of the error study shown beside its default (which comes first)
_PICKS = ("odediff adams 2 fixed, quadratic_t", "odediff euler", "odediff heun")


def _as_rows(x: ArrayLike, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim < 2 or a.shape[0] < 2:
        raise ValueError(f"{name}: expected at least 2 rows (N, ...), got shape {a.shape}")
    return a.reshape(a.shape[0], -1)


def gaussian_stats(x: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean μ and unbiased covariance Σ = (X − μ)ᵀ(X − μ)/(N − 1) of the rows of x (flattened), float64."""
    a = _as_rows(x, "x")
    return a.mean(0), np.cov(a, rowvar=False).reshape(a.shape[1], a.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, u = np.linalg.eigh((s + s.T) / 2)
    return (u * np.sqrt(np.clip(w, 0, None))) @ u.T


def frechet_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}, in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"expected means of one shape (D,) and covariances (D, D), got {mu1.shape}, {cov1.shape}, "
            f"{mu2.shape}, {cov2.shape}"
        )
    a = _psd_sqrt(cov1)
    m = a @ cov2 @ a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * cross)
    return max(d, 0.0)  # round-off can leave −1e-15 for identical sets


def frechet_distance(x: ArrayLike, y: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to the rows of x (N, ...) and y (M, ...)."""
    return frechet_from_stats(*gaussian_stats(x), *gaussian_stats(y))


def digits_frechet(samples: Tensor, reference: Tensor) -> dict[str, float]:
    """Fréchet distances of digit samples to a reference set: in the classifier's 64-d feature space
    (``fd_features``) and in the 64-d pixel space (``fd_pixels``). Samples are clamped to the data
    range [−1, 1] first, as an image would be when saved."""
    from ..zoo.classifier import features

    x = samples.detach().float().cpu().clamp(-1, 1)
    ref = reference.detach().float().cpu()
    return {
        "fd_features": frechet_distance(features(x), features(ref)),
        "fd_pixels": frechet_distance(x, ref),
    }


class FrechetReference:
    """The reference side of many Fréchet distances, factored once: μ_r, Σ_r, Σ_r^{1/2}, tr Σ_r.

    :meth:`bootstrap` gives a set's distance and the distances of its bootstrap resamples from the
    feature rows alone (no features are recomputed): each resample draws n of the set's n rows with
    replacement, i.e. multiplicities c ~ Multinomial(n; 1/n, …, 1/n), and its statistics are

        μ* = Σᵢ cᵢ fᵢ / n,    Σ* = (Σᵢ cᵢ fᵢ fᵢᵀ − n μ* μ*ᵀ) / (n − 1)

    for all resamples at once (one matrix product over the rows' outer products, rows centred first).
    The reference set is held fixed: its own sampling noise is common to every set compared with it.
    """

    def __init__(self, features: ArrayLike) -> None:
        a = _as_rows(features, "features")
        self.n = len(a)
        self.mu, self.cov = gaussian_stats(a)
        self.root = _psd_sqrt(self.cov)
        self.trace = float(np.trace(self.cov))

    def _distances(self, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
        """Fréchet distances of a batch of statistics, mu (B, D) and cov (B, D, D), to the reference."""
        if mu.shape[1:] != self.mu.shape:
            raise ValueError(f"features: expected {self.mu.size} columns, got {mu.shape[1]}")
        m = self.root @ cov @ self.root
        w = np.linalg.eigvalsh((m + np.swapaxes(m, 1, 2)) / 2)
        cross = np.sqrt(np.clip(w, 0, None)).sum(-1)
        d = np.sum((mu - self.mu) ** 2, -1) + np.trace(cov, axis1=1, axis2=2) + self.trace - 2 * cross
        return np.maximum(d, 0.0)

    def distance(self, x: ArrayLike) -> float:
        """Fréchet distance of the rows of x to the reference."""
        mu, cov = gaussian_stats(x)
        return float(self._distances(mu[None], cov[None])[0])

    def bootstrap(
        self, x: ArrayLike, resamples: int = RESAMPLES, seed: int = 0, block: int = 2048
    ) -> tuple[float, np.ndarray]:
        """(distance of x, the distances of ``resamples`` bootstrap resamples of x's rows).

        The resampled indices come from ``numpy.random.default_rng(seed)``, so two sets of the same
        size get the same index sets: their replicates are paired (sample i of one set with sample
        i of the other), which is what the SE of a difference between rows that share their noises
        needs. The standard error of the distance is ``replicates.std(ddof=1)``."""
        a = _as_rows(x, "x")
        if resamples < 2:
            raise ValueError(f"resamples: expected at least 2, got {resamples}")
        n, d = a.shape
        mean = a.mean(0)
        c = a - mean
        idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
        flat = (idx + n * np.arange(resamples)[:, None]).ravel()
        counts = np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)
        m = counts @ c / n  # (B, D): the resamples' means of the centred rows
        iu, ju = np.triu_indices(d)
        second = np.zeros((resamples, len(iu)))
        for s in range(0, n, block):  # Σᵢ cᵢ fᵢ fᵢᵀ (upper triangle), block by block of rows
            cb = c[s : s + block]
            second += counts[:, s : s + block] @ (cb[:, iu] * cb[:, ju])
        upper = (second - n * m[:, iu] * m[:, ju]) / (n - 1)
        cov = np.empty((resamples, d, d))
        cov[:, iu, ju] = upper
        cov[:, ju, iu] = upper
        reps = self._distances(m + mean, cov)
        full = self._distances(mean[None], np.cov(a, rowvar=False).reshape(1, d, d))
        return float(full[0]), reps


# --- feature spaces -------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSpace:
    """What the Fréchet distance of one family of models is measured in, and against what.

    ``features`` maps samples (N, C, H, W) in the data range [−1, 1] to (N, D); ``reference`` loads
    the data to match (held-out data of the model's distribution, or its train data where the
    held-out data come from another one); ``train`` the training data, whose own distance (of n of
    them) to the reference is the floor a perfect sampler would reach at that sample size."""

    name: str
    features: Callable[[Tensor], Tensor]
    reference: Callable[[], Tensor]
    train: Callable[[], Tensor]
    description: str = ""


def _digits_space() -> FeatureSpace:
    from ..zoo.classifier import features
    from ..zoo.digits import load_data

    return FeatureSpace(
        "digits classifier", features, lambda: load_data("test")[0], lambda: load_data("train")[0],
        "the 64-d penultimate features of the digits classifier (odediff.zoo.classifier), against the "
        "360 held-out test digits",
    )  # fmt: skip


def _photos_space() -> FeatureSpace | None:
    try:  # the photo-patch model and its feature network (odediff.zoo.photos, .patch_features)
        from ..zoo.patch_features import features
        from ..zoo.photos import load_patches
    except ImportError:
        return None
    # Against the train photos' patches, not the held-out photos': those are other scenes (their
    # distance to the train patches is 174 in these features), so a distance to them rewards
    # samples that are off the model's distribution, and it grew with NFE for every sampler. The
    # train patches are the distribution the model learned, as FID's CIFAR-10 train set.
    return FeatureSpace(
        "patch classifier", features, lambda: load_patches("train")[0], lambda: load_patches("train")[0],
        "the 64-d penultimate features of the photo-patch classifier (odediff.zoo.patch_features), "
        "against the 8955 patches of the train photos (the held-out photos are other scenes)",
    )  # fmt: skip


# family -> (does a model (name, sample_shape) belong to it?, its feature space or None if missing);
# the first family whose name test passes wins, then the first whose shape test passes
FEATURE_SPACES: dict[str, tuple[Callable[[str], bool], Callable[[tuple[int, ...]], bool], Callable]] = {
    "digits": (lambda name: name.startswith("digits"), lambda shape: shape == (1, 8, 8), _digits_space),
    "photos": (lambda name: name.startswith("photos"), lambda shape: False, _photos_space),
}


def feature_space(model_name: str, sample_shape: Sequence[int] | None = None) -> FeatureSpace:
    """The feature space that judges a built-in model: by name (``digits``, ``digits-*``; ``photos*``)
    or else by its sample shape ((1, 8, 8): the digits, e.g. ``gmm-digits``). The shape is looked up
    by loading the model if not given. Raises ValueError if no family fits or its modules are absent."""
    family = next((f for f, (by_name, _, _) in FEATURE_SPACES.items() if by_name(model_name)), None)
    if family is None:
        if sample_shape is None:
            from ..zoo import load

            sample_shape = load(model_name).sample_shape
        shape = tuple(sample_shape)
        family = next((f for f, (_, by_shape, _) in FEATURE_SPACES.items() if by_shape(shape)), None)
    space = FEATURE_SPACES[family][2]() if family is not None else None
    if space is None:
        why = (
            f"its family {family!r} is not installed" if family else f"no family of {sorted(FEATURE_SPACES)}"
        )
        raise ValueError(f"model_name: no feature space for {model_name!r} ({why})")
    return space


def quality_models() -> list[str]:
    """The built-in models (:data:`odediff.zoo.MODELS`) that have a feature space."""
    from ..zoo import MODELS

    out = []
    for name in MODELS:
        try:
            feature_space(name)
        except ValueError:
            continue
        out.append(name)
    return out


# --- the NFE-vs-quality study ---------------------------------------------------------------


def default_methods() -> dict[str, dict[str, Any]]:
    """odediff's default (:data:`.study.DEFAULT_LABEL`) and a few configurations of the error study
    (:data:`.study.ODEDIFF_METHODS`: Adams order 2 on the default grid, Euler, Heun), read from it
    at call time; a configuration equal to the default's is left out."""
    default = ODEDIFF_METHODS[DEFAULT_LABEL]
    picks = {k: ODEDIFF_METHODS[k] for k in _PICKS if k in ODEDIFF_METHODS and ODEDIFF_METHODS[k] != default}
    return {DEFAULT_LABEL: dict(default), **{k: dict(v) for k, v in picks.items()}}


@dataclass
class _Job:
    label: str
    family: str  # "odediff", "peer" (diffusers and iPNDM), "ddpm" or "ode"
    targets: list[int]  # the target NFEs this run stands for (peers: targets may share a run)
    run: Callable[[Tensor, torch.Generator], tuple[Tensor, int]]


def _solve(model, n: int, kw: Mapping[str, Any]) -> Callable[[Tensor, torch.Generator], tuple[Tensor, int]]:
    """A job's run: :func:`odediff.sample` with budget n and ``kw``, returning its counted NFE."""

    def run(x: Tensor, g: torch.Generator) -> tuple[Tensor, int]:
        x0, info = sample(model, x, nfe=n, generator=g, return_info=True, **kw)
        return x0, info.nfe

    return run


def _jobs(model, methods, ipndm, peers: Mapping[str, Peer], nfes: list[int], ddpm: bool, ode_nfe: int | None):
    jobs = [_Job(label, "odediff", [n], _solve(model, n, kw)) for label, kw in methods.items() for n in nfes]
    for grid in ipndm:
        method = ipndm_method(grid)
        for n in nfes:
            jobs.append(_Job(f"iPNDM {grid}", "peer", [n], lambda x, g, m=method, n=n: m(model, x, n)))
    for label, peer in peers.items():
        runs: dict[int, _Job] = {}
        for n in nfes:
            found = peer_steps(model.schedule, peer, n)
            if found is None:  # even one step costs more than n: no entry
                continue
            steps, expect = found
            if steps not in runs:

                def run(x: Tensor, g: torch.Generator, p=peer, s=steps, expect=expect) -> tuple[Tensor, int]:
                    x0, spent = run_peer(model, p, x, s)
                    if spent != expect:  # the free probe and the model must take the same path
                        raise RuntimeError(f"{p.scheduler}: {s} steps cost {spent} NFE, probed {expect}")
                    return x0, spent

                runs[steps] = _Job(label, "peer", [], run)
                jobs.append(runs[steps])
            runs[steps].targets.append(n)
    if ddpm:
        T = model.schedule.T
        kw = dict(solver="ddim", eta=1.0, timesteps=torch.arange(T - 1, -1, -1))
        jobs.append(_Job(DDPM_LABEL, "ddpm", [T], _solve(model, T, kw)))
    if ode_nfe:
        jobs.append(_Job(ODE_LABEL.format(ode_nfe), "ode", [ode_nfe], _solve(model, ode_nfe, {})))
    return jobs


def _setup(model_name, methods, ipndm, peers, nfes, ddpm, ode_nfe=None):
    from ..zoo import load

    model = load(model_name)
    space = feature_space(model_name, tuple(model.sample_shape))
    if peers is True:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            raise ImportError("peers: diffusers is not installed; pass peers=False") from None
        peers = PEERS
    methods = default_methods() if methods is None else methods
    return model, space, _jobs(model, methods, list(ipndm), peers or {}, nfes, ddpm, ode_nfe)


def _chunk_seed(seed: int, c: int) -> int:
    return seed * 1_000_003 + c


def _samples(job: _Job, mine: Sequence[int], n: int, chunk: int, seed: int, shape, dtype):
    """This rank's samples of one job, (rows, *shape) float32, and the NFE each chunk spent (−1 where
    the method refused the budget with a ValueError)."""
    xs, spent = [], []
    for c in mine:
        g = torch.Generator().manual_seed(_chunk_seed(seed, c))
        noise = torch.randn((min(chunk, n - c * chunk), *shape), generator=g, dtype=dtype)
        try:
            with torch.no_grad():
                x0, k = job.run(noise, g)
        except ValueError:  # a budget this solver cannot spend: no entry
            x0, k = torch.zeros_like(noise), -1
        xs.append(x0.detach().float().cpu())
        spent.append(float(k))
    x = torch.cat(xs) if xs else torch.zeros((0, *shape))
    return x, torch.tensor(spent, dtype=torch.float64)


def quality_study(
    out_dir: str | None,
    *,
    model_name: str = "digits",
    n: int = N_SAMPLES,
    nfes: Iterable[int] = NFES,
    methods: Mapping[str, Mapping[str, Any]] | None = None,
    ipndm: Iterable[str] = IPNDM_GRIDS,
    peers: bool | Mapping[str, Peer] = True,
    ddpm: bool = True,
    ode_nfe: int | None = None,
    resamples: int = RESAMPLES,
    chunk: int = 250,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]] | None:
    """Fréchet distance ± bootstrap SE of n samples per (method, NFE) to a built-in model's held-out
    data, in its feature space (:func:`feature_space`).

    Rows: ``methods`` (label → keyword arguments of :func:`odediff.sample`; default
    :func:`default_methods`), iPNDM on each grid family of ``ipndm``, every diffusers scheduler of
    ``peers`` (True: :data:`.study.PEERS`; needs diffusers) driven by its own loop
    (:func:`.study.run_peer`), optionally DDPM ancestral sampling over all T steps (``ddim`` with
    η = 1 on the timesteps T−1, …, 0), optionally the ODE's own samples (the default solver at
    ``ode_nfe`` evaluations, standing in for the exact solution: on the digits networks the default's
    distance moves by ≤ 0.2 from NFE 50 to 200), the floor: the distance of min(n, all) real train
    images, and for a model that can sample its own distribution exactly (``sample_data``, e.g. the Gaussian
    mixture) the distance of n exact samples: what an exact solve of the ODE would reach. There, a
    sampler that lands below it is further from the model, not closer to the data's quality.
    A peer whose scheduler cannot spend a target NFE exactly is run with the num_inference_steps
    whose counted NFE is the largest below it (:func:`.study.peer_steps`, as the error study does) and
    reported at the NFE it actually spent (``nfe``; ``target`` keeps the column it fills); it is
    skipped for a target only if even one step costs more. An odediff solver that refuses a budget
    is skipped for it.

    Noises: chunk c holds samples c·chunk, … (the last one may be shorter); its x_T is drawn, in the
    network's dtype (float64 for a parameter-free model), from a generator seeded with
    seed·1000003 + c, which then also draws a stochastic method's step noise. So sample i starts from
    the same x_T in every row, and a larger n only adds samples.

    Standard error ``fd_se``: the SD (ddof 1) of the distances of ``resamples`` bootstrap resamples
    of the n generated samples — n of their feature rows drawn with replacement, the same index sets
    (``numpy.random.default_rng(seed)``) for every row — against the fixed reference statistics
    (:meth:`FrechetReference.bootstrap`). The held-out set is not resampled: its noise is common to
    all rows, so it moves every distance together and does not enter the comparisons. The
    replicates are kept with the rows (``fd_boot``, not written) for the paired SE of differences
    in :func:`ratio_table`.

    Work is split by chunks over the processes of :mod:`odediff.shard` (e.g. under ``torchrun``);
    rank 0 gathers the samples, computes features and distances, writes
    ``nfe_vs_quality.{csv,md,png}`` to ``out_dir`` (if given) and returns the rows; other ranks
    return None. Every file is the same bit for bit however many processes ran it (with the same
    number of torch threads per process).
    """
    nfes = sorted({int(k) for k in nfes})
    if n < 2 or chunk < 1 or resamples < 2 or not nfes or nfes[0] < 1:
        raise ValueError(
            f"n, chunk, resamples, nfes: expected n ≥ 2, chunk ≥ 1, resamples ≥ 2 and positive NFE, got "
            f"{n}, {chunk}, {resamples}, {nfes}"
        )
    if ode_nfe is not None and (isinstance(ode_nfe, bool) or not isinstance(ode_nfe, int) or ode_nfe < 1):
        raise ValueError(f"ode_nfe: expected None or a positive whole number of evaluations, got {ode_nfe!r}")
    model, space, jobs = _setup(model_name, methods, ipndm, peers, nfes, ddpm, ode_nfe)

    rows = _sharded(model_name, model, space, jobs, [n], chunk, seed, resamples, progress)
    if rows is not None and out_dir is not None:
        _write(rows, out_dir, nfes, f"{model_name}: {space.description}")
    return rows


def sample_size_study(
    model_name: str,
    sizes: Iterable[int],
    *,
    nfe: int = 10,
    methods: Mapping[str, Mapping[str, Any]] | None = None,
    ipndm: Iterable[str] = IPNDM_GRIDS,
    peers: bool | Mapping[str, Peer] = True,
    resamples: int = RESAMPLES,
    chunk: int = 250,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]] | None:
    """How the distances and their SEs shrink with the number of samples, at one NFE: the rows of
    :func:`quality_study` (same methods, noises, bootstrap; no DDPM row) for each n in ``sizes``,
    from one set of max(sizes) samples per method. Sample i is the same in both, so the row for a
    size that is a multiple of ``chunk`` is the one ``quality_study(n=size, chunk=chunk)`` gives."""
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 2:
        raise ValueError(f"sizes: expected sample counts ≥ 2, got {sizes}")
    model, space, jobs = _setup(model_name, methods, ipndm, peers, [nfe], False)
    return _sharded(model_name, model, space, jobs, sizes, chunk, seed, resamples, progress)


def _sharded(*args) -> list[dict[str, Any]] | None:
    owned = not shard._active()
    shard.init()
    try:
        return _run(*args)
    finally:
        if owned:
            shard.finish()


def _run(model_name, model, space, jobs, sizes, chunk, seed, resamples, progress):
    from threadpoolctl import threadpool_limits

    shape = tuple(model.sample_shape)
    net = model.parameters_like()
    dtype = net[1] if net is not None else torch.float64
    n = sizes[-1]
    chunk = min(chunk, n)
    mine = list(shard.share(math.ceil(n / chunk)))
    main = shard.is_main()
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(max(j.targets) for j in jobs), desc=f"quality {model_name}", unit="NFE")
    ref = rows = None
    if main:
        with threadpool_limits(1):  # the same BLAS path on one process or many
            ref = FrechetReference(space.features(space.reference()))
        rows = []
    for job in jobs:
        if bar is not None:
            bar.set_postfix_str(f"{job.label}, NFE {max(job.targets)}")
        x, spent = _samples(job, mine, n, chunk, seed, shape, dtype)
        x, spent = shard.gather(x), shard.gather(spent)
        if bar is not None:
            bar.update(max(job.targets))
        if not main or (spent < 0).any():
            continue
        if not (spent == spent[0]).all():
            raise RuntimeError(f"{job.label}: chunks spent different NFE {sorted(set(spent.tolist()))}")
        with threadpool_limits(1):
            f = space.features(x.clamp(-1, 1))
            for size in sizes:
                fd, reps = ref.bootstrap(f[:size], resamples, seed)
                rows += [
                    _row(model_name, job.label, job.family, k, int(spent[0]), size, fd, reps)
                    for k in job.targets
                ]
    if bar is not None:
        bar.close()
    if not main or len(sizes) > 1:
        return rows
    train = space.train()
    m = min(n, len(train))
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:m]
    with threadpool_limits(1):
        fd, reps = ref.bootstrap(space.features(train[pick]), resamples, seed)
    rows.append(_row(model_name, FLOOR_LABEL, "data", 0, 0, m, fd, reps))
    draw = getattr(model, "sample_data", None)  # a model that samples its own distribution exactly
    if callable(draw):
        x = draw(n, torch.Generator().manual_seed(seed), dtype=torch.float32)
        with threadpool_limits(1):
            fd, reps = ref.bootstrap(space.features(x.clamp(-1, 1)), resamples, seed)
        rows.append(_row(model_name, EXACT_LABEL, "data", 0, 0, n, fd, reps))
    return rows


def _row(
    model: str, label: str, family: str, target: int, nfe: int, n: int, fd: float, reps
) -> dict[str, Any]:
    se = float(np.std(reps, ddof=1))
    return dict(
        model=model, method=label, family=family, target=target, nfe=nfe, n=n, fd=fd, fd_se=se, fd_boot=reps
    )


# --- tables and plots -----------------------------------------------------------------------


def _cell(r: Mapping[str, Any] | None, target: int | None = None) -> str:
    if r is None:
        return "–"
    spent = f" ({r['nfe']})" if target is not None and r["nfe"] != target else ""
    return f"{r['fd']:.3g} ± {r['fd_se']:.2g}{spent}"


def quality_markdown(rows: list[dict[str, Any]], nfes: Iterable[int]) -> str:
    """Rows methods, columns target NFE, cells "fd ± se" (a peer's counted NFE in parentheses where it
    differs from the target); one extra column per target outside ``nfes`` (the DDPM row); the floor
    as its own row."""
    nfes = list(nfes)
    extra = sorted({r["target"] for r in rows if r["target"] not in nfes and r["family"] != "data"})
    cols = nfes + extra
    out = ["| method | " + " | ".join(f"NFE {k}" for k in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label in dict.fromkeys(r["method"] for r in rows):
        mine = {r["target"]: r for r in rows if r["method"] == label}
        if next(iter(mine.values()))["family"] == "data":
            r = next(iter(mine.values()))
            out.append(f"| {label}, n = {r['n']} | {_cell(r)} |" + " |" * (len(cols) - 1))
            continue
        out.append(f"| {label} | " + " | ".join(_cell(mine.get(k), k) for k in cols) + " |")
    return "\n".join(out)


def _best(rows, target: int, pick) -> dict[str, Any] | None:
    cands = [r for r in rows if r["target"] == target and pick(r) and math.isfinite(r["fd"])]
    return min(cands, key=lambda r: r["fd"]) if cands else None


def ratio_table(rows: list[dict[str, Any]], nfes: Iterable[int], default: str = DEFAULT_LABEL) -> str:
    """Per target NFE: odediff's default against the best peer (smallest distance among diffusers'
    schedulers and iPNDM): their ratio, their difference ± the SE of the difference, and whether the
    difference exceeds 2 SE. The SE is the SD of the difference of the two rows' paired bootstrap
    replicates (the same resampled sample indices; the rows share their noises), which counts the
    correlation that shared noises bring. The best peer is the minimum of many: it is chosen with
    the same noise that the test measures, which favours the peer."""
    out = [
        "| NFE | odediff default | best peer | its FD | default / best peer | default − best peer | "
        "beyond 2 SE |",
        "|---" * 7 + "|",
    ]
    for k in nfes:
        ours = _best(rows, k, lambda r: r["method"] == default)
        peer = _best(rows, k, lambda r: r["family"] == "peer")
        if ours is None or peer is None:
            name = peer["method"] if peer else "–"
            out.append(f"| {k} | {_cell(ours)} | {name} | {_cell(peer)} | – | – | – |")
            continue
        diff = ours["fd"] - peer["fd"]
        se = float(np.std(ours["fd_boot"] - peer["fd_boot"], ddof=1)) if ours["n"] == peer["n"] else math.nan
        verdict = ("yes, default better" if diff < 0 else "yes, peer better") if abs(diff) > 2 * se else "no"
        name = peer["method"] + (f" ({peer['nfe']} NFE)" if peer["nfe"] != k else "")
        out.append(
            f"| {k} | {_cell(ours)} | {name} | {_cell(peer)} | {ours['fd'] / peer['fd']:.2f}× | "
            f"{diff:+.3g} ± {se:.2g} | {verdict} |"
        )
    return "\n".join(out)


def _write(rows: list[dict[str, Any]], out_dir: str, nfes: Sequence[int], title: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "fd_boot"]
    with open(os.path.join(out_dir, "nfe_vs_quality.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    gen = next(r for r in rows if r["family"] != "data")
    resamples = len(gen["fd_boot"])
    md = [
        f"### {title}",
        "",
        f"Fréchet distance ± bootstrap SE, {gen['n']} samples per entry; sample i starts from the same "
        f"x_T in every row. SE: SD over {resamples} bootstrap resamples of the generated samples (the "
        "held-out set is fixed). A peer that cannot spend the target NFE exactly is shown at the NFE "
        "it spent, in parentheses. The floor is the distance of real train data"
        + (
            "; the exact samples of the model are what an exact solve of its ODE would give (a sampler "
            "below them is further from the model, not better)."
            if any(r["method"] == EXACT_LABEL for r in rows)
            else "."
        )
        + (
            " The ODE's own samples (the default at many evaluations) stand for an exact solve: a "
            "sampler below them is off the ODE, not closer to it."
            if any(r["family"] == "ode" for r in rows)
            else ""
        ),
        "",
        quality_markdown(rows, nfes),
        "",
        "odediff's default against the best peer (diffusers' schedulers and iPNDM) at each NFE:",
        "",
        ratio_table(rows, nfes),
        "",
    ]
    with open(os.path.join(out_dir, "nfe_vs_quality.md"), "w") as f:
        f.write("\n".join(md))
    plot_quality(rows, os.path.join(out_dir, "nfe_vs_quality.png"), nfes, title.split(":")[0])


def plot_quality(rows: list[dict[str, Any]], path: str, nfes: Sequence[int], title: str = "") -> None:
    """Fréchet distance vs counted NFE (log-log) with ±1 SE error bars: odediff solid, peers dashed,
    the default bold; DDPM (all steps), the ODE's own samples and the floor as horizontal bands (± SE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    family = {r["method"]: r["family"] for r in rows}
    curves = [lab for lab, fam in family.items() if fam in ("odediff", "peer")]
    colors = plt.get_cmap("tab20").colors
    fig, ax = plt.subplots(figsize=(12, 6.5))
    for i, label in enumerate(curves):
        mine = sorted((r for r in rows if r["method"] == label), key=lambda r: r["nfe"])
        pts = list({r["nfe"]: r for r in mine}.values())
        bold = label == DEFAULT_LABEL
        odediff = mine[0]["family"] == "odediff"
        ax.errorbar(
            [r["nfe"] for r in pts], [r["fd"] for r in pts], yerr=[r["fd_se"] for r in pts],
            ls="-" if odediff else "--", marker="o" if odediff else "s", ms=4 if bold else 3,
            lw=2.6 if bold else 1.1, capsize=2, color="black" if bold else colors[i % len(colors)],
            label=label, zorder=3 if bold else 2,
        )  # fmt: skip
    for r in rows:
        band = {DDPM_LABEL: "tab:red", FLOOR_LABEL: "0.55", EXACT_LABEL: "tab:cyan"}.get(r["method"])
        band = "tab:olive" if r["family"] == "ode" else band
        if r["family"] in ("ddpm", "data", "ode") and band is not None:
            ax.axhspan(r["fd"] - r["fd_se"], r["fd"] + r["fd_se"], color=band, alpha=0.3,
                       label=f"{r['method']}: {r['fd']:.3g} ± {r['fd_se']:.2g}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(list(nfes), [str(k) for k in nfes])
    ax.minorticks_off()
    ax.set_xlabel("network evaluations (counted)")
    ax.set_ylabel("Fréchet distance to held-out data (± bootstrap SE)")
    n = next(r["n"] for r in rows if r["family"] != "data")
    ax.set_title(f"{title}: sample quality vs NFE, {n} samples per point")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
