"""The odediff command: sample, encode → decode round trips through files, errors as one line."""

import matplotlib.image
import numpy as np
import pytest
import torch

import odediff
from odediff.cli import main, read_image, write_image
from odediff.zoo import load
from odediff.zoo.digits import load_data


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


def one_line_error(capsys, text):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert text in err
    return err


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "sample", "encode", "decode", "bench"):
        assert cmd in out
    with pytest.raises(SystemExit) as e:
        main(["encode", "--help"])
    assert e.value.code == 0 and "--solver" in capsys.readouterr().out


def test_sample_writes_an_image(tmp_path):
    out = tmp_path / "s.png"
    assert main(["sample", "--n", "1", "--nfe", "5", "--out", str(out)]) == 0
    assert read_png(out).shape == (32, 32)  # one 8×8 sample, no border, 4× pixels


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
    d = torch.load(z, weights_only=True)
    assert d["model"] == "digits" and d["solver"] == "euler" and d["nfe"] == 20
    assert d["latent"].shape == (1, 1, 8, 8)
    assert main(["decode", str(z), "--out", str(back)]) == 0
    assert "euler, 20 NFE" in capsys.readouterr().out  # the file's settings by default

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


def test_bad_paths_are_one_line_errors(tmp_path, digit_png, capsys):
    assert main(["encode", str(tmp_path / "missing.png"), "--out", str(tmp_path / "z.pt")]) == 2
    one_line_error(capsys, "missing.png: no such file")
    assert main(["decode", str(digit_png), "--out", str(tmp_path / "x.png")]) == 2
    one_line_error(capsys, "not an odediff latent file")
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    assert main(["decode", str(tmp_path / "other.pt"), "--out", str(tmp_path / "x.png")]) == 2
    one_line_error(capsys, "not an odediff latent file")
    assert main(["encode", str(digit_png), "--out", str(tmp_path / "no" / "z.pt")]) == 2
    one_line_error(capsys, "does not exist")
    assert main(["sample", "--n", "1", "--solver", "nope", "--out", str(tmp_path / "s.png")]) == 2
    one_line_error(capsys, "unknown solver")
    assert main(["bench", "nfe", "--model", "nope", "--out", str(tmp_path / "b")]) == 2
    one_line_error(capsys, "odediff bench nfe: error:")
    assert main(["bench", "quality", "--samples", "1", "--out", str(tmp_path / "q")]) == 2
    one_line_error(capsys, "odediff bench quality: error:")


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["encode", "x.png", "--out", "z.pt", "--nfe", "many"])
    assert e.value.code == 2
    one_line_error(capsys, "invalid int value")
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
