"""End-to-end training runs on the embedded digits: run folder, exact resume, NaN stop, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from absnet.cli import main
from absnet.diagnostics import AbsnetError
from absnet.train.checkpoint import load_checkpoint
from absnet.train.config import build_config
from absnet.train.loop import Trainer, TrainOptions

ROOT = Path(__file__).resolve().parents[2]
SPEC = """
network Tiny { input [1, 8, 8] range [0, 1] Flatten() Linear(32) ReLU() Linear(10) }
train T {
  network Tiny
  data digits(batch=32, test_batch=400, train_size=320, test_size=100)
  epsilon Lin(0, 0.05, 2)
  goal LinMix(a=PGD(k=2), b=InSamp(0.5), bw=0.5)
  test PGD(k=3), HBox()
  optimizer SGD(lr=0.05, momentum=0.9, nesterov=true)
  lr_schedule MultiStep(milestones=[2])
  epochs 3
  seed 3
}
"""


def write_spec(tmp_path: Path, text: str = SPEC) -> Path:
    p = tmp_path / "spec.absnet"
    p.write_text(text)
    return p


def weights(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(run / "checkpoints" / "last.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith("layers.")}


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_train_writes_the_run_folder_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = write_spec(tmp_path)
    assert main(["train", str(spec), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Pr[Corr&Proved]" in out and "HBox" in out and "PGD(k=3)" in out
    run = only_run(tmp_path / "runs")
    for name in ("spec.absnet", "resolved.json", "env.json", "metrics.jsonl", "summary.json",
                 "checkpoints/last.safetensors", "checkpoints/last.json"):
        assert (run / name).exists(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["epoch"] for r in train] == [1, 2, 3]
    assert [r["lr"] for r in train] == pytest.approx([0.05, 0.05, 0.005])
    assert train[0]["epsilon"] == pytest.approx(0.025) and train[-1]["epsilon"] == pytest.approx(0.05)
    tests = [r for r in records if r["kind"] == "test"]
    assert [r["epoch"] for r in tests] == [1, 2, 3]
    assert 0 <= tests[-1]["test/HBox()/safe"] <= tests[-1]["test/HBox()/clean"] <= 1
    resolved = json.loads((run / "resolved.json").read_text())
    assert resolved["goal"].startswith("LinMix(a=PGD(k=2)")

    # absc test on the checkpoint reproduces the last test record
    assert main(["test", str(spec), "--checkpoint", str(run / "checkpoints" / "last.safetensors")]) == 0
    table = capsys.readouterr().out
    result = json.loads((run / "checkpoints" / "last.test.json").read_text())
    hbox = next(r for r in result["results"] if r["goal"] == "HBox()")
    assert hbox["safe"] == pytest.approx(tests[-1]["test/HBox()/safe"]) and "HBox" in table


def _train(spec: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "absnet", "train", str(spec), "--out", str(out), "--no-progress",
                             "--no-plots", "--threads", "1", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    start = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - start < timeout
        time.sleep(0.02)


SLOW_SPEC = SPEC.replace("train_size=320", "train_size=1400").replace("batch=32,", "batch=8,").replace(
    "epochs 3", "epochs 4").replace("test PGD(k=3), HBox()", "test HBox()")


@pytest.mark.parametrize("how", ["kill9", "sigint"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, how: str) -> None:
    spec = write_spec(tmp_path, SLOW_SPEC)
    ref = _train(spec, tmp_path / "ref")
    victim = _train(spec, tmp_path / "victim")
    run_dir = None
    try:
        deadline = time.monotonic() + 120
        while run_dir is None:
            dirs = [p for p in (tmp_path / "victim").glob("*") if p.is_dir()] if (tmp_path / "victim").exists() else []
            run_dir = dirs[0] if dirs else None
            assert time.monotonic() < deadline and victim.poll() is None
            time.sleep(0.02)
        _wait_for(run_dir / "checkpoints" / "last.json", victim)  # epoch 1 is done
        time.sleep(0.3)  # now somewhere inside epoch 2
        assert victim.poll() is None, "the run finished before it could be interrupted"
        victim.send_signal(signal.SIGKILL if how == "kill9" else signal.SIGINT)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert not (run_dir / "summary.json").exists()
    if how == "sigint":
        assert victim.returncode == 130
        _, meta = load_checkpoint(run_dir / "checkpoints" / "last.safetensors")
        assert meta["batch"] > 0  # saved in the middle of an epoch
    resumed = _train(spec, tmp_path / "unused", "--resume", str(run_dir))
    assert resumed.wait(timeout=300) == 0, resumed.communicate()
    assert ref.wait(timeout=300) == 0, ref.communicate()
    a, b = weights(only_run(tmp_path / "ref")), weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra = [r for r in map(json.loads, (only_run(tmp_path / "ref") / "metrics.jsonl").read_text().splitlines())]
    rb = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    assert [(r["kind"], r["epoch"]) for r in ra] == [(r["kind"], r["epoch"]) for r in rb]


def test_nonfinite_loss_stops_with_epoch_and_batch_and_keeps_the_checkpoint(tmp_path: Path, monkeypatch) -> None:
    cfg = build_config(SPEC, overrides=["test_every=1"])
    trainer = Trainer(cfg, TrainOptions(out=tmp_path, progress=False, plots=False, log=lambda s: None))
    import absnet.goals.loss as goal_loss_module

    real = goal_loss_module.goal_loss
    calls = {"n": 0}

    def poisoned(goal, ctx, x, y):
        calls["n"] += 1
        loss, info = real(goal, ctx, x, y)
        return (loss * float("nan") if calls["n"] == 13 else loss), info

    monkeypatch.setattr(goal_loss_module, "goal_loss", poisoned)
    with pytest.raises(AbsnetError, match=r"epoch 2, batch 3 of 10") as e:
        trainer.run_all()
    assert "last good checkpoint" in str(e.value) and "(epoch 1)" in str(e.value)
    _, meta = load_checkpoint(trainer.run.checkpoints / "last.safetensors")
    assert meta["epoch"] == 1 and meta["batch"] == 0


def test_bad_input_is_one_error_with_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABSNET_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    mnist = SPEC.replace("digits(batch=32, test_batch=400, train_size=320, test_size=100)", "mnist")
    spec = write_spec(tmp_path, mnist)
    assert main(["train", str(spec), "--offline", "--out", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert "mnist" in err and "ABSNET_DATA" in err and "--data-dir" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

    spec = write_spec(tmp_path, SPEC.replace("network Tiny\n", "network Tinny\n"))
    assert main(["train", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "unknown network 'Tinny'" in err and "Tiny" in err and "spec.absnet:4:" in err

    spec = write_spec(tmp_path, SPEC.replace("Lin(0, 0.05, 2)", "Lin(0, 0.05)"))
    assert main(["train", str(spec)]) == 1
    assert "Lin is missing its required argument 'steps'" in capsys.readouterr().err

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    (tmp_path / "bad.json").write_text("{}")
    spec = write_spec(tmp_path)
    assert main(["test", str(spec), "--checkpoint", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad" in err and "error[E605]" in err
