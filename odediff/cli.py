"""The ``odediff`` command (also ``python -m odediff``): demo, sample, encode, decode, likelihood, bench.

``encode`` reads image files and writes a latent file (a dict: the latent, model, solver, NFE,
grid, tolerances); ``decode`` turns one back into an image with the same settings unless told
otherwise.

Every argument is checked before any work starts, and every failure is one line
``odediff COMMAND: error: ...`` with exit status 2 (an unexpected exception, i.e. a bug, is one
line ``... internal error: ...`` with status 1; ``ODEDIFF_TRACEBACK=1`` shows its traceback).
This module imports neither torch nor the rest of odediff until a command needs them, so that
parsing, ``--help`` and the checks that need no model are quick: the solver, grid and model names
below are copies of the registries (tests/test_cli.py checks that they agree).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import torch

# copies of odediff.SOLVERS (names, .adaptive, .reversible), sorted(odediff.GRIDS),
# odediff.grids.DEFAULT_GRID and sorted(odediff.zoo.MODELS), kept in sync by tests/test_cli.py
SOLVER_NAMES = ("adams", "bdia", "belm", "ddim", "euler", "heun", "rk45")
ADAPTIVE = ("rk45",)  # and every "torchdiffeq:METHOD" but the fixed-step ones
TORCHDIFFEQ_FIXED = ("euler", "heun3", "midpoint", "rk4")  # one step per interval, planned from --nfe
REVERSIBLE = ("bdia", "belm")
GRID_NAMES = ("auto", "budget_t", "karras", "log_snr", "power_t", "quadratic_t", "uniform_t")
DEFAULT_GRID = "auto"
MODEL_NAMES = ("digits", "digits-dit", "digits-seed1", "gmm-digits", "photos")

SAMPLE_NFE = 10  # the default budgets of fixed-step solvers
LIKELIHOOD_NFE = 20  # odediff.grids.DEFAULT_NFE, the likelihood's fixed-step default (tolerance 1e-5)
DIGITS_DATA = ("digits", "digits-dit", "digits-seed1", "gmm-digits")  # models of the built-in digits data
DIVERGENCES = ("auto", "exact", "hutchinson")  # copies of odediff.likelihood's, kept in sync by the tests
PROBES = ("rademacher", "gaussian")
ENCODE_NFE = 50
MAX_NFE = 1_000_000  # ~3 h of the digits UNet on a CPU; larger is a typo, not a budget

# image formats the writer handles (matplotlib for the vector ones, Pillow for the rest)
VECTOR_FORMATS = ("pdf", "svg", "eps", "ps")
RASTER_FORMATS = ("png", "jpeg", "tiff", "bmp", "gif", "webp")

DEMO_METHODS = {
    "euler (= DDIM)": dict(solver="euler"),
    "heun": dict(solver="heun"),
    "adams (default)": dict(solver="adams"),
    "adams on ε in σ, fixed weights": dict(
        solver="adams", variable="sigma", predict="eps", corrector=False, weights="fixed"
    ),
}
DEMO_SAMPLES = 64  # digits sampled from the network
DEMO_NOISES = 32  # noises of the Gaussian-mixture NFE sweep
DEMO_CHUNK = 8  # noises per reference solve (one step of its progress bar)
DEMO_NFES = (5, 8, 10, 15, 20, 30, 50)
LATENT_FORMAT = "odediff-latent"
LATENT_VERSION = 1


class CommandError(Exception):
    """A user-facing failure while running a command: printed as one line, exit status 2."""


class UsageError(CommandError):
    """A bad argument found after parsing: printed like argparse's errors, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with a pointer to --help), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# --- argument types (parse time: no torch) ---------------------------------------------------


def _whole(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < minimum or (maximum is not None and v > maximum):
            span = f"≥ {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"expected a whole number {span}, got {text!r}")
        return v

    return parse


def _tolerance(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number such as 1e-4, got {text!r}")
    return v


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if not 0 <= v < 2**64:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 2**64 - 1, got {text!r}")
    return v


def _solver_name(text: str) -> str:
    if text in SOLVER_NAMES or (text.startswith("torchdiffeq:") and len(text) > len("torchdiffeq:")):
        return text  # a torchdiffeq method is checked against torchdiffeq's list before the work
    raise argparse.ArgumentTypeError(
        f"unknown solver {text!r}; expected one of {', '.join(SOLVER_NAMES)} or torchdiffeq:METHOD "
        "(e.g. torchdiffeq:dopri5)"
    )


def _int_list(text: str) -> list[int]:
    parse = _whole(1, MAX_NFE)
    try:
        values = [parse(v.strip()) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers from 1 to {MAX_NFE}, got {text!r}"
        )
    return sorted(set(values))


# --- checks before the work ------------------------------------------------------------------


def _is_adaptive(solver: str) -> bool:
    method = solver.partition("torchdiffeq:")[2]
    return solver in ADAPTIVE or (bool(method) and method not in TORCHDIFFEQ_FIXED)


def _solve_settings(
    solver: str,
    nfe: int | None,
    grid: str | None,
    tol: dict[str, Any],
    default_nfe: int | None = None,
    default_grid: str | None = None,
    default_tol: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of odediff.sample/encode/decode from the flags given (``nfe``,
    ``grid``, ``tol``: None when not given) and the defaults for what was not given."""
    if _is_adaptive(solver):
        if nfe is not None:
            raise UsageError(
                f"argument --nfe: {solver} is adaptive (it chooses its own steps); drop --nfe "
                "and set --rtol/--atol/--max-nfe, or pick a fixed-step solver"
            )
        if grid is not None:
            raise UsageError(f"argument --grid: {solver} is adaptive (it makes its own grid); drop --grid")
        given = {k: v for k, v in tol.items() if v is not None}
        return {"solver": solver, **(default_tol or {}), **given}
    for key, value in tol.items():
        if value is not None:
            raise UsageError(
                f"argument --{key.replace('_', '-')}: only for adaptive solvers "
                f"({', '.join(ADAPTIVE)}, torchdiffeq:METHOD); {solver} takes --nfe"
            )
    return {
        "solver": solver,
        "nfe": default_nfe if nfe is None else nfe,
        "grid": default_grid if grid is None else grid,
    }


def _flag_message(e: Exception, flag: str) -> str:
    """A library message ``"nfe: heun needs ..."`` as ``"argument --nfe: heun needs ..."``."""
    msg = " ".join(str(e).split())
    head, sep, rest = msg.partition(": ")
    if sep and head.replace("_", "").replace(", ", "").isalnum():
        msg = rest
    return f"argument {flag}: {msg}"


def _check_solver(kw: dict[str, Any]) -> None:
    """What needs the solver itself: a torchdiffeq method's name, a fixed-step solver's minimum
    budget (e.g. bdia's 2)."""
    from odediff.solvers import get_solver

    options = {k: v for k, v in kw.items() if k in ("rtol", "atol", "max_nfe")}
    try:
        s = get_solver(kw["solver"], **options)
    except (ValueError, TypeError) as e:
        raise UsageError(_flag_message(e, "--solver")) from None
    if not s.adaptive:
        try:
            s.intervals(kw["nfe"])
        except ValueError as e:
            raise UsageError(_flag_message(e, "--nfe")) from None


def _image_format(path: str, flag: str = "--out") -> str:
    """The format matplotlib's imsave is to write ``path`` in, from its extension."""
    import PIL.Image

    PIL.Image.init()
    ext = os.path.splitext(path)[1].lower()
    known = {e: f.lower() for e, f in PIL.Image.registered_extensions().items()}
    known.update({"." + f: f for f in VECTOR_FORMATS})
    fmt = known.get(ext)
    ok = fmt in VECTOR_FORMATS or (fmt in RASTER_FORMATS and fmt.upper() in PIL.Image.SAVE)
    if not ok:
        fmts = [f for f in RASTER_FORMATS if f.upper() in PIL.Image.SAVE] + list(VECTOR_FORMATS)
        usable = [{"jpeg": ".jpg", "tiff": ".tif"}.get(f, "." + f) for f in fmts]
        what = f"extension {ext}" if ext else "no extension"
        raise UsageError(
            f"argument {flag}: cannot write an image to {path!r} ({what}); "
            f"end it in one of {', '.join(usable)}"
        )
    return fmt


def _unwritable(folder: str) -> str | None:
    """Why no file can be made in ``folder`` (by making and removing one), or None."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def _check_file_out(path: str, flag: str = "--out", example: str = "out.png") -> None:
    if not path:
        raise UsageError(f"argument {flag}: expected a file name, got ''")
    if os.path.isdir(path):
        raise UsageError(
            f"argument {flag}: {path} is a folder; give a file name such as {os.path.join(path, example)}"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"argument {flag}: {path}: folder {folder} does not exist")
    why = _unwritable(folder)
    if why is None and os.path.exists(path) and not os.access(path, os.W_OK):
        why = "permission denied"
    if why is not None:
        raise UsageError(f"argument {flag}: cannot write {path} ({why})")


def _check_image_out(path: str, flag: str = "--out") -> str:
    _check_file_out(path, flag, "out.png")
    return _image_format(path, flag)


def _check_folder_out(path: str, flag: str = "--out") -> None:
    """``path`` is a folder, or can be made one (the commands that write several files)."""
    if not path:
        raise UsageError(f"argument {flag}: expected a folder name, got ''")
    p = os.path.abspath(path)
    if os.path.exists(p) and not os.path.isdir(p):
        raise UsageError(f"argument {flag}: {path} is a file, not a folder")
    q = p
    while not os.path.exists(q):
        q = os.path.dirname(q)
    if not os.path.isdir(q):
        raise UsageError(f"argument {flag}: cannot make folder {path}: {q} is a file")
    why = _unwritable(q)
    if why is not None:
        raise UsageError(f"argument {flag}: cannot make folder {path} in {q} ({why})")


def _check_file_in(path: str, what: str) -> None:
    if os.path.isdir(path):
        raise CommandError(f"{path}: is a folder, not {what}")
    if not os.path.isfile(path):
        raise CommandError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise CommandError(f"{path}: not readable (permission denied)")


def _image_size(n: int, shape: tuple[int, ...], scale: int) -> tuple[int, int]:
    """(height, width) in pixels of what write_image writes for n images of ``shape``."""
    _, h, w = shape
    if n == 1:
        return h * scale, w * scale
    nrow = math.ceil(math.sqrt(n))  # odediff.viz.image_grid's layout, 1-pixel borders
    ncol = math.ceil(n / nrow)
    return (ncol * (h + 1) + 1) * scale, (nrow * (w + 1) + 1) * scale


def _check_image_size(n: int, shape: tuple[int, ...], scale: int, flag: str) -> None:
    """At most the pixels Pillow reads back without calling it a decompression bomb."""
    import PIL.Image

    limit = PIL.Image.MAX_IMAGE_PIXELS
    h, w = _image_size(n, shape, scale)
    if limit is not None and h * w > limit:
        what = f"{_plural(n, 'image')} at scale {scale}" if flag == "--scale" else f"a grid of {n} samples"
        raise UsageError(
            f"argument {flag}: {what} would be {h}×{w} pixels, more than the {limit} Pillow "
            f"reads back; use a smaller {flag}"
        )


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# --- images ----------------------------------------------------------------------------------


def read_image(path: str, shape: tuple[int, ...], invert: bool = False) -> torch.Tensor:
    """An image file as a (C, H, W) tensor in [−1, 1] matching ``shape``.

    Colour → grey by luminance Y = 0.2125 R + 0.7154 G + 0.0721 B when C = 1 (grey → colour by
    repetition when C = 3); alpha is dropped; resized by area averaging (exact block means for an
    integer factor, e.g. a PNG written by ``decode --scale``); v ∈ [0, 1] → 2v − 1, or 1 − 2v with
    ``invert`` (dark ink on light paper, as opposed to the digits' light-on-dark)."""
    import matplotlib.image
    import numpy as np
    import torch
    import torch.nn.functional as F

    _check_file_in(path, "an image")
    try:
        a = np.asarray(matplotlib.image.imread(path))
    except Exception as e:  # Pillow/matplotlib raise many types for a non-image
        msg = " ".join(str(e).split())
        raise CommandError(f"{path}: not a readable image ({type(e).__name__}: {msg})") from None
    if a.ndim not in (2, 3) or a.size == 0:
        raise CommandError(f"{path}: not a readable image (array of shape {a.shape})")
    if a.dtype.kind in "ui":
        a = a / np.iinfo(a.dtype).max
    x = torch.tensor(a, dtype=torch.float32)
    x = x[..., None] if x.ndim == 2 else x[..., :3]  # drop alpha
    c, h, w = shape
    if c == 1 and x.shape[-1] == 3:
        x = x @ torch.tensor([0.2125, 0.7154, 0.0721])[:, None]
    elif c == 3 and x.shape[-1] == 1:
        x = x.expand(*x.shape[:2], 3)
    x = x.permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(h, w), mode="area" if x.shape[-1] >= w else "bilinear")[0]
    return 1 - 2 * x if invert else 2 * x - 1


def write_image(x: torch.Tensor, path: str, scale: int = 4) -> None:
    """A batch in [−1, 1]: one image as it is (no border), several as a grid; pixels scale×scale.

    The format follows the extension (PNG, JPEG, TIFF, BMP, GIF, WebP, PDF, SVG, EPS, PS)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .viz import image_grid

    _check_file_out(path)
    fmt = _image_format(path)
    if len(x) > 1:
        img = image_grid(x)  # (H, W, C) in [0, 1], white borders
    else:
        img = ((x[0].detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0)
    img = img.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    img = img.expand(*img.shape[:2], 3) if img.shape[-1] == 1 else img
    # 8 bits rounded to nearest (a float array would go through a 256-entry colour map and lose a step)
    plt.imsave(path, (img * 255).round().to(torch.uint8).numpy(), format=fmt)


# --- commands --------------------------------------------------------------------------------
# Each checks its arguments first (the cheap checks before importing torch), then works.


def _tol(a: argparse.Namespace) -> dict[str, Any]:
    return {"rtol": a.rtol, "atol": a.atol, "max_nfe": a.max_nfe}


def _solve(fn, *args, **kwargs):
    """odediff.sample/encode/decode, with an exhausted --max-nfe budget explained."""
    from odediff import BudgetExceeded

    try:
        return fn(*args, **kwargs)
    except BudgetExceeded as e:  # the message names max_nfe, rtol, atol: the flags --max-nfe, ...
        raise CommandError(f"{e} (flags --max-nfe, --rtol, --atol)") from None


def _sample(a: argparse.Namespace) -> None:
    _check_image_out(a.out)
    kw = _solve_settings(a.solver, a.nfe, a.grid, _tol(a), default_nfe=SAMPLE_NFE)
    import torch

    import odediff
    from odediff.zoo import load

    _check_solver(kw)
    model = load(a.model)
    _check_image_size(a.n, tuple(model.sample_shape), 4, "--n")
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        x, info = _solve(
            odediff.sample, model, shape=(a.n, *model.sample_shape), generator=g, progress=True,
            return_info=True, **kw,
        )  # fmt: skip
    write_image(x, a.out)
    secs = time.perf_counter() - t0
    print(
        f"{_plural(a.n, 'sample')} of {a.model} with {info.solver}, {info.nfe} NFE, {secs:.1f} s -> {a.out}"
    )


class _Ticking:
    """A model whose ε evaluations keep a progress bar's clock and NFE count moving."""

    def __init__(self, model: Any, bar: Any, every: float = 0.5):
        self._model, self._bar, self._every = model, bar, every
        self.nfe, self._last = 0, time.perf_counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def eps(self, xbar, sigma):
        self.nfe += 1
        now = time.perf_counter()
        if now - self._last >= self._every:
            self._bar.set_postfix_str(f"{self.nfe} NFE", refresh=False)
            self._bar.refresh()
            self._last = now
        return self._model.eps(xbar, sigma)


def _demo(a: argparse.Namespace) -> None:
    _check_folder_out(a.out)
    import torch
    from tqdm.auto import tqdm

    import odediff
    from odediff.bench.study import markdown_table, nfe_error_rows, plot_nfe_error
    from odediff.reference import reference_solve
    from odediff.viz import save_grid
    from odediff.zoo import gmm_digits, load

    os.makedirs(a.out, exist_ok=True)
    digits = load("digits")
    with torch.no_grad():
        x, info = odediff.sample(
            digits, shape=(DEMO_SAMPLES, *digits.sample_shape), solver="adams", nfe=10,
            generator=torch.Generator().manual_seed(0), progress=True, return_info=True,
        )  # fmt: skip
    save_grid(x, os.path.join(a.out, "samples.png"))
    print(f"{DEMO_SAMPLES} digits from the trained network, adams, {info.nfe} NFE -> {a.out}/samples.png")

    gmm = gmm_digits()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(DEMO_NOISES, *gmm.sample_shape, dtype=torch.float64, generator=gen)
    parts, ref_nfe = [], 0
    with tqdm(total=len(noise), desc="reference (DOP853, rtol 1e-10)", unit="noise") as bar:
        ticking = _Ticking(gmm, bar)
        for i in range(0, len(noise), DEMO_CHUNK):
            x0, n = reference_solve(ticking, noise[i : i + DEMO_CHUNK])
            parts.append(x0)
            ref_nfe += n
            bar.update(len(x0))
    truth = torch.cat(parts)
    rows = []
    for label in tqdm(DEMO_METHODS, desc="solvers", unit="method"):
        rows += nfe_error_rows(gmm, noise, truth, {label: DEMO_METHODS[label]}, DEMO_NFES)
    title = f"Gaussian-mixture digits: exact ε, {DEMO_NOISES} noises"
    plot_nfe_error(rows, os.path.join(a.out, "nfe_error.png"), title, DEMO_NFES)
    print(
        f"reference: scipy DOP853 at rtol=atol=1e-10, {DEMO_CHUNK} noises per solve, "
        f"{ref_nfe} NFE in all; RMSE of x0:"
    )
    print(markdown_table(rows, DEMO_NFES))
    print(f"-> {a.out}/nfe_error.png")


def _encode(a: argparse.Namespace) -> None:
    _check_file_out(a.out, example="z.pt")
    if os.path.splitext(a.out)[1].lower() in (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff"):
        raise UsageError(f"argument --out: {a.out} would hold a latent, not an image; name it e.g. z.pt")
    kw = _solve_settings(a.solver, a.nfe, a.grid, _tol(a), default_nfe=ENCODE_NFE)
    for p in a.images:
        _check_file_in(p, "an image")
    import torch

    import odediff
    from odediff.zoo import load

    _check_solver(kw)
    model = load(a.model)
    x0 = torch.stack([read_image(p, tuple(model.sample_shape), a.invert) for p in a.images])
    net = getattr(model, "parameters_like", lambda: None)()
    x0 = x0.to(dtype=net[1]) if net is not None else x0.double()
    with torch.no_grad():
        z, info = _solve(odediff.encode, model, x0, progress=True, return_info=True, **kw)
    exact = hasattr(z, "to_dict")
    torch.save(
        {
            "format": LATENT_FORMAT, "version": LATENT_VERSION,
            "latent": z.to_dict() if exact else z, "kind": "Latent" if exact else "tensor",
            "model": a.model, "solver": kw["solver"], "nfe": kw.get("nfe"), "grid": kw.get("grid"),
            "rtol": kw.get("rtol"), "atol": kw.get("atol"), "max_nfe": kw.get("max_nfe"),
            "images": list(a.images), "invert": a.invert,
        },
        a.out,
    )  # fmt: skip
    what = "an exact (reversible) latent" if exact else "x_T"
    print(f"{_plural(len(x0), 'image')} -> {what} of {a.model}, {info.solver}, {info.nfe} NFE -> {a.out}")


def _load_latent(path: str) -> dict[str, Any]:
    import torch

    _check_file_in(path, "a latent file")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike mean "not ours"
        raise CommandError(f"{path}: not an odediff latent file ({type(e).__name__})") from None
    if not isinstance(d, dict) or d.get("format") != LATENT_FORMAT or "latent" not in d:
        raise CommandError(f"{path}: not an odediff latent file (write one with `odediff encode`)")
    if not isinstance(d.get("version"), int) or d["version"] > LATENT_VERSION:
        raise CommandError(f"{path}: latent file version {d.get('version')!r}; this odediff reads 1")
    if d.get("kind") not in ("Latent", "tensor") or not isinstance(d.get("solver"), str):
        raise CommandError(f"{path}: a damaged odediff latent file (no kind or solver)")
    if d["kind"] == "tensor" and not (isinstance(d["latent"], torch.Tensor) and d["latent"].ndim >= 2):
        raise CommandError(f"{path}: a damaged odediff latent file (no latent tensor)")
    return d


def _decode(a: argparse.Namespace) -> None:
    _check_image_out(a.out)
    d = _load_latent(a.latent)  # imports torch
    model_name = a.model or d.get("model")
    if model_name not in MODEL_NAMES:
        raise CommandError(
            f"{a.latent}: encoded with model {model_name!r}, which this odediff does not have; "
            f"pass --model ({', '.join(MODEL_NAMES)})"
        )
    try:
        _solver_name(d["solver"])
    except argparse.ArgumentTypeError:
        raise CommandError(f"{a.latent}: encoded with solver {d['solver']!r}, unknown here") from None
    tol = _tol(a)
    if d["kind"] == "Latent":
        # a reversible latent decodes exactly with its own solver, NFE and grid only
        stored = {"--solver": d["solver"], "--nfe": d.get("nfe"), "--grid": d.get("grid") or DEFAULT_GRID}
        for flag, given in (("--solver", a.solver), ("--nfe", a.nfe), ("--grid", a.grid)):
            if given is not None and given != stored[flag]:
                raise UsageError(
                    f"argument {flag}: {a.latent} holds an exact latent of {d['solver']}, "
                    f"{d.get('nfe')} NFE, grid {stored['--grid']}, which decodes only with those; "
                    f"drop {flag}"
                )
        _solve_settings(d["solver"], None, None, tol)  # --rtol etc. for a fixed-step solver
        kw: dict[str, Any] = {}
    else:
        solver = a.solver or d["solver"]
        own = solver == d["solver"]  # the latent's NFE/grid/tolerances fit only its own kind of solver
        fixed_before = not _is_adaptive(d["solver"])
        kw = _solve_settings(
            solver, a.nfe, a.grid, tol,
            default_nfe=(d.get("nfe") if fixed_before else None) or ENCODE_NFE,
            default_grid=d.get("grid") if fixed_before else None,
            default_tol={k: d[k] for k in ("rtol", "atol", "max_nfe") if own and d.get(k) is not None},
        )  # fmt: skip
        _check_solver(kw)
    import torch

    import odediff
    from odediff.zoo import load

    model = load(model_name)
    if d["kind"] == "Latent":
        latent_cls = getattr(odediff, "Latent", None)
        if latent_cls is None:
            raise CommandError(f"{a.latent}: holds a reversible latent, which this odediff cannot read")
        try:
            z = latent_cls.from_dict(d["latent"])
        except Exception as e:  # a damaged dict: KeyError, TypeError, ...
            raise CommandError(f"{a.latent}: a damaged reversible latent ({type(e).__name__})") from None
        shape = tuple(z.xT.shape[1:])
    else:
        z = d["latent"]
        shape = tuple(z.shape[1:])
    if shape != tuple(model.sample_shape):
        raise CommandError(
            f"{a.latent}: latent of shape {shape}, but {model_name} makes {tuple(model.sample_shape)}"
        )
    _check_image_size(len(z.xT) if d["kind"] == "Latent" else len(z), shape, a.scale, "--scale")
    with torch.no_grad():
        x, info = _solve(odediff.decode, model, z, progress=True, return_info=True, **kw)
    write_image(x, a.out, a.scale)
    print(f"{_plural(len(x), 'image')} of {model_name}, {info.solver}, {info.nfe} NFE -> {a.out}")


def _study_out(out: str) -> None:
    """bench nfe's --out: a folder, or a .png path naming the files (its folder is made)."""
    ext = os.path.splitext(out)[1].lower()
    if ext == ".png":
        if os.path.isdir(out):
            raise UsageError(f"argument --out: {out} is a folder; drop the .png or name another")
        _check_folder_out(os.path.dirname(out) or ".")
    elif ext in (".jpg", ".jpeg", ".pdf", ".svg", ".csv", ".md", ".gif", ".tif", ".tiff"):
        raise UsageError(
            f"argument --out: the study writes .csv, .md and .png files; give a folder or a path "
            f"ending in .png, not {out}"
        )
    else:
        _check_folder_out(out)


def _bench_nfe(a: argparse.Namespace) -> None:
    _study_out(a.out)
    from odediff import shard
    from odediff.bench import study
    from odediff.zoo import load

    fn = getattr(study, "nfe_error_study", None)
    if fn is None:
        raise CommandError("odediff.bench.study.nfe_error_study is not available in this version of odediff")
    noises = a.noises if a.noises is not None else (64 if a.model == "gmm-digits" else 16)
    need, have = noises * math.prod(load(a.model).sample_shape) * 8, _available_memory()
    if have is not None and need > have:
        raise UsageError(
            f"argument --noises: {noises} float64 noises need {need / 2**30:.3g} GiB, more than "
            f"the {have / 2**30:.3g} GiB of memory available"
        )
    nfes = {} if a.nfes is None else {"nfes": a.nfes}
    try:
        fn(a.model, a.out, noises=noises, peers=a.peers, progress=True, **nfes)
    except ImportError as e:
        raise CommandError(f"{e} (or run with --no-peers)") from None
    if shard.is_main():  # the study has printed its tables
        base = a.out[:-4] if a.out.lower().endswith(".png") else os.path.join(a.out, "nfe_vs_error")
        print(f"-> {base}.{{csv,md,png}}")


def _bench_quality(a: argparse.Namespace) -> None:
    _check_folder_out(a.out)
    from odediff import shard
    from odediff.bench.quality import quality_study

    shard.init()  # one process, or torchrun's ranks (`torchrun ... -m odediff bench quality`)
    try:
        rows = quality_study(a.out, n=a.samples, nfes=a.nfes, ddpm=not a.no_ddpm, progress=shard.is_main())
    finally:
        shard.finish()
    if rows is not None:
        with open(os.path.join(a.out, "nfe_vs_quality.md")) as f:
            print(f.read())
        print(f"-> {a.out}/nfe_vs_quality.{{csv,md,png}}")


def _likelihood(a: argparse.Namespace) -> None:
    if a.images and a.split is not None:
        raise UsageError("argument --split: the data are the IMAGE files given; drop --split or the files")
    if not a.images and a.model not in DIGITS_DATA:
        raise UsageError(f"argument --model: {a.model} has no built-in data set; give IMAGE files")
    if a.divergence == "exact" and (a.probes is not None or a.n_probes is not None):
        raise UsageError("argument --probes/--n-probes: Hutchinson's; not with --divergence exact")
    kw = _solve_settings(a.solver, a.nfe, a.grid, _tol(a), default_nfe=LIKELIHOOD_NFE)
    for p in a.images:
        _check_file_in(p, "an image")
    import torch

    from odediff.likelihood import bits_per_dim, log_likelihood
    from odediff.zoo import load

    model = load(a.model)
    if a.images:
        x0 = torch.stack([read_image(p, tuple(model.sample_shape), a.invert) for p in a.images])
        names, bits = list(a.images), 8 if a.bits is None else a.bits  # 8-bit image files
    else:
        from odediff.zoo.digits import load_data

        split = a.split or "test"
        x0 = load_data(split)[0][: a.n]
        names, bits = [f"{split}[{i}]" for i in range(len(x0))], 4 if a.bits is None else a.bits  # step 1/8
    net = model.parameters_like()
    x0 = x0.to(dtype=net[1]) if net is not None else x0.double()
    hutchinson = (
        dict(probes=a.probes or "rademacher", n_probes=a.n_probes or 4) if a.probes or a.n_probes else {}
    )
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    try:
        lp, info = _solve(
            log_likelihood, model, x0, divergence=a.divergence, generator=g, progress=True, **hutchinson, **kw
        )
    except ValueError as e:  # the library names its argument: the flag of the same name
        head = str(e).partition(": ")[0]
        if head in ("nfe", "grid", "solver", "divergence", "n_probes", "probes"):
            raise UsageError(_flag_message(e, "--" + head.replace("_", "-"))) from None
        raise
    bpd = bits_per_dim(lp, x0.shape[1:], bits=bits)
    se = info.stderr
    for i, name in enumerate(names):
        pm = "" if se is None else f" ± {float(se[i]):.2f}"
        print(f"{name}: log p = {float(lp[i]):.2f}{pm} nats, {float(bpd[i]):.4f} bits/dim")
    secs = time.perf_counter() - t0
    what = f"{_plural(len(x0), 'image')} of {a.model}"
    print(
        f"mean {float(bpd.mean()):.4f} bits/dim ({bits}-bit bins) over {what}, {info.ode.solver}, "
        f"{info.divergence} divergence, {info.nfe} NFE, {info.vjps} VJPs, {secs:.1f} s"
    )


# --- the parser ------------------------------------------------------------------------------


def _tune(a: argparse.Namespace) -> None:
    if not a.out.lower().endswith(".json"):
        raise UsageError(f"argument --out: a tuned solver is written as JSON; end it in .json, not {a.out!r}")
    _check_file_out(a.out, "--out", "tuned.json")
    learn = None if a.learn is None else tuple(x for x in a.learn.split(",") if x)
    import torch

    from odediff.tune import LEARN, tune_grid
    from odediff.zoo import load

    if learn is not None and (not learn or set(learn) - set(LEARN)):
        raise UsageError(f"argument --learn: expected some of {','.join(LEARN)} (commas), got {a.learn!r}")
    from odediff import shard

    torch.set_num_threads(a.threads)
    _, world = shard.init()  # under torchrun the noises are shared by the processes
    try:
        g = tune_grid(load(a.model), a.nfe, a.solver, a.noises, holdout=a.holdout, learn=learn,
                      iterations=a.iterations, seed=a.seed, model_name=a.model)  # fmt: skip
        if shard.is_main():
            g.save(a.out)
            print(
                f"{a.model} {g.solver} nfe={g.nfe}: RMSE {g.train_error:.4g} on the training noises, "
                f"{g.holdout_error:.4g} held out (default {g.default_error:.4g}); {g.seconds:.0f} s"
                f"{f' on {world} processes' if world > 1 else ''}, {g.cost_nfe} evaluations -> {a.out}"
            )
    finally:
        shard.finish()


def _solver_help() -> str:
    return (
        f"solver: {', '.join(SOLVER_NAMES)} or torchdiffeq:METHOD (e.g. torchdiffeq:dopri5); "
        f"{', '.join(REVERSIBLE)} invert exactly; {', '.join(ADAPTIVE)} and torchdiffeq's adaptive methods "
        "take --rtol/--atol/--max-nfe instead of --nfe and --grid "
        f"(torchdiffeq's {', '.join(TORCHDIFFEQ_FIXED)} take --nfe)"
    )


def _solver_flags(
    p: argparse.ArgumentParser, solver: str | None, nfe: str, grid: str, tol: str = "1e-4"
) -> None:
    """--solver, --nfe, --grid and the adaptive solvers' --rtol, --atol, --max-nfe."""
    default = f" (default: {solver})" if solver in SOLVER_NAMES else " (default: the latent's)"
    p.add_argument("--solver", type=_solver_name, default=solver, help=_solver_help() + default)
    p.add_argument(
        "--nfe", type=_whole(1, MAX_NFE), default=None,
        help=f"network evaluations per sample, for a fixed-step solver (default: {nfe})",
    )  # fmt: skip
    p.add_argument(
        "--grid", choices=GRID_NAMES, default=None,
        help=f"σ grid family, for a fixed-step solver (default: {grid})",
    )  # fmt: skip
    tol = f"tolerance of an adaptive solver (default: {tol})"
    p.add_argument("--rtol", type=_tolerance, default=None, help=f"relative {tol}")
    p.add_argument("--atol", type=_tolerance, default=None, help=f"absolute {tol}")
    p.add_argument(
        "--max-nfe", type=_whole(1, MAX_NFE), default=None,
        help="most network evaluations an adaptive solver may spend before giving up (default: 2000)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The ``odediff`` argument parser (its subcommands call the functions above)."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(
        prog="odediff",
        description="Diffusion sampling as an ODE solve: samples, inversion, studies.",
        epilog=(
            "examples:\n"
            "  odediff demo --out out\n"
            "  odediff sample --solver heun --nfe 20 --out samples.png\n"
            "  odediff sample --solver rk45 --rtol 1e-3 --atol 1e-3 --out samples.png\n"
            "  odediff encode digit.png --out z.pt --solver euler --nfe 50\n"
            "  odediff decode z.pt --out back.png\n"
            "  odediff likelihood digit.png --model digits\n"
            "  odediff bench nfe --model gmm-digits --out out/nfe\n"
            "  odediff tune --model digits --nfe 5 --out digits_nfe5.json\n\n"
            "`odediff COMMAND --help` describes each command."
        ),
        formatter_class=fmt,
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=_Parser)
    image_out = "PNG, JPEG, TIFF, BMP, GIF, WebP, PDF, SVG, EPS or PS, by the extension"

    d = sub.add_parser("demo", help="sample digits and plot NFE against error (writes two PNGs)")
    d.add_argument("--out", default="out", help="output folder, made if need be (default: out)")
    d.set_defaults(run=_demo, parser=d)

    s = sub.add_parser("sample", help="sample a built-in model to an image grid")
    s.add_argument("--model", choices=MODEL_NAMES, default="digits", help="built-in model (default: digits)")
    _solver_flags(s, "adams", str(SAMPLE_NFE), DEFAULT_GRID)
    s.add_argument("--n", type=_whole(1), default=64, help="number of samples (default: 64)")
    s.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    s.add_argument("--out", default="samples.png", help=f"output image: {image_out} (default: samples.png)")
    s.set_defaults(run=_sample, parser=s)

    e = sub.add_parser(
        "encode", help="image(s) → latent x_T by integrating the ODE from σ = 0 to σ_max",
        description=(
            "Read one or more images, convert them to the model's sample shape (grey, resized by area "
            "averaging, pixels v ∈ [0, 1] → 2v − 1) and integrate dx̄/dσ = ε upwards to x_T. The "
            "latent file also records the model, solver, NFE, grid and tolerances, so `odediff "
            "decode` inverts it with the same settings by default."
        ),
        formatter_class=fmt,
    )  # fmt: skip
    e.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s): PNG, JPEG, ...")
    e.add_argument("--out", required=True, help="latent file to write (e.g. z.pt)")
    e.add_argument("--model", choices=MODEL_NAMES, default="digits", help="built-in model (default: digits)")
    _solver_flags(e, "adams", str(ENCODE_NFE), DEFAULT_GRID)
    e.add_argument("--invert", action="store_true", help="dark-on-light image: map dark to +1")
    e.set_defaults(run=_encode, parser=e)

    c = sub.add_parser(
        "decode", help="latent file → image by integrating the ODE from σ_max to 0",
        description=(
            "Decode a latent written by `odediff encode`. Model, solver, NFE, grid and tolerances "
            "default to the ones it was encoded with; one image is written as is, several as a grid."
        ),
        formatter_class=fmt,
    )  # fmt: skip
    c.add_argument("latent", metavar="LATENT", help="a file written by `odediff encode`")
    c.add_argument("--out", required=True, help=f"output image: {image_out}")
    c.add_argument(
        "--model", choices=MODEL_NAMES, default=None, help="built-in model (default: the latent's)"
    )
    _solver_flags(c, None, "the latent's", "the latent's")
    c.add_argument(
        "--scale", type=_whole(1), default=4, help="pixels per image pixel in the output (default: 4)"
    )
    c.set_defaults(run=_decode, parser=c)

    lk = sub.add_parser(
        "likelihood", help="log p and bits/dim of images (or the digits data) through the ODE",
        description=(
            "Integrate the ODE with its divergence from the data at σ_min to σ_max "
            "(odediff.log_likelihood): log p in nats and bits/dim of each IMAGE (read as `encode` "
            "reads them; 8-bit bins by default), or without files of the first --n digits of --split "
            "(4-bit bins: the digits' step is 1/8)."
        ),
        formatter_class=fmt,
    )  # fmt: skip
    lk.add_argument("images", nargs="*", metavar="IMAGE", help="image file(s): PNG, JPEG, ...")
    lk.add_argument("--model", choices=MODEL_NAMES, default="digits", help="built-in model (default: digits)")
    _solver_flags(lk, "rk45", str(LIKELIHOOD_NFE), DEFAULT_GRID, tol="1e-5")
    lk.add_argument(
        "--divergence", choices=DIVERGENCES, default="auto",
        help="exact (one VJP per dimension), hutchinson, or auto: exact up to 256 dimensions (default: auto)",
    )  # fmt: skip
    lk.add_argument(
        "--probes", choices=PROBES, default=None, help="Hutchinson's probes (default: rademacher)"
    )
    lk.add_argument(
        "--n-probes", type=_whole(1), default=None, help="Hutchinson's probes per image (default: 4)"
    )
    lk.add_argument("--seed", type=_seed, default=0, help="random seed of the probes (default: 0)")
    lk.add_argument(
        "--split", choices=("test", "train"), default=None, help="digits split without IMAGE (default: test)"
    )
    lk.add_argument("--n", type=_whole(1), default=4, help="digits of --split, without IMAGE (default: 4)")
    lk.add_argument(
        "--bits", type=_whole(1, 32), default=None, help="bit depth of the bins (default: 8, digits 4)"
    )
    lk.add_argument("--invert", action="store_true", help="dark-on-light image: map dark to +1")
    lk.set_defaults(run=_likelihood, parser=lk)

    t = sub.add_parser(
        "tune", help="tune a solver (grid and multistep weights) to a built-in model at one NFE (JSON)",
        description="Learn the σ grid and adams' multistep weights against a reference solve of training "
        "noises (odediff.tune_grid); use the result with odediff.TunedGrid.load(FILE).kwargs().",
        epilog="example:\n  odediff tune --model digits --nfe 5 --out digits_nfe5.json", formatter_class=fmt,
    )  # fmt: skip
    t.add_argument("--model", choices=MODEL_NAMES, default="digits", help="built-in model (default: digits)")
    t.add_argument("--nfe", type=_whole(1, MAX_NFE), required=True, help="the budget to tune for")
    t.add_argument("--out", required=True, help="the tuned solver, a .json file")
    t.add_argument("--solver", choices=[n for n in SOLVER_NAMES if n not in ADAPTIVE], default="adams",
                   help="fixed-step solver (default: adams; others tune their grid alone)")  # fmt: skip
    t.add_argument("--learn", default=None, help="what to learn, some of grid,weights,times "
                   "(default: grid,weights for adams, grid otherwise)")  # fmt: skip
    t.add_argument("--noises", type=_whole(1), default=16, help="training noises (default: 16)")
    t.add_argument(
        "--holdout", type=_whole(1), default=16, help="held-out noises, to stop early (default: 16)"
    )
    t.add_argument("--iterations", type=_whole(1), default=400, help="most Adam steps (default: 400)")
    t.add_argument("--seed", type=_seed, default=0, help="seed of the noises (default: 0)")
    t.add_argument("--threads", type=_whole(1), default=1, help="torch threads (default: 1)")
    t.set_defaults(run=_tune, parser=t)

    b = sub.add_parser("bench", help="the studies: nfe (error vs NFE), quality (Fréchet distance vs NFE)")
    bsub = b.add_subparsers(dest="bench", required=True, metavar="STUDY", parser_class=_Parser)
    bn = bsub.add_parser("nfe", help="NFE vs error against a float64 reference (CSV, markdown, PNG)")
    bn.add_argument(
        "--model", choices=MODEL_NAMES, default="gmm-digits", help="built-in model (default: gmm-digits)"
    )
    bn.add_argument(
        "--out", default="out/nfe_vs_error", help="output folder, or a .png path naming the files"
    )
    bn.add_argument(
        "--noises", type=_whole(1), default=None, help="noises x_T (default: 64 gmm-digits, 16 digits)"
    )
    bn.add_argument("--nfes", type=_int_list, default=None, help="comma-separated NFE (default: the study's)")
    bn.add_argument(
        "--peers", action=argparse.BooleanOptionalAction, default=True,
        help="diffusers' schedulers alongside odediff's solvers (default: on; needs diffusers)",
    )  # fmt: skip
    bn.set_defaults(run=_bench_nfe, parser=bn)
    bq = bsub.add_parser("quality", help="Fréchet distance to held-out digits vs NFE (CSV, markdown, PNG)")
    bq.add_argument("--out", default="out/nfe_vs_quality", help="output folder, made if need be")
    bq.add_argument("--samples", type=_whole(2), default=500, help="samples per row, ≥ 2 (default: 500)")
    bq.add_argument(
        "--nfes",
        type=_int_list,
        default=[10, 20, 50, 100],
        help="comma-separated NFE (default: 10,20,50,100)",
    )
    bq.add_argument("--no-ddpm", action="store_true", help="skip the 1000-step DDPM row (the slow one)")
    bq.set_defaults(run=_bench_quality, parser=bq)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit status (0 after
    --help, 2 after any bad argument or failure, 130 when interrupted)."""
    try:
        a, extra = build_parser().parse_known_args(argv)
        if extra:  # reported by the command's parser, so that the message names the command
            a.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help, or argparse's one-line usage error
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    name = a.parser.prog
    try:
        a.run(a)
    except UsageError as e:
        print(f"{name}: error: {' '.join(str(e).split())} (see {name} --help)", file=sys.stderr)
        return 2
    except CommandError as e:
        print(f"{name}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, RuntimeError, ArithmeticError, ImportError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the exception held
        print(f"{name}: error: {msg}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{name}: error: out of memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("ODEDIFF_TRACEBACK"):
            raise
        msg = " ".join(str(e).split())
        print(
            f"{name}: internal error: {type(e).__name__}: {msg} (a bug; ODEDIFF_TRACEBACK=1 shows where)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
