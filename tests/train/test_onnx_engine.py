"""``absc train --engine onnxruntime``: the same run as the torch engine, checkpoints shared by both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from absnet.cli import main
from absnet.diagnostics import AbsnetError
from absnet.train.checkpoint import load_checkpoint
from absnet.train.config import build_config
from absnet.train.loop import Trainer, TrainOptions

pytestmark = pytest.mark.usefixtures("one_thread_module")

SPEC = """
network Tiny { input [1, 8, 8] range [0, 1] Flatten() Linear(24) ReLU() CorrelateAll(only_train=false) Linear(10) }
train T {
  network Tiny
  data digits(batch=32, test_batch=400, train_size=256, test_size=100)
  epsilon Lin(0, 0.08, 2, 1)
  goal LinMix(a=Point(), b=Box(), bw=Lin(0, 0.8, 2, 1))
  test HBox()
  optimizer OPTIMIZER
  lr_schedule MultiStep(milestones=[2])
  GRAD_CLIP
  epochs 3
  seed 5
}
"""
OPTIMIZERS = {
    "sgd": ("SGD(lr=0.05, momentum=0.9, nesterov=true, weight_decay=0.001)", "grad_clip 0.5"),
    "adam": ("Adam(lr=0.003)", ""),
    "adamw": ("AdamW(lr=0.003, weight_decay=0.05)", "grad_clip 2.0"),
}


def spec(opt: str, goal: str | None = None) -> str:
    text = SPEC.replace("OPTIMIZER", OPTIMIZERS[opt][0]).replace("GRAD_CLIP", OPTIMIZERS[opt][1])
    return text if goal is None else text.replace("LinMix(a=Point(), b=Box(), bw=Lin(0, 0.8, 2, 1))", goal)


def run(tmp_path: Path, text: str, engine: str, name: str, *overrides: str, resume: Path | None = None) -> Trainer:
    cfg = build_config(text, overrides=list(overrides))
    trainer = Trainer(cfg, TrainOptions(out=tmp_path / name, resume=resume, engine=engine, progress=False,
                                        plots=False, log=lambda s: None))
    trainer.run_all()
    return trainer


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = max(float(b[k].abs().max()), 1e-6)
        assert float((a[k] - b[k]).abs().max()) <= tol * scale, (k, float((a[k] - b[k]).abs().max()), scale)


def moved(trainer: Trainer, text: str) -> float:
    fresh = build_config(text)
    from absnet.train.loop import build_network

    start = build_network(fresh).state_dict()
    return max(float((p.detach() - start[k]).abs().max()) for k, p in trainer.net.named_parameters())


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_onnxruntime_engine_trains_the_weights_the_torch_engine_trains(tmp_path: Path, opt: str) -> None:
    text = spec(opt)
    ort = run(tmp_path, text, "onnxruntime", "ort")
    ref = run(tmp_path, text, "torch", "torch")
    close(dict(ort.net.state_dict()), dict(ref.net.state_dict()))
    assert moved(ort, text) > 1e-2  # both trained (a run that never stepped would also "match" one that did not)
    # the optimiser state written to the checkpoint is torch's layout, with the same values
    for (p_ort, p_ref) in zip(ort.net.parameters(), ref.net.parameters()):
        s_ort, s_ref = ort.optimizer.state[p_ort], ref.optimizer.state[p_ref]
        assert s_ort.keys() == s_ref.keys()
        for k in s_ref:
            close({k: s_ort[k].float()}, {k: s_ref[k].float()}, 1e-3)
    a = [json.loads(x) for x in (ort.run.path / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (ref.run.path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["epoch"]) for r in a] == [(r["kind"], r["epoch"]) for r in b]
    for ra, rb in zip(a, b):
        if ra["kind"] == "train":
            assert ra["train/acc"] == pytest.approx(rb["train/acc"], abs=0.01)
            assert ra["train/loss"] == pytest.approx(rb["train/loss"], rel=1e-3)
        else:
            assert ra["test/HBox()/safe"] == pytest.approx(rb["test/HBox()/safe"], abs=0.02)


def test_crown_ibp_training_runs_the_same_under_both_engines(tmp_path: Path) -> None:
    """CROWN-IBP's objective (scheduled β and κ) through a conv layer: back-substitution in the step graph."""
    text = spec("sgd", "CROWN_IBP(beta=Lin(1, 0, 2, 1), kappa=Lin(1, 0.5, 2))").replace(
        "Flatten() Linear(24) ReLU() CorrelateAll(only_train=false)",
        "Conv2d(4, kernel=3, stride=2) ReLU() Flatten() Linear(24) ReLU()")
    ort = run(tmp_path, text, "onnxruntime", "ort")
    ref = run(tmp_path, text, "torch", "torch")
    close(dict(ort.net.state_dict()), dict(ref.net.state_dict()))
    assert moved(ort, text) > 1e-2


def test_adversarial_training_runs_the_same_under_both_engines(tmp_path: Path) -> None:
    """PGD inside the step graph (unrolled sign steps, input gradients by the graph's reverse mode)."""
    text = spec("adam", "LinMix(a=PGD(k=3), b=Box(), bw=Lin(0, 0.5, 2, 1))")
    ort = run(tmp_path, text, "onnxruntime", "ort", "epochs=2")
    ref = run(tmp_path, text, "torch", "torch", "epochs=2")
    close(dict(ort.net.state_dict()), dict(ref.net.state_dict()), 1e-3)
    assert moved(ort, text) > 1e-2


@pytest.mark.parametrize("first, then", [("onnxruntime", "torch"), ("torch", "onnxruntime")])
def test_a_checkpoint_of_one_engine_resumes_under_the_other(tmp_path: Path, first: str, then: str) -> None:
    text = spec("adam")
    whole = run(tmp_path, text, "onnxruntime", "whole")
    part = run(tmp_path, text, first, "part", "epochs=2")
    resumed = run(tmp_path, text, then, "unused", resume=part.run.path)
    assert resumed.epoch == 3
    tensors, _ = load_checkpoint(part.run.path / "checkpoints" / "last.safetensors")
    close({k: v for k, v in tensors.items() if k.startswith("layers.")},
          {k: v.detach() for k, v in whole.net.state_dict().items()})


def test_absc_train_engine_onnxruntime_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "spec.absnet"
    path.write_text(spec("adam"))
    assert main(["train", str(path), "--engine", "onnxruntime", "--out", str(tmp_path / "runs"), "--no-progress",
                 "--no-plots", "--epochs", "1"]) == 0
    out = capsys.readouterr()
    assert "HBox" in out.out and "engine onnxruntime: training-step graph" in out.err


@pytest.mark.parametrize("change, message", [
    (("goal=LinMix(a=Point(), b=PGD(k=2, restart=1), bw=0.5)",), "restarts from random points"),
    (("optimizer=SGD(lr=0.1)", "goal=InSamp(0.5)"), "has no training-step graph"),
])
def test_what_the_step_graph_cannot_do_is_an_e502_before_training(tmp_path: Path, change: tuple[str, ...],
                                                                   message: str) -> None:
    with pytest.raises(AbsnetError) as e:
        run(tmp_path, spec("sgd"), "onnxruntime", "x", *change)
    assert e.value.diagnostics[0].code == "E502" and message in str(e.value)
    assert not (tmp_path / "x").exists()  # nothing written


def test_batchnorm_running_statistics_move_as_under_the_torch_engine(tmp_path: Path) -> None:
    # SGD: the bias before BatchNorm has a zero gradient, which Adam turns into ±lr steps of rounding noise
    text = spec("sgd").replace("Linear(24) ReLU()", "Linear(24) BatchNorm1d() ReLU()")
    ort = run(tmp_path, text, "onnxruntime", "ort", "epochs=2")
    ref = run(tmp_path, text, "torch", "torch", "epochs=2")
    a, b = dict(ort.net.state_dict()), dict(ref.net.state_dict())
    assert "layers.2.running_mean" in a
    close(a, b)
    assert float(b["layers.2.running_var"].sub(1).abs().max()) > 1e-2  # the statistics did move


def test_an_unknown_engine_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(AbsnetError, match="did you mean 'onnxruntime'") as e:
        run(tmp_path, spec("sgd"), "onnxrt", "bad")
    assert e.value.diagnostics[0].code == "E606"


@pytest.mark.slow
def test_full_digits_run_certifies_the_same_under_both_engines(tmp_path: Path) -> None:
    """The README's main job, 40 epochs, under each engine: certified accuracy within one point."""
    text = (Path(__file__).resolve().parents[2] / "specs" / "digits.absnet").read_text()
    safe = {}
    for engine in ("onnxruntime", "torch"):
        trainer = run(tmp_path, text, engine, engine)
        safe[engine] = next(r for r in trainer.last_reports if r.goal == "HBox()").safe
    assert safe["onnxruntime"] > 0.3
    assert abs(safe["onnxruntime"] - safe["torch"]) <= 0.01, safe
