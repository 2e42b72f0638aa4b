"""The absc command line, called in-process through cli.main, plus one installed-script smoke test."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from absnet.cli import main

GOOD = "network N { input [4]  Linear(3) ReLU() Linear(2) }\n"


def test_check_ok_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.absnet"
    good.write_text(GOOD)
    bad = tmp_path / "bad.absnet"
    bad.write_text("network N {\n  input [4]\n  Linaer(3)\n}\n")
    assert main(["check", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["check", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3:3: error[E201]" in err and "did you mean 'Linear'?" in err


def test_every_zoo_file_checks_clean(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in (Path(__file__).parents[1] / "models").glob("*.absnet"))
    assert len(files) >= 4
    assert main(["check", *files]) == 0


def test_bad_command_line_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert main(["check"]) == 2


def test_ops_prints_the_support_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    assert "MaxPool2d" in out and "CorrMaxPool2D" in out and "zonotope" in out


def test_show_ir_with_domain_and_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "n.absnet"
    f.write_text(GOOD)
    assert main(["show", "ir", str(f), "--domain", "ZNIPS()"]) == 0
    out = capsys.readouterr().out
    assert "Linear(%n0)" in out and "generators=" in out and "GiB" in out


def test_bounds_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "n.absnet"
    f.write_text(GOOD)
    assert main(["bounds", str(f), "-d", "Box()", "-d", "HBox()", "--eps", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "Box()" in out and "HBox()" in out


def test_missing_file_is_an_input_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "/nonexistent/x.absnet"]) == 1
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("absc") is None, reason="absc is not installed on PATH (run via make test)")
def test_installed_absc_runs() -> None:
    r = subprocess.run(["absc", "version", "--full"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("absnet ")
