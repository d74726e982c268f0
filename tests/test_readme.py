"""The README's bad-input table is what the code does: every row is run and its message checked."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import torch

import odediff
from odediff.cli import main
from odediff.zoo import load

README = Path(__file__).resolve().parents[1] / "README.md"


def rows() -> list[tuple[str, str]]:
    text = README.read_text()
    table = text.split("<!-- bad inputs -->")[1].split("<!-- /bad inputs -->")[0]
    found = re.findall(r"^\| `(.+?)` \| (.+?) \|$", table, flags=re.M)
    assert len(found) >= 20, "the README's bad-input table went missing"
    return found


@pytest.fixture(scope="module")
def namespace():
    m = load("gmm-digits")
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    z = odediff.encode(m, x, solver="belm", nfe=4)
    other = odediff.EpsModel(lambda x, t: x, m.schedule)
    return {"odediff": odediff, "torch": torch, "m": m, "x": x, "z": z, "other": other}


def expected(cell: str) -> str:
    return cell.removesuffix(" …").strip()


@pytest.mark.parametrize("call, gets", [r for r in rows() if r[0].startswith("odediff.")])
def test_api_row(namespace, call, gets):
    with pytest.raises(Exception) as e:
        eval(call, dict(namespace))
    assert f"{type(e.value).__name__}: {e.value}".startswith(expected(gets))


@pytest.mark.parametrize("call, gets", [r for r in rows() if r[0].startswith("odediff ")])
def test_cli_row(tmp_path, monkeypatch, call, gets):
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(shlex.split(call)[1:])
        except SystemExit as exit_:
            rc = exit_.code
    code, message = re.fullmatch(r"exit (\d+), stderr: (.+)", gets).groups()
    assert rc == int(code)
    assert err.getvalue().strip().splitlines()[-1].startswith(expected(message))
    assert "Traceback" not in err.getvalue()
    assert not list(tmp_path.iterdir()), "a refused command wrote a file"
