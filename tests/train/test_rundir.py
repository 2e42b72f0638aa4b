"""Run folders: collision-free names, atomic JSON, resume checks, environment and spec copies."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from absnet.diagnostics import AbsnetError
from absnet.train.rundir import RunDir, create_run_dir, environment, open_run_dir, write_spec_copy

NOW = dt.datetime(2024, 5, 6, 7, 8, 9)


def e605(excinfo: pytest.ExceptionInfo[AbsnetError]) -> str:
    (diag,) = excinfo.value.diagnostics
    assert diag.code == "E605" and "\n" not in diag.message and diag.help
    return diag.message


def test_run_dir_names_never_collide_and_existing_folders_are_not_reused(tmp_path: Path) -> None:
    taken = tmp_path / "T-20240506-070809-2"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    runs = [create_run_dir(tmp_path, "T", now=NOW) for _ in range(3)]
    assert [r.path.name for r in runs] == ["T-20240506-070809", "T-20240506-070809-3", "T-20240506-070809-4"]
    assert all(r.checkpoints.is_dir() and r.checkpoints == r.path / "checkpoints" for r in runs)
    assert sorted(os.listdir(taken)) == ["keep.txt"]


def test_run_dir_names_are_safe_file_names(tmp_path: Path) -> None:
    assert create_run_dir(tmp_path / "new" / "root", "a b/../c", now=NOW).path.name == "a_b_.._c-20240506-070809"
    assert create_run_dir(tmp_path, "", now=NOW).path.name == "run-20240506-070809"


def test_write_json_is_atomic_pretty_and_sorted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir(tmp_path)
    run.write_json("summary.json", {"b": 1, "a": [1.5, float("inf")], "p": Path("x/y")})
    text = (tmp_path / "summary.json").read_text()
    assert text.index('"a"') < text.index('"b"') and text.startswith("{\n  ")
    assert run.read_json("summary.json") == {"a": [1.5, float("inf")], "b": 1, "p": "x/y"}

    def crash(src: str, dst: str) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        run.write_json("summary.json", {"c": 3})
    monkeypatch.undo()
    assert run.read_json("summary.json")["b"] == 1
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]


def test_read_json_reports_missing_and_corrupt_files(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(AbsnetError) as e:
        run.read_json("resolved.json")
    assert "resolved.json is missing" in e605(e)
    (tmp_path / "env.json").write_text('{"a": ')
    with pytest.raises(AbsnetError) as e:
        run.read_json("env.json")
    assert "env.json is not valid JSON" in e605(e)


def test_open_run_dir_needs_a_run_folder(tmp_path: Path) -> None:
    run = create_run_dir(tmp_path, "T", now=NOW)
    with pytest.raises(AbsnetError) as e:
        open_run_dir(run.path)
    assert "no resolved.json" in e605(e)
    run.write_json("resolved.json", {"epochs": 1})
    assert open_run_dir(str(run.path)).path == run.path
    with pytest.raises(AbsnetError) as e:
        open_run_dir(tmp_path / "missing")
    assert "no such folder" in e605(e)
    ckpt = run.checkpoints / "last.safetensors"
    ckpt.write_bytes(b"")
    with pytest.raises(AbsnetError) as e:
        open_run_dir(ckpt)
    assert "it is a file" in e605(e) and str(run.path) in e.value.diagnostics[0].help
    with pytest.raises(AbsnetError) as e:
        open_run_dir(run.checkpoints)
    assert e.value.diagnostics[0].help == f"pass --resume {run.path}"


def test_environment_records_versions_host_and_command_line() -> None:
    env = environment()
    for key in ("python", "platform", "torch", "numpy", "absnet", "cuda_available", "torch_threads", "cpu_count",
                "hostname", "argv", "start_time"):
        assert key in env, key
    json.dumps(env)
    assert dt.datetime.fromisoformat(env["start_time"]).tzinfo is not None


def test_spec_copy_makes_the_run_folder_self_contained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = create_run_dir(tmp_path / "runs", "T", now=NOW)
    outside = str(tmp_path.parent / "elsewhere" / "lib.absnet")
    imports = {"models/base.absnet": "network B {}", "../shared/x.absnet": "# x", outside: "# abs",
               str(tmp_path / "specs" / "y.absnet"): "# y"}
    write_spec_copy(run, "import \"models/base.absnet\"\n", imports)
    assert (run.path / "spec.absnet").read_text() == "import \"models/base.absnet\"\n"
    index = run.read_json("imports/index.json")
    assert index["models/base.absnet"] == "imports/models/base.absnet"
    assert index[str(tmp_path / "specs" / "y.absnet")] == "imports/specs/y.absnet"
    for original, copy in index.items():
        dest = (run.path / copy).resolve()
        assert dest.is_relative_to((run.path / "imports").resolve()), copy
        assert dest.read_text() == imports[original]
