"""CROWN-IBP training of a small CNN on full MNIST at eps = 0.3 on the CPU, certified with CROWN-IBP.

Runs the train block ``CROWN_IBP_MNIST_CPU`` of ``specs/crown_ibp.absnet`` (CROWN-IBP's cnn_2layer
width 2, 66 epochs, trained at eps 0.4 ramped over epochs 2-21, goal ``CROWN_IBP(beta=Lin(1, 0, 3,
1))``: the CROWN pass runs in epochs 2-4, the other epochs train on IBP's margin alone, as CROWN-IBP's
final-beta = 0 runs do) on ``--threads`` CPU threads, then evaluates on the 10,000 test images at
eps = 0.3 with CROWN-IBP's bound at beta = 1 (``CROWN_IBP()``) and at the final beta = 0, IBP's
bound with the specification folded into the last layer (``CROWN_IBP(beta=0)``), the certificate
CROWN-IBP reports for such runs. On a machine whose cores are busy with other work, ``--threads 1``
is several times faster than 2 (torch's worker threads wait on each other). It prints certified and
clean accuracy, the epochs, the training wall and CPU time, and the mean epoch time with and
without the CROWN pass. Target: >= 85% certified accuracy at the final beta.

    python benchmarks/train_crown_ibp.py --data-dir ../shared/data --threads 1   # the full benchmark
    python benchmarks/train_crown_ibp.py --epochs 2 --test-size 1000   # a quick look
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

TARGET = 0.85


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train", default="CROWN_IBP_MNIST_CPU", help="the train block of specs/crown_ibp.absnet")
    p.add_argument("--epochs", type=int, help="override the spec's epochs")
    p.add_argument("--test-size", type=int, help="evaluate on the first N test images (default all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more spec overrides")
    p.add_argument("--data-dir", help="MNIST folder root (default $ABSNET_DATA, then the cache)")
    p.add_argument("--out", help="run folder root (default a temporary folder)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    spec = ROOT / "specs" / "crown_ibp.absnet"
    sets = ["test_every=0", *a.set]
    if a.epochs:
        sets.append(f"epochs={a.epochs}")
    if a.test_size:
        sets.append(f"data.test_size={a.test_size}")
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="absnet-bench-"))
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    cfg = build_config(spec.read_text(), a.train, file=str(spec), overrides=sets)
    trainer = Trainer(cfg, TrainOptions(out=out, data_dir=a.data_dir, progress=False, plots=False, log=log))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    summary = trainer.run_all()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    records = [r for r in trainer.metrics.records() if r.get("kind") == "train"]
    train_time = sum(r["epoch_time"] for r in records)
    # epochs whose goal runs the CROWN pass (eps > 0 and beta > 0 somewhere in the epoch) vs the others
    beta = getattr(cfg.goal, "beta", None)
    crown = [r for r in records if beta is not None and r["epsilon"] > 0
             and any(beta.value(r["epoch"] - 1 + k / 8) > 1e-5 for k in range(1, 9))]
    ibp = [r for r in records if r["epsilon"] > 0 and r not in crown]
    mean = lambda rs: sum(r["epoch_time"] for r in rs) / len(rs) if rs else float("nan")  # noqa: E731
    reports = trainer.last_reports
    test_time = sum(r.time for r in reports)
    print(f"{cfg.network}{dict(cfg.network_args)}, MNIST, train eps {cfg.epsilon}, test eps {cfg.test_epsilon:g}, "
          f"goal {cfg.goal}, {len(records)} epochs, {a.threads} threads, torch {torch.__version__}")
    print(format_table(reports))
    by_goal = {r.goal: r for r in reports}
    cert = by_goal.get("CROWN_IBP()", reports[0])
    ibp_cert = by_goal.get("CROWN_IBP(beta=0)")
    print(f"training: {train_time / 60:.1f} min wall for {len(records)} epochs "
          f"(mean epoch {mean(crown):.0f}s with the CROWN pass x{len(crown)}, {mean(ibp):.0f}s IBP only x{len(ibp)}, "
          f"the rest natural); "
          f"tests {test_time:.0f}s; total {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU")
    print(f"clean accuracy: {100 * cert.clean:.2f}%")
    if ibp_cert is not None:
        print(f"IBP-certified accuracy: {100 * ibp_cert.safe:.2f}%")
    print(f"CROWN-IBP bound (beta = 1) certified accuracy: {100 * cert.safe:.2f}%")
    final = cert if beta is None or beta.value(float(len(records))) > 1e-5 else (ibp_cert or cert)
    print(f"certified accuracy at the final beta ({final.goal}): {100 * final.safe:.2f}% "
          f"(target >= {100 * TARGET:.0f}%: {'met' if final.safe >= TARGET else 'NOT met'})")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "reports": [r.to_json() for r in reports], "epochs": len(records), "train_time_s": train_time,
            "wall_s": wall, "cpu_s": cpu, "crown_epoch_s": mean(crown), "ibp_epoch_s": mean(ibp),
            "run_dir": summary["run_dir"], "settings": sets,
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
