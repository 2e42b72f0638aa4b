"""Time of ``bounds()`` per analysis relative to the concrete forward pass, measured in one run.

    python benchmarks/bounds_speed.py [--models FFNN,ConvSmall,ConvBig] [--batches 1,64] [--repeat 5]

For each model and batch size, the concrete forward and every analysis are timed in interleaved
rounds (median of ``--repeat``), on the CPU, without gradients, in eval mode. Analyses whose
estimated memory (``absc show ir --domain``) exceeds ``--budget-gib`` are skipped and the estimate is
printed instead. Target (issue: compiler core): Box ≤ 2.5× the forward pass.

    python benchmarks/bounds_speed.py --linear [--models ConvSmall,ConvBig]

times the linear-relaxation analyses instead (benchmarks/linear_bounds.py): CROWN-IBP margins
relative to IBP and the forward pass, CROWN and α-CROWN per example, and CROWN's peak memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import absnet
from absnet.frontend import parse_analysis
from absnet.passes.estimate_cost import estimate

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("Box()", "HBox()", "HSwitch()", "HSmooth()", "HNIPS()", "ZBox()", "ZSwitch()", "ZNIPS()", "ZSmooth()")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", default=str(ROOT / "models" / "diffai.absnet"))
    p.add_argument("--models", default="FFNN,ConvSmall,ConvBig")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--domains", default=",".join(DOMAINS))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--budget-gib", type=float, default=6.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--linear", action="store_true", help="time the CROWN family (benchmarks/linear_bounds.py)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.linear:
        sys.path.insert(0, str(Path(__file__).parent))
        from linear_bounds import run

        models = a.models.split(",") if a.models != "FFNN,ConvSmall,ConvBig" else ["ConvSmall", "ConvBig"]
        run(a.file, models, a.eps, a.repeat, a.threads)
        return
    domains = [d if d.endswith(")") else d + "()" for d in a.domains.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, eps={a.eps}, median of {a.repeat}")
    print(f"{'model':<10}{'batch':>6}{'analysis':>12}{'ms':>11}{'x forward':>11}")
    for name in a.models.split(","):
        net = absnet.compile_file(a.file, name, seed=0).eval()
        for batch in (int(b) for b in a.batches.split(",")):
            x = torch.rand((batch, *net.input_shape), generator=torch.Generator().manual_seed(0))
            runnable, skipped = {"forward": (lambda net=net, x=x: net(x))}, {}
            for d in domains:
                an = parse_analysis(d)
                est = estimate(net.graph.copy(), an).batch_bytes(batch) / 2**30
                if est > a.budget_gib:
                    skipped[d] = est
                else:
                    runnable[d] = (lambda d=d, net=net, x=x: net.bounds(x, a.eps, domain=d))
            times: dict[str, list[float]] = {k: [] for k in runnable}
            with torch.no_grad():
                for f in runnable.values():  # warm-up
                    f()
                for _ in range(a.repeat):
                    for k, f in runnable.items():
                        t0 = time.perf_counter()
                        f()
                        times[k].append(time.perf_counter() - t0)
            fwd = statistics.median(times["forward"])
            for k, ts in times.items():
                t = statistics.median(ts)
                print(f"{name:<10}{batch:>6}{k:>12}{t * 1e3:>11.3f}{t / fwd:>11.2f}")
            for d, est in skipped.items():
                print(f"{name:<10}{batch:>6}{d:>12}{'skipped':>11}   (estimated {est:.1f} GiB > budget)")


if __name__ == "__main__":
    main()
