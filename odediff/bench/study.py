"""NFE-vs-error studies against a high-accuracy float64 reference (:mod:`odediff.reference`).

:func:`nfe_error_study` runs odediff's solvers and diffusers' schedulers (:data:`PEERS`, driven
by their own loops in :func:`run_peer`) on the same noises, every evaluation counted by
:class:`~odediff.integrate.CountedField`, and writes CSV, markdown and a log-log PNG. It
shards noises over the processes of :mod:`odediff.shard` (``torchrun``) in fixed chunks, so
that every number it writes is the same bit for bit however many processes ran it.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import shard
from ..api import sample
from ..grids import DEFAULT_GRID
from ..integrate import CountedField
from ..models import EpsModel, Model
from ..reference import Reference, default_reference
from ..schedules import DiscreteSchedule
from ..solvers import get_solver

__all__ = [
    "DEFAULT_LABEL",
    "NFES",
    "ODEDIFF_METHODS",
    "PEERS",
    "Peer",
    "best_at",
    "load_problem",
    "markdown_table",
    "nfe_error_rows",
    "nfe_error_study",
    "peer_steps",
    "plot_nfe_error",
    "ratio_table",
    "run_peer",
    "study_markdown",
]

NFES = (5, 6, 8, 10, 12, 15, 20, 30, 50, 100)
DEFAULT_LABEL = "odediff adams (default)"

# label -> keyword arguments of odediff.sample
ODEDIFF_METHODS: dict[str, dict[str, Any]] = {
    DEFAULT_LABEL: dict(solver="adams"),
    **{
        f"odediff adams {k} fixed, {g}": dict(
            solver="adams", order=k, weights="fixed", grid=g, variable="sigma", predict="eps", corrector=False
        )
        for g in ("quadratic_t", "karras", "log_snr", "uniform_t")
        for k in (2, 3, 4)
    },
    **{
        f"odediff adams {k} exact log σ": dict(
            solver="adams", order=k, variable="log_sigma", weights="exact", predict="eps", corrector=False
        )
        for k in (2, 3)
    },
    "odediff euler": dict(solver="euler"),
    "odediff heun": dict(solver="heun"),
}

Method = Mapping[str, Any] | Callable[[Model, Tensor, int], tuple[Tensor, int]]


def load_problem(model_name: str) -> tuple[Model, str]:
    """A built-in model in float64 (a network is converted with ``.double()``) and its title."""
    from ..zoo import load

    model = load(model_name)
    net = getattr(model, "net", None)
    if isinstance(net, torch.nn.Module):
        net.double()  # load() builds a fresh network each call, so this changes no one else's
    titles = {"gmm-digits": "Gaussian-mixture digits (exact ε)", "digits": "digits UNet (float64)"}
    return model, titles.get(model_name, model_name)


# --- diffusers peers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A diffusers scheduler and its configuration.

    ``evals`` is 1 for one network call per step or 2 for Heun's pattern (2·steps − 1 calls);
    ``extra`` is the calls beyond that (PNDM's start, or the shared final step to σ = 0 for a
    scheduler that stops at σ_min). Both only guess num_inference_steps for a target NFE;
    :func:`peer_steps` checks the guess by counting.
    """

    scheduler: str
    config: Mapping[str, Any] = field(default_factory=dict)
    evals: int = 1
    extra: int = 0
    seeded: bool = False  # step() takes a generator (SA-Solver; τ = 0 makes it irrelevant)

    def make(self, schedule: DiscreteSchedule, steps: int):
        import diffusers

        ac = schedule.alphas_cumprod
        betas = (1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])).tolist()
        cfg = dict(num_train_timesteps=schedule.T, trained_betas=betas, **self.config)
        sched = getattr(diffusers, self.scheduler)(**cfg)
        sched.set_timesteps(steps)
        return sched

    def guess(self, nfe: int) -> int:
        return (nfe - self.extra + 1) // 2 if self.evals == 2 else nfe - self.extra


def _no_noise(t) -> float:
    return 0.0


def _peers() -> dict[str, Peer]:
    tr = dict(timestep_spacing="trailing")
    dpm = dict(tr, algorithm_type="dpmsolver++", final_sigmas_type="zero", lower_order_final=True)
    unipc = dict(tr, solver_order=3, final_sigmas_type="zero", lower_order_final=True)
    deis = dict(tr, solver_order=3, algorithm_type="deis", lower_order_final=True)
    return {
        "diffusers DDIM": Peer("DDIMScheduler", dict(tr, set_alpha_to_one=True, clip_sample=False)),
        "diffusers PNDM": Peer("PNDMScheduler", dict(tr, skip_prk_steps=True, set_alpha_to_one=True),
                               extra=1),
        "diffusers LMS": Peer("LMSDiscreteScheduler", tr),
        "diffusers Heun": Peer("HeunDiscreteScheduler", tr, evals=2),
        "diffusers DPM++2M": Peer("DPMSolverMultistepScheduler", dict(dpm, solver_order=2)),
        "diffusers DPM++3M": Peer("DPMSolverMultistepScheduler", dict(dpm, solver_order=3)),
        "diffusers DPM++3M Karras": Peer("DPMSolverMultistepScheduler",
                                         dict(dpm, solver_order=3, use_karras_sigmas=True)),
        "diffusers DPM++3M λ-uniform": Peer("DPMSolverMultistepScheduler",
                                            dict(dpm, solver_order=3, use_lu_lambdas=True)),
        "diffusers DPM++3M exponential": Peer("DPMSolverMultistepScheduler",
                                              dict(dpm, solver_order=3, use_exponential_sigmas=True)),
        "diffusers UniPC-3": Peer("UniPCMultistepScheduler", unipc),
        "diffusers UniPC-3 Karras": Peer("UniPCMultistepScheduler", dict(unipc, use_karras_sigmas=True)),
        "diffusers DEIS-3": Peer("DEISMultistepScheduler", deis, extra=1),
        "diffusers DEIS-3 Karras": Peer("DEISMultistepScheduler", dict(deis, use_karras_sigmas=True),
                                        extra=1),
        "diffusers SA-Solver τ=0": Peer("SASolverScheduler",
                                        dict(tr, predictor_order=3, corrector_order=3, tau_func=_no_noise),
                                        extra=1, seeded=True),
    }  # fmt: skip


PEERS: dict[str, Peer] = _peers()


def _final_sigma(sched) -> float:
    """Where the scheduler's last step lands (0, or σ_min for DEIS and SA-Solver, …)."""
    table = getattr(sched, "sigmas", None)
    if table is not None:
        return float(table[-1])
    # DDIM and PNDM step from t to t − T//n; a negative t stands for ᾱ = final_alpha_cumprod
    prev = int(sched.timesteps[-1]) - sched.config.num_train_timesteps // sched.num_inference_steps
    ac = float(sched.final_alpha_cumprod if prev < 0 else sched.alphas_cumprod[prev])
    return math.sqrt((1 - ac) / ac)


def run_peer(model: Model, peer: Peer, noise: Tensor, steps: int) -> tuple[Tensor, int]:
    """Drive a diffusers scheduler by its own loop (set_timesteps, scale_model_input, step) on
    the model from x_T = ``noise``; returns (x_0 in float64, counted NFE).

    A network on a discrete schedule (an :class:`~odediff.EpsModel`) sees what it sees in a
    pipeline: the sample the scheduler scales with its own σ, at the scheduler's own timestep
    t (for Karras or exponential σ's, diffusers' interpolated t, not t(σ)). A model without
    timesteps (the mixture) is asked at the σ the scheduler steps with. A scheduler that stops
    above σ = 0 is finished by
    the shared step x̂_0 = x̄ − σ·ε (reusing the last ε if its final step was a no-op at σ_min,
    as DEIS and SA-Solver take with Karras σ's)."""
    sched = peer.make(model.schedule, steps)
    fld = CountedField(model, torch.float64)
    table = getattr(sched, "sigmas", None)
    vp = float(sched.init_noise_sigma) == 1.0  # otherwise the state is x̄ (k-diffusion style)
    gen = {"generator": torch.Generator().manual_seed(0)} if peer.seeded else {}
    x = noise.to(torch.float64) * float(sched.init_noise_sigma)
    timed = isinstance(model, EpsModel)
    sigma = eps = before = None
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            x_t = sched.scale_model_input(x, t)
            sigma = float(table[i]) if table is not None else float(model.schedule.sigma_of_t(float(t)))
            # x̄ at σ(t) makes EpsModel hand its network exactly (x_t, t)
            s_net = float(model.schedule.sigma_of_t(float(t))) if timed else sigma
            eps = fld(x_t * math.sqrt(1 + s_net * s_net), s_net)
            before, x = x, sched.step(eps, t, x, **gen).prev_sample
        end = _final_sigma(sched)
        if end > 0:
            xbar = x * math.sqrt(1 + end * end) if vp else x
            if not (sigma == end and torch.equal(x, before)):
                eps = fld(xbar, end)
            x = xbar - end * eps
    return x.to(torch.float64), fld.nfe


class _Free:
    """ε ≡ 0 on a schedule: a free stand-in model for counting a scheduler's evaluations."""

    def __init__(self, schedule: DiscreteSchedule):
        self.schedule = schedule

    def eps(self, xbar: Tensor, sigma: float) -> Tensor:
        return torch.zeros_like(xbar)

    def parameters_like(self) -> None:
        return None


def peer_steps(schedule: DiscreteSchedule, peer: Peer, nfe: int) -> tuple[int, int] | None:
    """(num_inference_steps, counted NFE) with the largest counted NFE ≤ ``nfe`` (exact if
    possible), found from the family's guess by counting runs on a free model; None if even
    one step costs more."""
    free = _Free(schedule)
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    memo: dict[int, int | None] = {}

    def count(steps: int) -> int | None:
        if steps not in memo:
            try:
                memo[steps] = run_peer(free, peer, x, steps)[1] if steps >= 1 else None
            except Exception:  # some schedulers reject too few steps for their order
                memo[steps] = None
        return memo[steps]

    s = max(1, peer.guess(nfe))
    while s > 1 and (count(s) is None or count(s) > nfe):
        s -= 1
    if count(s) is None or count(s) > nfe:
        return None
    while count(s + 1) is not None and count(s + 1) <= nfe:
        s += 1
    return s, count(s)


# --- the study -----------------------------------------------------------------------------


@dataclass
class _Job:
    labels: list[tuple[str, int]]  # (method label, target NFE) rows this run stands for
    family: str  # "odediff" or "peer"
    target: int
    run: Callable[[Tensor], tuple[Tensor, int]]


def _odediff_key(kwargs: Mapping[str, Any]):
    kw = dict(kwargs)
    solver, grid = kw.pop("solver", "adams"), kw.pop("grid", None) or DEFAULT_GRID
    key = (get_solver(solver, **kw) if isinstance(solver, str) else solver, grid)
    try:
        hash(key)
    except TypeError:
        key = repr(key)
    return key


def _jobs(
    model: Model, methods: Mapping[str, Method], peers: Mapping[str, Peer], nfes: list[int]
) -> list[_Job]:
    jobs: list[_Job] = []
    seen: dict[Any, _Job] = {}
    for label, m in methods.items():
        for n in nfes:
            if callable(m):
                jobs.append(_Job([(label, n)], "peer", n, lambda x, m=m, n=n: m(model, x, n)))
                continue
            key = (_odediff_key(m), n)
            if key in seen:  # e.g. the default is one of the listed configurations
                seen[key].labels.append((label, n))
                continue

            def run(x: Tensor, m=m, n=n) -> tuple[Tensor, int]:
                x0, info = sample(model, x, nfe=n, return_info=True, **m)
                return x0, info.nfe

            seen[key] = _Job([(label, n)], "odediff", n, run)
            jobs.append(seen[key])
    for label, peer in peers.items():
        runs: dict[int, _Job] = {}
        for n in nfes:
            found = peer_steps(model.schedule, peer, n)
            if found is None:
                continue
            steps = found[0]
            if steps not in runs:

                def run(x: Tensor, p=peer, s=steps, expect=found[1]) -> tuple[Tensor, int]:
                    x0, spent = run_peer(model, p, x, s)
                    if spent != expect:  # the free probe and the model must take the same path
                        raise RuntimeError(f"{p.scheduler}: {s} steps cost {spent} NFE, probed {expect}")
                    return x0, spent

                runs[steps] = _Job([], "peer", n, run)
                jobs.append(runs[steps])
            runs[steps].labels.append((label, n))  # one row per target; targets may share a run
    return jobs


def _out_paths(out: str) -> dict[str, str]:
    """``out`` is a folder (files nfe_vs_error.*) or a path ending in .png (files named after it)."""
    if out.lower().endswith(".png"):
        folder, stem = os.path.dirname(out) or ".", os.path.basename(out)[:-4]
    else:
        folder, stem = out, "nfe_vs_error"
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, stem)
    suffixes = {"csv": ".csv", "noise_csv": "_per_noise.csv", "md": ".md", "png": ".png"}
    return {k: base + v for k, v in suffixes.items()}


def nfe_error_study(
    model_name: str,
    out_dir: str | None,
    *,
    noises: int,
    nfes: Iterable[int] = NFES,
    methods: Mapping[str, Method] | None = None,
    peers: bool | Mapping[str, Peer] = True,
    progress: bool = True,
    reference: Reference | None = None,
    check: int = 2,
    chunk: int = 8,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """RMSE (and PSNR) of x_0 against a float64 reference, per method and NFE, on a built-in model.

    ``methods`` maps labels to keyword arguments of :func:`odediff.sample` (default
    :data:`ODEDIFF_METHODS`) or to callables ``(model, noise, nfe) -> (x_0, counted NFE)``
    (independent reference implementations; counted among the peers). ``peers``: True for
    :data:`PEERS` (needs diffusers), False for none, or a mapping. A peer's target NFE is met
    exactly when its scheduler allows, else by the largest count below (the ``nfe`` column).

    Noise i is row i of ``torch.randn(noises, …, generator=seed)``. Noises are processed in
    fixed chunks of ``chunk``, shared over the processes of :mod:`odediff.shard`; the reference
    for the first ``check`` noises is also solved by :meth:`Reference.refined` to estimate its
    error. Rank 0 writes CSV (+ a per-noise CSV), markdown and PNG to ``out_dir`` (a folder, or
    a .png path naming the files) and returns the rows (the reference's own row has family
    "reference": its NFE per noise and its estimated RMSE); other ranks return [].
    """
    nfes = sorted(set(int(n) for n in nfes))
    if noises < 1 or chunk < 1 or not nfes or nfes[0] < 1:
        raise ValueError(f"noises, chunk, nfes: expected positive values, got {noises}, {chunk}, {nfes}")
    owned = not shard._active()
    shard.init()
    try:
        return _study(
            model_name, out_dir, noises, nfes, methods, peers, progress, reference, check, chunk, seed
        )  # fmt: skip
    finally:
        if owned:
            shard.finish()


def _study(model_name, out_dir, noises, nfes, methods, peers, progress, reference, check, chunk, seed):
    model, title = load_problem(model_name)
    ref = reference or default_reference(model)
    if peers is True:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            raise ImportError("peers: diffusers is not installed; pass peers=False") from None
        peers = PEERS
    peers = peers or {}
    main = shard.is_main()
    t0 = time.perf_counter()
    jobs = _jobs(model, ODEDIFF_METHODS if methods is None else methods, peers, nfes)

    shape = tuple(model.sample_shape)
    dim = math.prod(shape)
    noise = torch.randn((noises, *shape), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    starts = list(range(0, noises, chunk))
    mine = [starts[c] for c in shard.share(len(starts))]
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine) * (len(jobs) + 1), desc=f"nfe study {model_name}", unit="run")
    ncol = 2 + 2 * len(jobs)
    local = []
    for a in mine:
        x = noise[a : a + chunk]
        cols = torch.full((len(x), ncol), math.nan, dtype=torch.float64)
        truth, cols[:, 0] = ref.solve(model, x)
        if a < check:  # the first chunk(s) hold the noises whose reference is checked
            k = min(len(x), check - a)
            better, _ = ref.refined().solve(model, x[:k])
            cols[:k, 1] = (better - truth[:k]).square().flatten(1).sum(1)
        if bar is not None:
            bar.update(1)
        for j, job in enumerate(jobs):
            try:
                with torch.no_grad():
                    x0, n = job.run(x)
            except ValueError:  # a budget this solver cannot spend: no row
                x0 = None
            if x0 is not None:
                cols[:, 2 + 2 * j] = (x0.to(torch.float64) - truth).square().flatten(1).sum(1)
                cols[:, 3 + 2 * j] = float(n)
            if bar is not None:
                bar.update(1)
        local.append(cols)
    if bar is not None:
        bar.close()
    res = shard.gather(torch.cat(local) if local else torch.empty(0, ncol, dtype=torch.float64))
    if not main:
        return []
    order = list(ODEDIFF_METHODS if methods is None else methods) + list(peers)
    rows, per_noise = _rows(res, jobs, model_name, ref, dim, order)
    if out_dir is not None:
        paths = _out_paths(out_dir)
        _write_csv(paths["csv"], rows)
        _write_csv(paths["noise_csv"], per_noise)
        md = study_markdown(rows, nfes, title)
        with open(paths["md"], "w") as f:
            f.write(md + "\n")
        plot_nfe_error(rows, paths["png"], f"{title}: RMSE of x₀ vs NFE, {noises} noises", nfes)
    if progress:
        print(study_markdown(rows, nfes, title))
        print(f"{time.perf_counter() - t0:.0f} s" + (f" -> {paths['csv']}, .md, .png" if out_dir else ""))
    return rows


def _rows(res: Tensor, jobs: list[_Job], problem: str, ref: Reference, dim: int, order: list[str]):
    n_noise = res.shape[0]
    checked = res[:, 1][~res[:, 1].isnan()]
    est = math.sqrt(float(checked.sum()) / (len(checked) * dim)) if len(checked) else math.nan
    rows: list[dict[str, Any]] = [{
        "problem": problem, "method": f"reference: {ref.describe()}", "family": "reference", "target": 0,
        "nfe": float(res[:, 0].mean()), "rmse": est, "psnr": _psnr(est), "noises": n_noise,
        "checked": len(checked),
    }]  # fmt: skip
    per_noise: list[dict[str, Any]] = []
    for j, job in enumerate(jobs):
        sse, counted = res[:, 2 + 2 * j], res[:, 3 + 2 * j]
        if sse.isnan().any():
            continue
        if not (counted == counted[0]).all():
            raise RuntimeError(f"{job.labels}: chunks spent different NFE {sorted(set(counted.tolist()))}")
        nfe = int(counted[0])
        rmse = math.sqrt(float(sse.sum()) / (n_noise * dim))
        for label, target in job.labels:
            rows.append({
                "problem": problem, "method": label, "family": job.family, "target": target,
                "nfe": nfe, "rmse": rmse, "psnr": _psnr(rmse), "noises": n_noise, "checked": 0,
            })  # fmt: skip
            per_noise += [
                {"noise": i, "method": label, "target": target, "nfe": nfe, "rmse": math.sqrt(float(e) / dim)}
                for i, e in enumerate(sse.tolist())
            ]
    rank = {label: i for i, label in enumerate(order)}

    def key(r: dict[str, Any]) -> tuple:
        return rank.get(r["method"], -1), r["target"]

    return sorted(rows, key=key), sorted(per_noise, key=lambda r: (*key(r), r["noise"]))


def _psnr(rmse: float, data_range: float = 2.0) -> float:
    if not rmse > 0:
        return math.inf if rmse == 0 else math.nan
    return 20 * math.log10(data_range / rmse)


def _write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["method"])
        w.writeheader()
        w.writerows(rows)


# --- rows, tables, plots -------------------------------------------------------------------


def nfe_error_rows(
    model: Model,
    noise: Tensor,
    truth: Tensor,
    methods: Mapping[str, Mapping[str, Any]],
    nfes: Iterable[int],
    data_range: float = 2.0,
) -> list[dict[str, Any]]:
    """One row per (method, NFE): counted NFE, RMSE of x_0 against ``truth`` and PSNR.

    ``methods`` maps a label to keyword arguments of :func:`odediff.sample` (solver, grid, …)."""
    rows = []
    with torch.no_grad():
        for label, kwargs in methods.items():
            for n in nfes:
                x0, info = sample(model, noise, nfe=n, return_info=True, **kwargs)
                rmse = (x0.double() - truth.double()).square().mean().sqrt().item()
                rows.append({"method": label, "nfe": info.nfe, "rmse": rmse, "psnr": _psnr(rmse, data_range)})
    return rows


def _family(row: Mapping[str, Any], labels: list[str]) -> str:
    if "family" in row:
        return row["family"]
    odediff = any(lab.startswith("odediff") for lab in labels)
    return "odediff" if row["method"].startswith("odediff") or not odediff else "peer"


def plot_nfe_error(
    rows: list[dict[str, Any]], path: str, title: str = "", ticks: Iterable[int] | None = None
) -> None:
    """Log-log error vs counted NFE, one line per method: odediff solid, peers dashed; the
    reference's own row is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("family") != "reference" and math.isfinite(r["rmse"])]
    labels = list(dict.fromkeys(r["method"] for r in rows))
    colors = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20").colors
    markers = "osD^v<>ph*"
    wide = len(labels) > 12
    fig, ax = plt.subplots(figsize=(12 if wide else 8, 6.5 if wide else 5.5))
    for i, label in enumerate(labels):
        mine = [r for r in rows if r["method"] == label]
        pts = sorted({r["nfe"]: r["rmse"] for r in mine}.items())
        style = "-" if _family(mine[0], labels) == "odediff" else "--"
        bold = label == DEFAULT_LABEL
        ax.loglog(*zip(*pts), style, marker=markers[(i // len(colors)) % len(markers)], ms=4 if bold else 3,
                  lw=2.6 if bold else 1.2, color="black" if bold else colors[i % len(colors)], label=label,
                  zorder=3 if bold else 2)  # fmt: skip
    ticks = sorted(set(ticks) if ticks is not None else {r["nfe"] for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("network evaluations (counted)")
    ax.set_ylabel("RMSE of x₀ vs float64 reference")
    if max(r["rmse"] for r in rows) > 1:  # a diverging solve would flatten everything else
        ax.set_ylim(top=1)
        ax.text(0.01, 0.99, "(errors above 1 off the chart)", transform=ax.transAxes, va="top", fontsize=7)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if wide:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(rows: list[dict[str, Any]], nfes: Iterable[int], key: str = "rmse") -> str:
    """Methods as rows, NFE as columns. A peer that cannot spend a target exactly shows its
    value at the largest count below, with that count in parentheses."""
    nfes = list(nfes)
    rows = [r for r in rows if r.get("family") != "reference"]
    out = ["| method | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
    for label in dict.fromkeys(r["method"] for r in rows):
        vals = {r.get("target", r["nfe"]): r for r in rows if r["method"] == label}

        def cell(n: int, vals=vals) -> str:
            r = vals.get(n)
            if r is None:
                return "–"
            return f"{r[key]:.3g}" + (f" ({r['nfe']})" if r["nfe"] != n else "")

        out.append(f"| {label} | " + " | ".join(cell(n) for n in nfes) + " |")
    return "\n".join(out)


def best_at(
    rows: list[dict[str, Any]], n: int, pick: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    """The row with the smallest RMSE among ``pick``-ed rows for target NFE n."""
    cands = [r for r in rows if r.get("target", r["nfe"]) == n and pick(r) and math.isfinite(r["rmse"])]
    return min(cands, key=lambda r: r["rmse"]) if cands else None


def ratio_table(rows: list[dict[str, Any]], nfes: Iterable[int], default: str = DEFAULT_LABEL) -> str:
    """Per NFE: the best peer (any non-odediff method), the best diffusers scheduler, odediff's
    default and best configuration, and their error ratios to the best peer."""
    out = [
        "| NFE | best peer | its RMSE | odediff default | default / best peer | best diffusers | "
        "default / best diffusers | best odediff | its RMSE | best odediff / best peer |",
        "|---" * 10 + "|",
    ]
    for n in nfes:
        peer = best_at(rows, n, lambda r: r.get("family") == "peer")
        diff = best_at(rows, n, lambda r: r["method"].startswith("diffusers"))
        ours = best_at(rows, n, lambda r: r["method"] == default)
        best = best_at(rows, n, lambda r: r.get("family") == "odediff")

        def ratio(a, b) -> str:
            return f"{a['rmse'] / b['rmse']:.2f}×" if a and b else "–"

        def name(r, n=n) -> str:
            return r["method"] + (f" ({r['nfe']})" if r["nfe"] != n else "") if r else "–"

        def val(r) -> str:
            return f"{r['rmse']:.3g}" if r else "–"

        out.append(
            f"| {n} | {name(peer)} | {val(peer)} | {val(ours)} | {ratio(ours, peer)} | {name(diff)} | "
            f"{ratio(ours, diff)} | {name(best)} | {val(best)} | {ratio(best, peer)} |"
        )
    return "\n".join(out)


def study_markdown(rows: list[dict[str, Any]], nfes: Iterable[int], title: str) -> str:
    """The study's markdown: what was measured, the RMSE table and the ratio table."""
    nfes = list(nfes)
    ref = next((r for r in rows if r.get("family") == "reference"), None)
    head = [f"### {title}: RMSE of x₀ against the reference", ""]
    if ref is not None:
        head += [
            f"{ref['noises']} noises. Reference: {ref['method'].removeprefix('reference: ')}; "
            f"{ref['nfe']:.0f} evaluations per noise; its estimated RMSE {ref['rmse']:.2g} (against the "
            f"refined solve, {ref['checked']} noises).",
            "",
        ]
    return "\n".join([*head, markdown_table(rows, nfes), "", ratio_table(rows, nfes)])
