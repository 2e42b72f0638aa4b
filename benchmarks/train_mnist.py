"""Certified training of ConvSmall on full MNIST at eps = 0.1 on the CPU, timed against normal training.

Measured in one run, on ``--threads`` CPU threads (default 2):
1. one standard epoch (goal ``Point()``) of ConvSmall, after one warm-up epoch — the reference cost;
2. the certified-training run of ``specs/mnist_small.absnet`` (train block ``ConvSmallBox``:
   an interval (Box) goal mixed with the clean loss, epsilon ramped to 0.15, tested at 0.1);
3. the final evaluation on all 10,000 test images: clean accuracy, PGD accuracy and
   HBox-certified accuracy (margin test).

It prints the accuracies, the training wall time and the ratio (mean Box-goal epoch) / (standard
epoch). Targets: >= 93% certified accuracy within 20 minutes of training; ratio <= 3.

    python benchmarks/train_mnist.py                 # the full benchmark (about 25 minutes on 2 cores)
    python benchmarks/train_mnist.py --epochs 2 --test-size 1000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from absnet.train.config import build_config  # noqa: E402
from absnet.train.evaluate import format_table  # noqa: E402
from absnet.train.loop import Trainer, TrainOptions  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, help="override the spec's epochs")
    p.add_argument("--test-size", type=int, help="evaluate on the first N test images (default all)")
    p.add_argument("--data-dir", help="MNIST folder root (default $ABSNET_DATA, then the cache)")
    p.add_argument("--out", help="run folder root (default a temporary folder)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    spec = ROOT / "specs" / "mnist_small.absnet"
    text = spec.read_text()
    sets = [f"epochs={a.epochs}"] if a.epochs else []
    if a.test_size:
        sets.append(f"data.test_size={a.test_size}")
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="absnet-bench-"))
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    # 1. one standard epoch, same network, data and batch size
    point = build_config(text, "ConvSmallBox", file=str(spec), overrides=[*sets, "goal=Point()", "epochs=1"])
    tp = Trainer(point, TrainOptions(out=out, data_dir=a.data_dir, progress=False, plots=False, log=log))
    tp.open_run()
    tp._train_epoch(1)  # warm-up (allocator, kernels, data in cache); the second epoch is timed
    tp.epoch = 0
    tp._train_epoch(1)
    point_epoch = tp.last_train["epoch_time"]
    log(f"standard epoch: {point_epoch:.1f}s")

    # 2. the certified-training run (tests only at the end, on the whole test set)
    cfg = build_config(text, "ConvSmallBox", file=str(spec), overrides=[*sets, "test_every=0"])
    trainer = Trainer(cfg, TrainOptions(out=out, data_dir=a.data_dir, progress=False, plots=False, log=log))
    start = time.perf_counter()
    summary = trainer.run_all()
    wall = time.perf_counter() - start
    records = [r for r in trainer.metrics.records() if r.get("kind") == "train"]
    train_time = sum(r["epoch_time"] for r in records)
    box_epoch = train_time / max(len(records), 1)
    reports = trainer.last_reports
    print(f"ConvSmall, MNIST, eps = {cfg.test_epsilon:g}, goal {cfg.goal}, {len(records)} epochs, "
          f"{a.threads} threads, torch {torch.__version__}")
    print(format_table(reports))
    certified = next(r for r in reports if r.analysis not in ("point", "attack"))
    print(f"training time: {train_time / 60:.1f} min ({len(records)} epochs; wall with tests {wall / 60:.1f} min)")
    print(f"epoch time: standard {point_epoch:.1f}s, certified-training mean {box_epoch:.1f}s, "
          f"ratio {box_epoch / point_epoch:.2f} (target <= 3)")
    print(f"certified accuracy ({certified.goal}): {100 * certified.safe:.2f}% (target >= 93% within 20 min: "
          f"{'met' if certified.safe >= 0.93 and train_time <= 1200 else 'NOT met'})")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "reports": [r.to_json() for r in reports], "train_time_s": train_time, "point_epoch_s": point_epoch,
            "box_epoch_s": box_epoch, "ratio": box_epoch / point_epoch, "run_dir": summary["run_dir"],
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
