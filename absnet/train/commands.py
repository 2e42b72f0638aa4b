"""``absc train`` and ``absc test``: the command-line front of :mod:`absnet.train`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from absnet.cli import read_source


def _overrides(a: argparse.Namespace) -> list[str]:
    out = list(a.set or [])
    if getattr(a, "epochs", None) is not None:
        out.append(f"epochs={a.epochs}")
    if getattr(a, "test_size", None) is not None:
        out.append(f"data.test_size={a.test_size}")
    return out


def cmd_train(a: argparse.Namespace) -> int:
    from absnet.train import distributed
    from absnet.train.config import build_config
    from absnet.train.evaluate import format_table
    from absnet.train.loop import Interrupted, Trainer, TrainOptions

    overrides = _overrides(a)
    if a.resume and not a.set:
        resolved = Path(a.resume) / "resolved.json"
        if resolved.exists():  # reuse the run's own --set options (a missing file is reported by the trainer)
            stored = json.loads(resolved.read_text()).get("overrides", [])
            overrides = [o for o in stored if not o.startswith("epochs=")] + overrides
    cfg = build_config(read_source(a.spec), a.train, file=a.spec, overrides=overrides)
    if getattr(a, "nproc", None) not in (None, 1):  # the spec is fine: start the workers, each runs this command again
        return distributed.launch_command(a)
    job, device = distributed.init_from_env(a.device)
    opts = TrainOptions(out=Path(a.out), resume=Path(a.resume) if a.resume else None, device=device,
                        engine=a.engine, amp=a.amp, deterministic=a.deterministic, data_dir=a.data_dir,
                        download=not a.offline,
                        progress=False if a.no_progress else None, plots=not a.no_plots)
    distributed.set_threads(a.threads, device)
    trainer = Trainer(cfg, opts)
    try:
        summary = trainer.run_all()
    except Interrupted as e:
        if job.is_main:
            print(f"absc: interrupted; resume with: absc train {a.spec} --resume {e.run_dir}", file=sys.stderr)
        return 130
    if not job.is_main:
        return 0
    reports = getattr(trainer, "last_reports", [])
    print(f"run: {summary['run_dir']}")
    if reports:
        print(f"{cfg.name}: {cfg.network} on {cfg.data.name}, {trainer.epoch} epochs, goal {cfg.goal}")
        print(format_table(reports))
        if trainer.amp is not None:
            p = trainer.precision
            print(f"precision: training attacks and clean forwards in {p['attacks_and_clean_forward']}; training "
                  f"losses and every bound above (certificates, tests) in {p['bounds_and_training_loss']}")
    return 0


def cmd_test(a: argparse.Namespace) -> int:
    from absnet.data import Loader
    from absnet.goals.catalog import check_test_goal, parse_goal
    from absnet.train import distributed
    from absnet.train.config import build_config
    from absnet.train.evaluate import evaluate, format_table
    from absnet.train.loop import derive_seed

    cfg = build_config(read_source(a.spec), a.train, file=a.spec, overrides=_overrides(a))
    tests = cfg.tests
    if a.goal:
        tests = []
        for text in a.goal:
            g = parse_goal(text)
            check_test_goal(g, None)
            tests.append(g)
    if getattr(a, "nproc", None) not in (None, 1):  # the spec and goals are fine: start the workers
        return distributed.launch_command(a)
    job, device = distributed.init_from_env(a.device)
    distributed.set_threads(a.threads, device)
    net, meta, split = load_for_test(cfg, a.checkpoint, device=device, data_dir=a.data_dir, offline=a.offline)
    loader = Loader(split, cfg.data.test_batch * job.world, shuffle=False, limit=cfg.data.test_size, device=device,
                    rank=job.rank, world=job.world)  # each rank evaluates its part of every batch
    eps = a.epsilon if a.epsilon is not None else cfg.test_epsilon
    time_ = float(meta.get("time", meta.get("epoch", 0)) or 0)
    show = not a.no_progress and sys.stderr.isatty() and job.is_main

    def progress(goal: str, done: int) -> None:
        if show:
            print(f"\r{goal}: {done}/{len(split) if cfg.data.test_size is None else cfg.data.test_size}",
                  end="", file=sys.stderr, flush=True)

    seed = cfg.seed if job.rank == 0 else derive_seed(cfg.seed, 0, distributed.rank_stream("test", job.rank))
    reports = evaluate(net, tests, lambda: loader.epoch(), epsilon=eps, time_=time_, seed=seed,
                       progress=progress, gather=job.enabled)
    if not job.is_main:
        return 0
    if show:
        print(file=sys.stderr)
    print(f"{cfg.network} on {cfg.data.name} test ({reports[0].n if reports else 0} images), checkpoint "
          f"{a.checkpoint} (epoch {meta.get('epoch', '?')}), epsilon {eps:g}")
    print(format_table(reports))
    out = Path(a.json) if a.json else _default_json(Path(a.checkpoint))
    payload = {"checkpoint": str(a.checkpoint), "spec": a.spec, "train": cfg.name, "network": cfg.network,
               "data": cfg.data.name, "epsilon": eps, "results": [r.to_json() for r in reports]}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    os.replace(tmp, out)
    print(f"results: {out}")
    return 0


def load_for_test(cfg: Any, checkpoint: str | os.PathLike[str], *, device: str = "cpu", data_dir: str | None = None,
                  offline: bool = False) -> tuple[Any, dict, Any]:
    """The network of a train config with a checkpoint's weights, the checkpoint's meta, and the test split
    (checked to fit the network); shared by ``absc test`` and ``absc verify``."""
    from absnet.data import load_split
    from absnet.train.checkpoint import load_weights
    from absnet.train.loop import build_network, check_data_fits

    net = build_network(cfg, device)
    meta = load_weights(checkpoint, net)
    split = load_split(cfg.data.name, "test", data_dir=data_dir, download=not offline)
    check_data_fits(net, cfg, split.info)
    return net, meta, split


def _json_default(v: Any) -> Any:
    return None if isinstance(v, float) and v != v else str(v)


def _default_json(checkpoint: Path, kind: str = "test") -> Path:
    stem = checkpoint.name.split(".")[0]
    return checkpoint.with_name(f"{stem}.{kind}.json")


def add_parsers(sub: Any) -> None:
    """Register ``train`` and ``test`` on the ``absc`` sub-command parser."""

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("spec", help="a .absnet file with a train block")
        s.add_argument("--train", "-t", help="which train block (default: the last one in the file)")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. --set epochs=3 --set 'goal=Box()' --set data.batch=32")
        s.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
        s.add_argument("--data-dir", help="folder with the dataset files (default: $ABSNET_DATA, then the cache)")
        s.add_argument("--offline", action="store_true", help="never download datasets")
        s.add_argument("--test-size", type=int, help="evaluate on the first N test images")
        s.add_argument("--threads", type=int, help="torch CPU threads (per process)")
        s.add_argument("--nproc", type=int, metavar="N",
                       help="run N local processes (torch.distributed: gloo on CPU, NCCL with --device cuda, one GPU "
                            "each); under torchrun leave it out")
        s.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("train", help="train a network as a train block says (checkpoints, metrics, plots)")
    common(s)
    s.add_argument("--out", "-o", default="runs", help="where run folders are created (default runs/)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    s.add_argument("--epochs", type=int, help="shorthand for --set epochs=N")
    s.add_argument("--deterministic", action="store_true", help="use only deterministic torch kernels")
    s.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    s.add_argument("--amp", choices=["bf16", "fp16"],
                   help="attack steps and the clean forward in bfloat16/float16 (torch.autocast); bounds stay float32")
    s.add_argument("--engine", default="torch", metavar="ENGINE",
                   help="what runs each step: torch (default) or onnxruntime (an exported ONNX training-step graph)")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("test", help="evaluate a checkpoint: clean, attack and certified accuracy per test goal")
    common(s)
    s.add_argument("--checkpoint", "-c", required=True, help="a .safetensors checkpoint written by absc train")
    s.add_argument("--goal", "-g", action="append", help="test goal instead of the spec's (repeatable)")
    s.add_argument("--epsilon", type=float, help="the width for goals without their own w")
    s.add_argument("--json", help="where to write the results (default: next to the checkpoint)")
    s.set_defaults(fn=cmd_test)
