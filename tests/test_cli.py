"""The odediff command: sample, encode → decode round trips through files, every bad argument a
one-line error before any work, --help without torch."""

import os
import re
import subprocess
import sys
import textwrap

import matplotlib.image
import numpy as np
import pytest
import torch

import odediff
from odediff import cli
from odediff.cli import main, read_image, write_image
from odediff.zoo import load
from odediff.zoo.digits import load_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))


@pytest.fixture(scope="module")
def digit():
    return load_data("test")[0][1:2]  # (1, 1, 8, 8) in [−1, 1]; [0] is an unusually hard one


@pytest.fixture
def digit_png(tmp_path, digit):
    path = tmp_path / "digit.png"
    write_image(digit, str(path), scale=4)
    return path


def read_png(path) -> np.ndarray:
    a = matplotlib.image.imread(path)
    return a[..., 0] if a.ndim == 3 else a


def one_line_error(capsys, text, prefix="odediff"):
    err = capsys.readouterr().err.strip()
    assert len(err.split("\n")) == 1, err
    err = err.split("\r")[-1]  # what a terminal shows once a progress bar has erased itself
    assert err.startswith(prefix) and ": error: " in err, err
    assert text in err, err
    return err


def nfe_of(out: str) -> int:
    return int(re.search(r"(\d+) NFE", out).group(1))


# --- help and the tables it is built from ---------------------------------------------------


def test_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "sample", "encode", "decode", "bench"):
        assert cmd in out
    for cmd in ("sample", "encode", "decode"):
        assert main([cmd, "--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        for flag in ("--solver", "--nfe", "--rtol", "--atol", "--max-nfe", "rk45", "torchdiffeq:"):
            assert flag in out, (cmd, flag)
        for g in sorted(odediff.GRIDS):  # --grid lists its choices
            assert g in out, (cmd, g)


def test_tables_match_the_registries():
    from odediff.grids import DEFAULT_GRID
    from odediff.zoo import MODELS

    S = odediff.SOLVERS
    assert cli.SOLVER_NAMES == tuple(sorted(S))
    assert cli.ADAPTIVE == tuple(sorted(n for n, s in S.items() if s.adaptive))
    from odediff.solvers.external import _FIXED

    assert cli.TORCHDIFFEQ_FIXED == tuple(sorted(_FIXED))
    assert cli.REVERSIBLE == tuple(sorted(n for n, s in S.items() if s.reversible))
    assert cli.GRID_NAMES == tuple(sorted(odediff.GRIDS))
    assert cli.DEFAULT_GRID == DEFAULT_GRID
    assert cli.MODEL_NAMES == tuple(sorted(MODELS))
    # the defaults --help quotes for the adaptive solvers
    for s in (S["rk45"], odediff.get_solver("torchdiffeq:dopri5")):
        assert (s.rtol, s.atol, s.max_nfe) == (1e-4, 1e-4, 2000)


LAZY = textwrap.dedent(
    """
    import sys, types
    # odediff/__init__.py imports the whole library (and torch); skip it to see what the CLI imports
    pkg = types.ModuleType("odediff"); pkg.__path__ = [{pkg!r}]; sys.modules["odediff"] = pkg
    from odediff.cli import main
    codes = [main(argv) for argv in {argvs!r}]
    print(codes, "torch" in sys.modules)
    """
)


def test_help_and_argument_errors_do_not_import_torch(tmp_path):
    argvs = [
        ["--help"], ["sample", "--help"], ["bench", "nfe", "--help"], ["sample", "--n", "0"],
        ["sample", "--solver", "rk45", "--nfe", "5"], ["sample", "--out", str(tmp_path / "x.txt")],
        ["decode", "--scale", "0", "z.pt", "--out", "x.png"], ["bench", "nfe", "--noises", "0"],
    ]  # fmt: skip
    code = LAZY.format(pkg=os.path.join(ROOT, "odediff"), argvs=argvs)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.stdout.strip().splitlines()[-1] == f"{[0, 0, 0, 2, 2, 2, 2, 2]} False", r.stdout + r.stderr


def test_odediff_help_does_not_import_torch():
    code = "import sys; from odediff.cli import main; main(['--help']); print('torch' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.stdout.strip().splitlines()[-1] == "False"


# --- commands that work ----------------------------------------------------------------------


def test_sample_writes_an_image(tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", "--n", "1", "--nfe", "5", "--out", str(out)]) == 0
    assert read_png(out).shape == (32, 32)  # one 8×8 sample, no border, 4× pixels
    assert "1 sample of digits" in capsys.readouterr().out
    assert main(["sample", "--model", "gmm-digits", "--n", "2", "--nfe", "2", "--out", str(out)]) == 0
    assert "2 samples of gmm-digits" in capsys.readouterr().out
    assert read_png(out).shape == (4 * 10, 4 * 19)  # a 1×2 grid with 1-pixel borders


@pytest.mark.parametrize("ext", ["png", "jpg", "tif", "tiff", "bmp", "gif", "pdf", "svg", "eps"])
def test_every_offered_format_writes(tmp_path, digit, ext):
    path = tmp_path / f"d.{ext}"
    write_image(torch.cat([digit, digit]), str(path), scale=2)
    assert path.stat().st_size > 0
    if ext in ("png", "tif", "bmp"):  # lossless: the pixels come back
        a = matplotlib.image.imread(path)
        assert a.shape[:2] == (2 * 10, 2 * 19)


def test_adaptive_solvers_take_tolerances(tmp_path, capsys):
    model = load("gmm-digits")
    out = str(tmp_path / "s.png")
    for solver in ("rk45", "torchdiffeq:dopri5"):
        argv = ["sample", "--model", "gmm-digits", "--solver", solver, "--n", "2", "--out", out]
        assert main([*argv, "--rtol", "1e-2", "--atol", "1e-2"]) == 0
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            _, info = odediff.sample(
                model, shape=(2, 1, 8, 8), solver=solver, rtol=1e-2, atol=1e-2, generator=g, return_info=True
            )
        assert f"with {solver}, {info.nfe} NFE" in capsys.readouterr().out
    assert main(["sample", "--model", "gmm-digits", "--solver", "rk45", "--max-nfe", "5", "--out", out]) == 2
    one_line_error(capsys, "max_nfe")  # the budget ran out: one line naming it


def test_adaptive_latent_keeps_its_tolerances(tmp_path, digit_png, capsys):
    z, back = tmp_path / "z.pt", tmp_path / "back.png"
    argv = ["encode", str(digit_png), "--out", str(z), "--model", "gmm-digits", "--solver", "rk45"]
    assert main([*argv, "--rtol", "1e-2", "--atol", "1e-3"]) == 0
    d = torch.load(z, weights_only=True)
    assert (d["solver"], d["nfe"], d["rtol"], d["atol"], d["max_nfe"]) == ("rk45", None, 1e-2, 1e-3, None)
    capsys.readouterr()
    assert main(["decode", str(z), "--out", str(back)]) == 0
    with torch.no_grad():
        _, info = odediff.decode(
            load("gmm-digits"), d["latent"], solver="rk45", rtol=1e-2, atol=1e-3, return_info=True
        )
    assert f"rk45, {info.nfe} NFE" in capsys.readouterr().out
    assert main(["decode", str(z), "--out", str(back), "--solver", "heun"]) == 0  # a fixed-step solver:
    assert "heun, 50 NFE" in capsys.readouterr().out  # encode's default budget, not the tolerances


def test_read_image_converts_to_the_sample_shape(tmp_path, digit):
    # colour with alpha, 3× larger: grey by luminance, area-averaged back to exactly 8×8
    rgb = ((digit[0, 0] + 1) / 2).repeat_interleave(3, 0).repeat_interleave(3, 1)
    rgba = (torch.stack([rgb, rgb, rgb, torch.ones_like(rgb)], -1) * 255).round().to(torch.uint8).numpy()
    path = tmp_path / "rgba.png"
    matplotlib.image.imsave(path, rgba)
    x = read_image(str(path), (1, 8, 8))
    assert x.shape == (1, 8, 8)
    assert (x - digit[0]).abs().max() < 1 / 255 + 1e-6  # PNG stores 8 bits: half a step of 2/255
    assert torch.allclose(read_image(str(path), (1, 8, 8), invert=True), -x)


def test_encode_decode_round_trip(tmp_path, digit_png, capsys):
    z, back = tmp_path / "z.pt", tmp_path / "back.png"
    assert main(["encode", str(digit_png), "--out", str(z), "--solver", "euler", "--nfe", "20"]) == 0
    assert "1 image -> x_T" in capsys.readouterr().out
    d = torch.load(z, weights_only=True)
    assert d["model"] == "digits" and d["solver"] == "euler" and d["nfe"] == 20
    assert d["latent"].shape == (1, 1, 8, 8)
    assert main(["decode", str(z), "--out", str(back)]) == 0
    assert "1 image of digits, euler, 20 NFE" in capsys.readouterr().out  # the file's settings by default

    # the files carry exactly what the library computes on the image as read
    model = load("digits")
    x0 = read_image(str(digit_png), (1, 8, 8))[None]
    with torch.no_grad():
        xT = odediff.encode(model, x0, solver="euler", nfe=20)
        expect = odediff.decode(model, xT, solver="euler", nfe=20)
    assert torch.allclose(d["latent"], xT, atol=1e-5)
    got = torch.tensor(read_png(back)[::4, ::4]) * 2 - 1
    assert (got - expect[0, 0].clamp(-1, 1)).abs().max() < 1 / 255 + 1e-6  # 8 bits, rounded
    # DDIM inversion at 20 NFE is close to the original but not exact
    rmse = (got - x0[0, 0]).square().mean().sqrt()
    assert 0.01 < rmse < 0.2


REVERSIBLE = [n for n, s in odediff.SOLVERS.items() if getattr(s, "reversible", False)]


@pytest.mark.skipif(not REVERSIBLE, reason="no reversible solver registered")
def test_reversible_round_trip_is_exact_up_to_png(tmp_path, digit_png):
    z, back = tmp_path / "z.pt", tmp_path / "back.png"
    assert main(["encode", str(digit_png), "--out", str(z), "--solver", REVERSIBLE[0], "--nfe", "10"]) == 0
    assert torch.load(z, weights_only=True)["kind"] == "Latent"
    assert main(["decode", str(z), "--out", str(back)]) == 0
    assert np.abs(read_png(back) - read_png(digit_png)).max() < 1e-6  # the same 8-bit values


def test_demo_shows_its_progress(tmp_path, monkeypatch, capsys):
    for name, value in (("DEMO_SAMPLES", 4), ("DEMO_NOISES", 2), ("DEMO_CHUNK", 1), ("DEMO_NFES", (5,))):
        monkeypatch.setattr(cli, name, value)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    cap = capsys.readouterr()
    assert "reference (DOP853" in cap.err and "2/2" in cap.err  # the bar of the reference solve
    assert "| adams (default) |" in cap.out
    assert {"samples.png", "nfe_error.png"} <= set(os.listdir(tmp_path / "demo"))


# --- bad arguments: one line, exit status 2, before any work ---------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, digit):
    """Paths the bad-argument cases refer to as {png}, {dir}, {text}, {z}, {zx}, {other}, {alien}."""
    d = tmp_path_factory.mktemp("files")
    write_image(digit, str(d / "digit.png"))
    (d / "folder").mkdir()
    (d / "notes.txt").write_text("not an image\n")
    png = str(d / "digit.png")
    assert main(["encode", png, "--out", str(d / "z.pt"), "--nfe", "2"]) == 0
    assert main(["encode", png, "--out", str(d / "zx.pt"), "--solver", "bdia", "--nfe", "4"]) == 0
    torch.save({"something": torch.zeros(2)}, d / "other.pt")
    alien = torch.load(d / "z.pt", weights_only=True) | {"model": "imagenet"}
    torch.save(alien, d / "alien.pt")
    names = {"png": "digit.png", "dir": "folder", "text": "notes.txt", "z": "z.pt", "zx": "zx.pt"}
    names |= {"other": "other.pt", "alien": "alien.pt", "missing": "missing.png", "new": "new"}
    return {k: str(d / v) for k, v in names.items()}


BAD = [
    # sample
    ("sample --n 0", "argument --n: expected a whole number ≥ 1, got '0'"),
    ("sample --n -3", "argument --n"),
    ("sample --n 1000000", "argument --n: a grid of 1000000 samples would be"),
    ("sample --nfe 0", "argument --nfe"),
    ("sample --nfe 99999999", "argument --nfe"),
    ("sample --nfe many", "argument --nfe"),
    ("sample --seed -1", "argument --seed"),
    ("sample --seed 18446744073709551616", "argument --seed"),
    ("sample --model nope", "argument --model: invalid choice"),
    ("sample --grid nope", "argument --grid: invalid choice"),
    ("sample --solver nope", "argument --solver: unknown solver 'nope'"),
    ("sample --solver torchdiffeq:nope", "argument --solver: unknown torchdiffeq method"),
    (
        "sample --solver torchdiffeq:rk4 --nfe 10",
        "argument --nfe: torchdiffeq:rk4 spends 4 evaluations per interval",
    ),
    (
        "sample --solver torchdiffeq:explicit_adams",
        "argument --solver: torchdiffeq:explicit_adams needs options",
    ),
    ("sample --solver rk45 --nfe 5", "argument --nfe: rk45 is adaptive"),
    ("sample --solver torchdiffeq:dopri5 --nfe 5", "argument --nfe: torchdiffeq:dopri5 is adaptive"),
    ("sample --solver rk45 --grid karras", "argument --grid: rk45 is adaptive"),
    ("sample --solver heun --rtol 1e-3", "argument --rtol: only for adaptive solvers"),
    ("sample --atol 1e-3", "argument --atol: only for adaptive solvers"),
    ("sample --max-nfe 100", "argument --max-nfe: only for adaptive solvers"),
    ("sample --solver rk45 --rtol 0", "argument --rtol: expected a positive number"),
    ("sample --solver rk45 --atol -1", "argument --atol"),
    ("sample --solver rk45 --rtol nan", "argument --rtol"),
    ("sample --solver rk45 --max-nfe 0", "argument --max-nfe"),
    ("sample --solver bdia --nfe 1", "argument --nfe: bdia needs"),
    ("sample --out x.txt", "argument --out: cannot write an image to 'x.txt'"),
    ("sample --out noext", "argument --out: cannot write an image to 'noext' (no extension)"),
    ("sample --out {dir}", "argument --out: {dir} is a folder"),
    ("sample --out {new}/s.png", "does not exist"),
    ("sample --bogus", "odediff sample: error: unrecognized arguments: --bogus"),
    *[("sample --out /proc/s.png", "argument --out: cannot write /proc/s.png")] * os.path.isdir("/proc"),
    # encode
    ("encode {missing} --out {new}.pt", "missing.png: no such file"),
    ("encode {dir} --out {new}.pt", "is a folder, not an image"),
    ("encode {text} --out {new}.pt", "notes.txt: not a readable image"),
    ("encode {png} --out {new}.png", "argument --out: {new}.png would hold a latent"),
    ("encode {png} --out {dir}", "argument --out: {dir} is a folder"),
    ("encode {png} --out {new}/z.pt", "does not exist"),
    ("encode {png} --out {new}.pt --nfe 0", "argument --nfe"),
    ("encode {png} --out {new}.pt --solver rk45 --nfe 50", "argument --nfe: rk45 is adaptive"),
    ("encode --out {new}.pt", "required: IMAGE"),
    # decode
    ("decode {z} --out {new}.png --nfe 0", "argument --nfe"),
    ("decode {z} --out {new}.png --scale 0", "argument --scale"),
    ("decode {z} --out {new}.png --scale -2", "argument --scale"),
    ("decode {z} --out {new}.png --scale 5000", "argument --scale: 1 image at scale 5000 would be"),
    ("decode {z} --out {new}.txt", "argument --out: cannot write an image"),
    ("decode {z} --out {dir}", "argument --out: {dir} is a folder"),
    ("decode {z} --out {new}.png --rtol 1e-3", "argument --rtol: only for adaptive solvers"),
    ("decode {z} --out {new}.png --solver rk45 --nfe 5", "argument --nfe: rk45 is adaptive"),
    ("decode {png} --out {new}.png", "not an odediff latent file"),
    ("decode {other} --out {new}.png", "not an odediff latent file"),
    ("decode {missing} --out {new}.png", "no such file"),
    ("decode {dir} --out {new}.png", "is a folder, not a latent file"),
    ("decode {alien} --out {new}.png", "encoded with model 'imagenet'"),
    ("decode {zx} --out {new}.png --nfe 8", "argument --nfe: {zx} holds an exact latent of bdia, 4 NFE"),
    ("decode {zx} --out {new}.png --solver belm", "argument --solver: {zx} holds an exact latent"),
    ("decode {zx} --out {new}.png --grid karras", "argument --grid: {zx} holds an exact latent"),
    # bench nfe, bench quality, demo
    ("bench nfe --noises 0", "argument --noises: expected a whole number ≥ 1, got '0'"),
    ("bench nfe --noises -1", "argument --noises"),
    ("bench nfe --noises 1000000000000", "argument --noises: 1000000000000 float64 noises need"),
    ("bench nfe --nfes 0,5", "argument --nfes"),
    ("bench nfe --nfes ,", "argument --nfes"),
    ("bench nfe --model nope", "argument --model: invalid choice"),
    ("bench nfe --out {text}", "argument --out: {text} is a file, not a folder"),
    ("bench nfe --out {text}/sub", "argument --out: cannot make folder"),
    ("bench nfe --out {new}.jpg", "argument --out: the study writes .csv, .md and .png"),
    ("bench quality --samples 1", "argument --samples: expected a whole number ≥ 2"),
    ("bench quality --nfes 0", "argument --nfes"),
    ("bench quality --out {text}", "argument --out: {text} is a file, not a folder"),
    ("demo --out {text}", "argument --out: {text} is a file, not a folder"),
    ("demo --out {text}/x", "argument --out: cannot make folder"),
    *[("demo --out /proc/x/y", "argument --out: cannot make folder /proc/x/y")] * os.path.isdir("/proc"),
    ("frobnicate", "argument COMMAND: invalid choice: 'frobnicate'"),
    ("bench", "required: STUDY"),
    ("bench frob", "argument STUDY: invalid choice"),
]


@pytest.mark.parametrize("argv, text", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments_are_one_line_errors_before_any_work(argv, text, files, monkeypatch, capsys):
    from odediff import reference
    from odediff.bench import quality, study

    def work(*args, **kwargs):
        raise AssertionError("the work started before the arguments were checked")

    for mod, name in ((odediff, "sample"), (odediff, "encode"), (odediff, "decode")):
        monkeypatch.setattr(mod, name, work)
    monkeypatch.setattr(study, "nfe_error_study", work)
    monkeypatch.setattr(reference, "reference_solve", work)
    monkeypatch.setattr(quality, "quality_study", work)
    argv = [a.format(**files) for a in argv.split()]
    words = ("demo", "sample", "encode", "decode", "bench", "nfe", "quality")
    cmd = " ".join(a for a in argv[:2] if a in words)
    capsys.readouterr()
    assert main(argv) == 2
    one_line_error(capsys, text.format(**files), prefix=f"odediff {cmd}".strip())
    assert "Traceback" not in capsys.readouterr().err
