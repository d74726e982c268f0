"""The ``odediff`` command (also ``python -m odediff``): demo, sample, encode, decode, bench.

``encode`` reads image files and writes a latent file (a dict: the latent, model, solver, NFE,
grid); ``decode`` turns one back into an image with the same settings unless told otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, NoReturn

import torch

DEMO_METHODS = {
    "euler (= DDIM)": dict(solver="euler"),
    "heun": dict(solver="heun"),
    "adams (default)": dict(solver="adams"),
    "adams, exact σ-weights": dict(solver="adams", weights="exact"),
}
LATENT_FORMAT = "odediff-latent"


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with a pointer to --help), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- images ----------------------------------------------------------------------------------


def read_image(path: str, shape: tuple[int, ...], invert: bool = False) -> torch.Tensor:
    """An image file as a (C, H, W) tensor in [−1, 1] matching ``shape``.

    Colour → grey by luminance Y = 0.2125 R + 0.7154 G + 0.0721 B when C = 1 (grey → colour by
    repetition when C = 3); alpha is dropped; resized by area averaging (exact block means for an
    integer factor, e.g. a PNG written by ``decode --scale``); v ∈ [0, 1] → 2v − 1, or 1 − 2v with
    ``invert`` (dark ink on light paper, as opposed to the digits' light-on-dark)."""
    import matplotlib.image
    import numpy as np
    import torch.nn.functional as F

    if not os.path.isfile(path):
        raise CommandError(f"{path}: no such file")
    try:
        a = np.asarray(matplotlib.image.imread(path))
    except Exception as e:  # Pillow/matplotlib raise many types for a non-image
        raise CommandError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
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
    """A batch in [−1, 1]: one image as it is (no border), several as a grid; pixels scale×scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .viz import save_grid

    _check_out(path)
    if len(x) > 1:
        save_grid(x, path, scale=scale)
        return
    img = ((x[0].detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0)
    img = img.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    img = img.expand(*img.shape[:2], 3) if img.shape[-1] == 1 else img
    # 8 bits rounded to nearest (a float array would go through a 256-entry colour map and lose a step)
    plt.imsave(path, (img * 255).round().to(torch.uint8).numpy())


def _check_out(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(f"{path}: folder {folder} does not exist")


# --- commands --------------------------------------------------------------------------------


def _sample(a: argparse.Namespace) -> None:
    import odediff
    from odediff.zoo import load

    _check_out(a.out)
    model = load(a.model)
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        x, info = odediff.sample(
            model, shape=(a.n, *model.sample_shape), solver=a.solver, nfe=a.nfe, grid=a.grid,
            generator=g, progress=True, return_info=True,
        )  # fmt: skip
    write_image(x, a.out)
    secs = time.perf_counter() - t0
    print(f"{a.n} samples of {a.model} with {info.solver}, {info.nfe} NFE, {secs:.1f} s -> {a.out}")


def _demo(a: argparse.Namespace) -> None:
    import odediff
    from odediff.bench.study import markdown_table, nfe_error_rows, plot_nfe_error
    from odediff.reference import reference_solve
    from odediff.viz import save_grid
    from odediff.zoo import gmm_digits, load

    os.makedirs(a.out, exist_ok=True)
    digits = load("digits")
    with torch.no_grad():
        x, info = odediff.sample(
            digits, shape=(64, *digits.sample_shape), solver="adams", nfe=10,
            generator=torch.Generator().manual_seed(0), return_info=True,
        )  # fmt: skip
    save_grid(x, os.path.join(a.out, "samples.png"))
    print(f"64 digits from the trained network, adams, {info.nfe} NFE -> {a.out}/samples.png")

    gmm = gmm_digits()
    noise = torch.randn(32, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    truth, ref_nfe = reference_solve(gmm, noise)
    nfes = (5, 8, 10, 15, 20, 30, 50)
    rows = nfe_error_rows(gmm, noise, truth, DEMO_METHODS, nfes)
    plot_nfe_error(
        rows, os.path.join(a.out, "nfe_error.png"), "Gaussian-mixture digits: exact ε, 32 noises", nfes
    )
    print(f"reference: scipy DOP853 at rtol=atol=1e-10, {ref_nfe} NFE; RMSE of x0:")
    print(markdown_table(rows, nfes))
    print(f"-> {a.out}/nfe_error.png")


def _encode(a: argparse.Namespace) -> None:
    import odediff
    from odediff.zoo import load

    _check_out(a.out)
    model = load(a.model)
    x0 = torch.stack([read_image(p, tuple(model.sample_shape), a.invert) for p in a.images])
    net = getattr(model, "parameters_like", lambda: None)()
    x0 = x0.to(dtype=net[1]) if net is not None else x0.double()
    with torch.no_grad():
        z, info = odediff.encode(
            model, x0, solver=a.solver, nfe=a.nfe, grid=a.grid, progress=True, return_info=True
        )
    exact = hasattr(z, "to_dict")
    torch.save(
        {
            "format": LATENT_FORMAT, "version": 1,
            "latent": z.to_dict() if exact else z, "kind": "Latent" if exact else "tensor",
            "model": a.model, "solver": a.solver, "nfe": a.nfe, "grid": a.grid,
            "images": list(a.images), "invert": a.invert,
        },
        a.out,
    )  # fmt: skip
    what = "an exact (reversible) latent" if exact else "x_T"
    print(f"{len(x0)} image(s) -> {what} of {a.model}, {info.solver}, {info.nfe} NFE -> {a.out}")


def _load_latent(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise CommandError(f"{path}: no such file")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike mean "not ours"
        raise CommandError(f"{path}: not an odediff latent file ({type(e).__name__})") from None
    if not isinstance(d, dict) or d.get("format") != LATENT_FORMAT or "latent" not in d:
        raise CommandError(f"{path}: not an odediff latent file (write one with `odediff encode`)")
    return d


def _decode(a: argparse.Namespace) -> None:
    import odediff
    from odediff.zoo import load

    d = _load_latent(a.latent)
    _check_out(a.out)
    model = load(a.model or d["model"])
    if d["kind"] == "Latent":
        latent_cls = getattr(odediff, "Latent", None)
        if latent_cls is None:
            raise CommandError(f"{a.latent}: holds a reversible latent, which this odediff cannot read")
        z = latent_cls.from_dict(d["latent"])
        # a reversible latent decodes with its own solver and grid; pass only what was asked for
        kwargs = {k: v for k, v in (("solver", a.solver), ("nfe", a.nfe), ("grid", a.grid)) if v is not None}
    else:
        z = d["latent"]
        kwargs = {"solver": a.solver or d["solver"], "nfe": a.nfe or d["nfe"], "grid": a.grid or d["grid"]}
    with torch.no_grad():
        x, info = odediff.decode(model, z, progress=True, return_info=True, **kwargs)
    write_image(x, a.out, a.scale)
    print(f"{len(x)} image(s) of {a.model or d['model']}, {info.solver}, {info.nfe} NFE -> {a.out}")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return values


def _bench_nfe(a: argparse.Namespace) -> None:
    from odediff import shard
    from odediff.bench import study

    fn = getattr(study, "nfe_error_study", None)
    if fn is None:
        raise CommandError("odediff.bench.study.nfe_error_study is not available in this version of odediff")
    noises = a.noises or (64 if a.model == "gmm-digits" else 16)
    nfes = {} if a.nfes is None else {"nfes": a.nfes}
    try:
        fn(a.model, a.out, noises=noises, peers=a.peers, progress=True, **nfes)
    except ImportError as e:
        raise CommandError(f"{e} (or run with --no-peers)") from None
    if shard.is_main():
        base = a.out[:-4] if a.out.lower().endswith(".png") else os.path.join(a.out, "nfe_vs_error")
        if os.path.isfile(base + ".md"):
            with open(base + ".md") as f:
                print(f.read())
        print(f"-> {base}.{{csv,md,png}}")


def _bench_quality(a: argparse.Namespace) -> None:
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


# --- the parser ------------------------------------------------------------------------------


def _solver_help() -> str:
    from odediff import SOLVERS

    rev = [n for n, s in SOLVERS.items() if getattr(s, "reversible", False)]
    names = ", ".join(sorted(SOLVERS))
    return f"solver: {names}" + (f"; {', '.join(rev)} invert exactly" if rev else "")


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
            "  odediff encode digit.png --out z.pt --solver euler --nfe 50\n"
            "  odediff decode z.pt --out back.png\n"
            "  odediff bench nfe --model gmm-digits --out out/nfe\n\n"
            "`odediff COMMAND --help` describes each command."
        ),
        formatter_class=fmt,
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    solver_help = _solver_help()

    d = sub.add_parser("demo", help="sample digits and plot NFE against error (writes two PNGs)")
    d.add_argument("--out", default="out", help="output folder (default: out)")
    d.set_defaults(run=_demo)

    s = sub.add_parser("sample", help="sample a built-in model to a PNG grid")
    s.add_argument("--model", default="digits", help="built-in model: digits or gmm-digits (default: digits)")
    s.add_argument("--solver", default="adams", help=f"{solver_help} (default: adams)")
    s.add_argument("--nfe", type=int, default=10, help="network evaluations per sample (default: 10)")
    s.add_argument("--grid", default=None, help="σ grid family (default: quadratic_t)")
    s.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.add_argument("--out", default="samples.png", help="output PNG (default: samples.png)")
    s.set_defaults(run=_sample)

    e = sub.add_parser(
        "encode", help="image(s) → latent x_T by integrating the ODE from σ = 0 to σ_max",
        description=(
            "Read one or more images, convert them to the model's sample shape (grey, resized by area "
            "averaging, pixels v ∈ [0, 1] → 2v − 1) and integrate dx̄/dσ = ε upwards to x_T. The "
            "latent file also records the model, solver, NFE and grid, so `odediff decode` inverts it "
            "with the same settings by default."
        ),
        formatter_class=fmt,
    )  # fmt: skip
    e.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG file(s)")
    e.add_argument("--out", required=True, help="latent file to write (e.g. z.pt)")
    e.add_argument("--model", default="digits", help="built-in model (default: digits)")
    e.add_argument("--solver", default="adams", help=f"{solver_help} (default: adams)")
    e.add_argument("--nfe", type=int, default=50, help="network evaluations (default: 50)")
    e.add_argument("--grid", default=None, help="σ grid family (default: quadratic_t)")
    e.add_argument("--invert", action="store_true", help="dark-on-light image: map dark to +1")
    e.set_defaults(run=_encode)

    c = sub.add_parser(
        "decode", help="latent file → image by integrating the ODE from σ_max to 0",
        description=(
            "Decode a latent written by `odediff encode`. Model, solver, NFE and grid default to the "
            "ones it was encoded with; one image is written as is, several as a grid."
        ),
        formatter_class=fmt,
    )  # fmt: skip
    c.add_argument("latent", metavar="LATENT", help="a file written by `odediff encode`")
    c.add_argument("--out", required=True, help="output PNG")
    c.add_argument("--model", default=None, help="built-in model (default: the latent's)")
    c.add_argument("--solver", default=None, help="solver (default: the latent's)")
    c.add_argument("--nfe", type=int, default=None, help="network evaluations (default: the latent's)")
    c.add_argument("--grid", default=None, help="σ grid family (default: the latent's)")
    c.add_argument("--scale", type=int, default=4, help="pixels per image pixel in the PNG (default: 4)")
    c.set_defaults(run=_decode)

    b = sub.add_parser("bench", help="the studies: nfe (error vs NFE), quality (Fréchet distance vs NFE)")
    bsub = b.add_subparsers(dest="bench", required=True, metavar="STUDY")
    bn = bsub.add_parser("nfe", help="NFE vs error against a float64 reference (CSV, markdown, PNG)")
    bn.add_argument("--model", default="gmm-digits", help="built-in model (default: gmm-digits)")
    bn.add_argument(
        "--out", default="out/nfe_vs_error", help="output folder, or a .png path naming the files"
    )
    bn.add_argument("--noises", type=int, default=None, help="noises x_T (default: 64 gmm-digits, 16 digits)")
    bn.add_argument("--nfes", type=_int_list, default=None, help="comma-separated NFE (default: the study's)")
    bn.add_argument(
        "--peers", action=argparse.BooleanOptionalAction, default=True,
        help="diffusers' schedulers alongside odediff's solvers (default: on; needs diffusers)",
    )  # fmt: skip
    bn.set_defaults(run=_bench_nfe)
    bq = bsub.add_parser("quality", help="Fréchet distance to held-out digits vs NFE (CSV, markdown, PNG)")
    bq.add_argument("--out", default="out/nfe_vs_quality", help="output folder")
    bq.add_argument("--samples", type=int, default=500, help="samples per row (default: 500)")
    bq.add_argument("--nfes", type=_int_list, default=[10, 20, 50, 100], help="comma-separated NFE")
    bq.add_argument("--no-ddpm", action="store_true", help="skip the 1000-step DDPM row (the slow one)")
    bq.set_defaults(run=_bench_quality)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    name = "odediff " + a.cmd + (f" {a.bench}" if a.cmd == "bench" else "")
    try:
        a.run(a)
    except CommandError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, RuntimeError, ArithmeticError, ImportError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the exception held
        print(f"{name}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
