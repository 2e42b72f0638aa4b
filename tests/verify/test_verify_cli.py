"""``absc verify``: spec and run-folder targets, the table, the JSON report, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from test_verifier import SOURCE, train_tiny

import absnet
from absnet.backends.torch.network import AbstractNetwork
from absnet.cli import main
from absnet.train.checkpoint import save_checkpoint

SPEC = SOURCE + """
train T {
  network Tiny
  data digits(batch=32, test_batch=25, test_size=60)
  epsilon 0.04
  test_epsilon 0.04
  goal Point()
  test HBox()
  epochs 1
  seed 3
}
"""
FAST = ["--analyses", "Box(), HBox()", "--attack", "PGD(k=5, r=2)"]
EXAMPLE_KEYS = {"index", "label", "verdict", "by", "margin", "time"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A spec with a train block and a checkpoint of a briefly trained network."""
    d = tmp_path_factory.mktemp("verify")
    spec = d / "tiny.absnet"
    spec.write_text(SPEC)
    save_checkpoint(d / "ck" / "last", train_tiny().state_dict(), {"epoch": 1})
    return spec, d / "ck" / "last.safetensors"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_a_spec_prints_the_table_and_writes_the_report(files: tuple[Path, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    spec, ck = files
    code, out, err = run(["verify", str(spec), "--checkpoint", str(ck), *FAST], capsys)
    assert code == 0, err
    assert "Tiny on digits test (60 images)" in out and "epsilon 0.04" in out
    for word in ("step", "Box()", "HBox()", "PGD(k=5, r=2)", "certified", "falsified", "unknown", "total"):
        assert word in out
    assert [line.split()[1] for line in err.splitlines()] == ["25/60", "50/60", "60/60"]
    report = ck.with_name("last.verify.json")
    assert f"results: {report}" in out
    j = json.loads(report.read_text())
    s = j["settings"]
    assert s["epsilon"] == 0.04 and s["analyses"] == ["Box()", "HBox()"] and s["attack"] == "PGD(k=5, r=2)"
    assert s["network"] == "Tiny" and s["checkpoint"] == str(ck) and s["absnet_version"] == absnet.__version__
    assert s["seed"] == 3 and s["limit"] == 60 and s["batch"] == 25 and s["epoch"] == 1
    assert len(j["examples"]) == j["summary"]["total"] == 60
    assert [e["index"] for e in j["examples"]] == list(range(60))
    counts = {v: sum(e["verdict"] == v for e in j["examples"]) for v in ("certified", "falsified", "unknown")}
    assert counts == {v: j["summary"][v] for v in counts}
    for e in j["examples"]:
        assert EXAMPLE_KEYS <= set(e) and "counterexample" not in e
        assert e["verdict"] in ("certified", "falsified", "unknown")
        if e["verdict"] == "certified":
            assert e["by"] in ("Box()", "HBox()") and e["margin"] > 0
        elif e["verdict"] == "falsified":
            assert e["by"] in ("misclassified", "attack") and e["predicted"] != e["label"]
            assert 0 <= e["distance"] <= 0.04
        else:
            assert e["by"] is None
    assert [st["name"] for st in j["stages"]] == ["clean (float64)", "Box()", "PGD(k=5, r=2)", "HBox()"]


def test_verify_a_run_folder_uses_its_spec_train_block_and_last_checkpoint(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, ck = files
    run_dir = tmp_path / "T-20250101-000000"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(spec, run_dir / "spec.absnet")
    (run_dir / "resolved.json").write_text(json.dumps({"train": "T", "overrides": ["epochs=5"]}))
    for f in ("last.safetensors", "last.json"):
        shutil.copy(ck.with_name(f), run_dir / "checkpoints" / f)
    code, _out, err = run(["verify", str(run_dir), *FAST, "--limit", "10", "--no-progress", "--epsilon", "0.01"],
                         capsys)
    assert code == 0, err
    assert err == ""
    j = json.loads((run_dir / "checkpoints" / "last.verify.json").read_text())
    assert j["settings"]["train"] == "T" and j["settings"]["epsilon"] == 0.01 and j["summary"]["total"] == 10


def test_json_path_and_saved_counterexamples(files: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    spec, ck = files
    out_json = tmp_path / "out.json"
    code, _out, err = run(["verify", str(spec), "-c", str(ck), *FAST, "--json", str(out_json),
                          "--save-counterexamples", str(tmp_path / "cex"), "--seed", "1"], capsys)
    assert code == 0, err
    j = json.loads(out_json.read_text())
    saved = load_file(j["counterexamples"])
    falsified = [e for e in j["examples"] if e["verdict"] == "falsified"]
    assert saved["indices"].tolist() == [e["index"] for e in falsified] and falsified
    assert saved["points"].dtype == torch.float64 and saved["points"].shape[1:] == (1, 8, 8)
    assert saved["predicted"].tolist() == [e["predicted"] for e in falsified]
    assert (saved["points"] >= 0).all() and (saved["points"] <= 1).all()
    assert j["settings"]["seed"] == 1


def test_attack_none_runs_only_the_analyses(files: tuple[Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    spec, ck = files
    code, _out, err = run(["verify", str(spec), "-c", str(ck), "--analyses", "Box()", "--attack", "none",
                          "--limit", "20", "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    j = json.loads((tmp_path / "r.json").read_text())
    assert j["settings"]["attack"] is None and j["summary"]["attack"] == 0
    assert [st["kind"] for st in j["stages"]] == ["clean", "analysis"]


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["--analyses", "Box(), CROWm()"], 1, "error[E201]: unknown analysis 'CROWm'"),
    (["--analyses", " , "], 1, "error[E206]"),
    (["--attack", "HBox()"], 1, "error[E206]"),
    (["--limit", "0"], 2, "positive integer"),
    (["--epsilon", "-1"], 2, "finite number"),
    (["--save-counterexamples", "d", "--no-counterexamples"], 2, "not allowed with"),
])
def test_bad_command_lines_and_inputs(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      argv: list[str], code: int, message: str) -> None:
    spec, ck = files
    out_json = tmp_path / "r.json"
    got, _out, err = run(["verify", str(spec), "-c", str(ck), "--json", str(out_json), *argv], capsys)
    assert got == code and message in err
    assert not out_json.exists()


def test_unknown_analysis_suggests_the_right_name(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    spec, ck = files
    assert run(["verify", str(spec), "-c", str(ck), "--analyses", "HBx()"], capsys)[2].count("did you mean 'HBox'")


def test_a_spec_needs_a_checkpoint_and_an_onnx_network_a_property(files: tuple[Path, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    spec, _ = files
    code, _, err = run(["verify", str(spec)], capsys)
    assert code == 2 and "--checkpoint is required" in err
    code, out, err = run(["verify", str(spec), "prop.vnnlib", "-c", "x.safetensors"], capsys)
    assert code == 1 and out.startswith("error") and "error[E604]: cannot read prop.vnnlib" in err
    onnx = tmp_path / "net.onnx"
    onnx.write_bytes(b"")
    code, _, err = run(["verify", str(onnx)], capsys)
    assert code == 2 and "needs its property" in err
    code, _, err = run(["verify", str(spec), "-c", str(tmp_path / "missing.safetensors")], capsys)
    assert code == 1 and "error[E605]" in err
    code, _, err = run(["verify", str(tmp_path)], capsys)
    assert code == 1 and "not a run of absc train" in err


def test_an_error_inside_an_analysis_exits_70_and_writes_no_report(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, ck = files
    real = AbstractNetwork.margin_lower

    def broken(self: Any, x: torch.Tensor, y: torch.Tensor, eps: Any = 0.0, domain: Any = "Box()") -> torch.Tensor:
        if str(domain) == "HBox()":
            raise RuntimeError("boom")
        return real(self, x, y, eps, domain)

    monkeypatch.setattr(AbstractNetwork, "margin_lower", broken)
    out_json = tmp_path / "never.json"
    code, out, err = run(["verify", str(spec), "-c", str(ck), *FAST, "--json", str(out_json)], capsys)
    assert code == 70 and "internal error" in err and "results:" not in out
    assert not out_json.exists() and not list(tmp_path.iterdir())
