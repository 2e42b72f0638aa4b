"""Multi-process training on the CPU (gloo): 2 processes equal 1 with the doubled batch, resume,
rank-0-only files, gradient accumulation, sharded loading and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from absnet.cli import main
from absnet.data import Loader, load_split
from absnet.diagnostics import AbsnetError
from absnet.train.checkpoint import load_checkpoint
from absnet.train.config import build_config

# a deterministic goal (no attack, no sampling, no dropout, no BatchNorm): the loss of a global
# batch does not depend on how it is cut into ranks or micro-batches. 200 examples in batches of
# 32 leave a last batch of 8, so unequal parts are weighted too.
SPEC = """
network Tiny { input [1, 8, 8] range [0, 1] Flatten() Linear(16) ReLU() Linear(10) }
train T {
  network Tiny
  data digits(batch=32, test_batch=50, train_size=200, test_size=50)
  epsilon 0.05
  goal Mix(a=Point(), b=Box(), bw=0.5)
  test HBox()
  optimizer Adam(lr=0.01)
  epochs 2
  test_every 0
  seed 3
}
"""


def write_spec(tmp_path: Path) -> Path:
    p = tmp_path / "spec.absnet"
    p.write_text(SPEC)
    return p


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def weights(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith("layers.")}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def train(spec: Path, out: Path, *extra: str) -> int:
    return main(["train", str(spec), "--out", str(out), "--no-progress", "--no-plots", "--threads", "1", *extra])


def test_two_processes_equal_one_process_with_the_doubled_batch_and_resume_exactly(
        tmp_path: Path, one_thread: None) -> None:
    spec = write_spec(tmp_path)
    # reference: one process, global batch 32, epoch 1 then epoch 2 (resumed, known exact in one process)
    assert train(spec, tmp_path / "one", "--epochs", "1") == 0
    one = only_run(tmp_path / "one")
    one_epoch1 = weights(one / "checkpoints" / "last.safetensors")
    assert train(spec, tmp_path / "unused", "--resume", str(one), "--epochs", "2") == 0
    one_epoch2 = weights(one / "checkpoints" / "last.safetensors")

    # two processes of batch 16: epoch 1, then resumed (by two fresh processes) to epoch 2
    assert train(spec, tmp_path / "two", "--set", "data.batch=16", "--epochs", "1", "--nproc", "2") == 0
    two = only_run(tmp_path / "two")
    two_epoch1 = weights(two / "checkpoints" / "last.safetensors")
    meta = load_checkpoint(two / "checkpoints" / "last.safetensors")[1]
    assert (meta["world_size"], meta["global_batch"], meta["epoch"]) == (2, 32, 1)
    assert train(spec, tmp_path / "unused", "--resume", str(two), "--epochs", "2", "--nproc", "2") == 0
    two_epoch2 = weights(two / "checkpoints" / "last.safetensors")

    assert max_diff(one_epoch1, one_epoch2) > 1e-3  # the second epoch moved the weights
    assert max_diff(one_epoch1, two_epoch1) < 1e-5
    assert max_diff(one_epoch2, two_epoch2) < 1e-5
    # rank 0 alone wrote the log: one train record per epoch, and the same numbers as one process
    recs = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["kind"]) for r in recs] == [(r["epoch"], r["kind"]) for r in ref]
    for r, q in zip(recs, ref):
        if r["kind"] == "train":
            assert r["train/loss"] == pytest.approx(q["train/loss"], rel=1e-5)
            assert r["train/acc"] == q["train/acc"]
        else:
            assert r["test/HBox()/safe"] == q["test/HBox()/safe"]
    assert not list(tmp_path.glob("**/*.tmp"))


@pytest.mark.parametrize("micro", [16, 11])
def test_accumulate_2_equals_the_doubled_batch(tmp_path: Path, one_thread: None, micro: int) -> None:
    spec = write_spec(tmp_path)
    assert train(spec, tmp_path / "big", "--set", f"data.batch={2 * micro}") == 0
    assert train(spec, tmp_path / "acc", "--set", f"data.batch={micro}", "--set", "accumulate=2") == 0
    big = weights(only_run(tmp_path / "big") / "checkpoints" / "last.safetensors")
    acc = weights(only_run(tmp_path / "acc") / "checkpoints" / "last.safetensors")
    assert max_diff(big, acc) < 1e-5
    # and it is not the same as stepping on every micro-batch
    assert train(spec, tmp_path / "small", "--set", f"data.batch={micro}") == 0
    small = weights(only_run(tmp_path / "small") / "checkpoints" / "last.safetensors")
    assert max_diff(big, small) > 1e-3


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_rank_parts_of_a_global_batch_are_the_single_process_batch(augment: str) -> None:
    split = load_split("digits", "test")
    whole, parts = [], []
    for rank in (None, 0, 1, 2):
        gen = torch.Generator().manual_seed(7)
        kw = {} if rank is None else {"rank": rank, "world": 3}
        loader = Loader(split, 10, shuffle=True, generator=gen, augment=augment, limit=34, padding=1, **kw)
        batches = list(loader.epoch(start_example=4))
        (whole if rank is None else parts).append(batches)
    assert [x.shape[0] for x, _ in whole[0]] == [10, 10, 10]  # from example 4 of 34
    for i, (x, y) in enumerate(whole[0]):
        xs = torch.cat([parts[r][i][0] for r in range(3)])
        ys = torch.cat([parts[r][i][1] for r in range(3)])
        assert torch.equal(xs, x) and torch.equal(ys, y)
        assert {parts[r][i][0].shape[0] for r in range(3)} <= {3, 4}


def test_accumulate_must_be_a_positive_integer() -> None:
    with pytest.raises(AbsnetError) as e:
        build_config(SPEC, overrides=["accumulate=0"])
    assert "E206" in str(e.value.render()) and "accumulate" in e.value.render()
    assert build_config(SPEC, overrides=["accumulate=3"]).accumulate == 3
    assert "accumulate" not in build_config(SPEC).to_json()  # old runs (without the key) still resume


def test_nproc_with_the_onnxruntime_engine_is_error_e608(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = write_spec(tmp_path)
    assert train(spec, tmp_path / "x", "--nproc", "2", "--engine", "onnxruntime") == 1
    err = capsys.readouterr().err
    assert "E608" in err and "--engine torch" in err
    assert not (tmp_path / "x").exists()
    assert train(spec, tmp_path / "x", "--nproc", "0") == 1
    assert "E608" in capsys.readouterr().err


def test_a_spec_error_is_reported_before_any_worker_starts(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    spec = write_spec(tmp_path)
    assert train(spec, tmp_path / "x", "--nproc", "2", "--set", "data.batch=0") == 1
    err = capsys.readouterr().err
    assert err.count("error[E206]") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_absc_test_splits_the_test_set_and_gathers_the_same_report(tmp_path: Path, one_thread: None,
                                                                    capsys: pytest.CaptureFixture) -> None:
    spec = write_spec(tmp_path)
    assert train(spec, tmp_path / "run", "--epochs", "1") == 0
    ckpt = only_run(tmp_path / "run") / "checkpoints" / "last.safetensors"
    results = []
    for n, extra in (("1", []), ("2", ["--nproc", "2"])):
        out = tmp_path / f"r{n}.json"
        assert main(["test", str(spec), "-c", str(ckpt), "-g", "HBox()", "-g", "CROWN()", "--threads", "1",
                     "--set", "data.test_batch=7", "--json", str(out), *extra]) == 0
        results.append(json.loads(out.read_text())["results"])
    capsys.readouterr()
    for a, b in zip(*results):
        assert a["n"] == b["n"] == 50
        for key in ("clean", "safe", "proved"):
            assert a[key] == b[key]
        assert a["width"] == pytest.approx(b["width"], rel=1e-6)


def test_a_two_process_checkpoint_resumes_in_one_process_at_its_example(
        tmp_path: Path, one_thread: None, capsys: pytest.CaptureFixture) -> None:
    """Positions are examples: a checkpoint written mid-epoch by a 2-process job with global batch 32
    (its meta, faked here) resumes in one process of batch 16 at example 96 of the epoch."""
    from absnet.train.checkpoint import save_checkpoint

    spec = write_spec(tmp_path)
    assert train(spec, tmp_path / "run", "--epochs", "1", "--set", "data.batch=16") == 0
    run = only_run(tmp_path / "run")
    path = run / "checkpoints" / "last.safetensors"
    tensors, meta = load_checkpoint(path)
    meta.pop("checkpoint")
    meta.update(epoch=0, batch=3, examples=96, global_batch=32, world_size=2,
                partial={"loss": 96 * 2.0, "correct": 0, "n": 96, "seconds": 0.0})
    save_checkpoint(path, tensors, meta)
    capsys.readouterr()
    assert train(spec, tmp_path / "unused", "--resume", str(run), "--epochs", "1") == 0
    err = capsys.readouterr().err
    assert "stopped after 96 examples of epoch 1 with global batches of 32" in err
    assert "continues there with batches of 16" in err
    meta = load_checkpoint(path)[1]
    assert (meta["epoch"], meta["examples"], meta["world_size"], meta["global_batch"]) == (1, 0, 1, 16)


@pytest.mark.slow
def test_absc_verify_splits_the_examples_and_gathers_the_same_verdicts(tmp_path: Path, one_thread: None,
                                                                       capsys: pytest.CaptureFixture) -> None:
    spec = write_spec(tmp_path)
    assert train(spec, tmp_path / "run", "--epochs", "1") == 0
    ckpt = only_run(tmp_path / "run") / "checkpoints" / "last.safetensors"
    reports = []
    for n, extra in (("1", []), ("2", ["--nproc", "2"])):
        out = tmp_path / f"v{n}.json"
        assert main(["verify", str(spec), "-c", str(ckpt), "--analyses", "Box(), CROWN()", "--attack", "none",
                     "--batch", "7", "--threads", "1", "--no-progress", "--json", str(out), *extra]) == 0
        reports.append(json.loads(out.read_text()))
    capsys.readouterr()
    one, two = reports
    assert [(e["index"], e["verdict"], e["by"]) for e in one["examples"]] == \
        [(e["index"], e["verdict"], e["by"]) for e in two["examples"]]
    stages = [[(s["tried"], s["certified"]) for s in r["stages"]] for r in reports]
    assert stages[0] == stages[1]


RANDOM_SPEC = SPEC.replace("batch=32, test_batch=50, train_size=200", 'batch=4, test_batch=50, augment="flip"').replace(
    "goal Mix(a=Point(), b=Box(), bw=0.5)", "goal LinMix(a=PGD(k=2), b=InSamp(0.5), bw=0.5)").replace(
    "epochs 2", "epochs 3")


@pytest.mark.slow
def test_two_processes_stopped_by_ctrl_c_mid_epoch_resume_to_the_same_weights(tmp_path: Path) -> None:
    """Random goals, augmentation, per-rank streams: a Ctrl-C (SIGINT to the process group, as a terminal
    sends it) checkpoints mid-epoch, and the resumed 2-process run ends as the uninterrupted one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = tmp_path / "spec.absnet"
    spec.write_text(RANDOM_SPEC)
    root = Path(__file__).resolve().parents[2]
    assert train(spec, tmp_path / "ref", "--nproc", "2") == 0
    victim = subprocess.Popen([sys.executable, "-m", "absnet", "train", str(spec), "--out", str(tmp_path / "victim"),
                               "--no-progress", "--no-plots", "--threads", "1", "--nproc", "2"],
                              env=dict(os.environ, PYTHONPATH=str(root)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not list((tmp_path / "victim").glob("*/checkpoints/last.json")):  # epoch 1 is done
            assert victim.poll() is None, victim.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.5)  # inside epoch 2
        assert victim.poll() is None, "the run finished before it could be interrupted"
        os.killpg(victim.pid, signal.SIGINT)
        assert victim.wait(timeout=120) == 130, victim.communicate()
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
    run = only_run(tmp_path / "victim")
    _, meta = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert meta["batch"] > 0 and meta["world_size"] == 2  # saved in the middle of an epoch
    assert train(spec, tmp_path / "unused", "--resume", str(run), "--nproc", "2") == 0
    a = weights(only_run(tmp_path / "ref") / "checkpoints" / "last.safetensors")
    b = weights(run / "checkpoints" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sync_bn_two_processes_equal_one_process_with_batchnorm(tmp_path: Path, one_thread: None) -> None:
    """With 'sync_bn true', BatchNorm's batch statistics (and running statistics) are the global batch's, so two
    processes train exactly what one does; 193 examples leave a last global batch of 1, whose empty rank part
    still runs every pass (its collectives must meet the other rank's)."""
    text = (SPEC.replace("Linear(16) ReLU()", "Linear(16) BatchNorm1d() ReLU()")
            .replace("train_size=200", "train_size=193").replace("epochs 2", "epochs 1"))
    spec = tmp_path / "bn.absnet"
    spec.write_text(text)
    assert train(spec, tmp_path / "one") == 0
    assert train(spec, tmp_path / "sync", "--set", "data.batch=16", "--set", "sync_bn=true", "--nproc", "2") == 0
    assert train(spec, tmp_path / "own", "--set", "data.batch=16", "--nproc", "2") == 0
    one, sync, own = (weights(only_run(tmp_path / d) / "checkpoints" / "last.safetensors")
                      for d in ("one", "sync", "own"))
    assert "layers.2.running_var" in one
    assert max_diff(one, sync) < 1e-5
    assert max_diff(one, own) > 1e-4  # per-process statistics differ: the test can tell the two apart


def test_sync_bn_refuses_a_per_process_random_goal(tmp_path: Path) -> None:
    from absnet.train import distributed

    with pytest.raises(AbsnetError, match="draws a member per process") as e:
        distributed.check_sync_bn(build_config(SPEC, overrides=["goal=Coin(Point(), Box())"]).goal)
    assert e.value.diagnostics[0].code == "E608"


def test_amp_runs_attack_steps_in_bfloat16_and_bounds_in_float32(tmp_path: Path, one_thread: None) -> None:
    import absnet
    from absnet.goals.attacks import attack

    net = absnet.compile_source("network N { input [4] range [0, 1] Linear(8) ReLU() Linear(3) }")
    seen: list[torch.Tensor] = []
    net.register_forward_hook(lambda m, i, o: seen.append(o.detach().float()))
    x, y = torch.rand(5, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1])
    logits = {}
    for amp in (torch.bfloat16, None):
        seen.clear()
        xa = attack(net, x, y, 0.1, r=2.0, k=3, mu=0.0, should_end=False, amp=amp)
        assert len(seen) == 3 and xa.dtype == torch.float32
        assert float((xa - x).abs().max()) <= 0.1 + 1e-7
        logits[amp] = seen[0]
    # the first step's forward (at x itself) rounded its matmuls to bfloat16: close, not equal
    err = float((logits[torch.bfloat16] - logits[None]).abs().max() / logits[None].abs().max())
    assert 1e-5 < err < 5e-2
    spec = write_spec(tmp_path)
    goal = "goal=Mix(a=PGD(k=2), b=Box())"
    assert train(spec, tmp_path / "amp", "--epochs", "1", "--amp", "bf16", "--set", goal) == 0
    env = json.loads((only_run(tmp_path / "amp") / "env.json").read_text())
    assert env["precision"] == {"attacks_and_clean_forward": "bfloat16", "bounds_and_training_loss": "float32"}
    with pytest.raises(AbsnetError, match="--amp runs with --engine torch"):
        from absnet.train.loop import amp_dtype

        amp_dtype("bf16", "onnxruntime")
