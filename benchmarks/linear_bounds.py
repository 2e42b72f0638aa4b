"""Cost of the linear-relaxation analyses, measured in one run (the CROWN section of bounds_speed).

    python benchmarks/bounds_speed.py --linear [--models ConvSmall,ConvBig] [--repeat 3]

Three tables, on the CPU, without gradients, in eval mode:
1. margins (the K−1 "true class minus other" rows) of a batch under Box() (IBP) and CROWN_IBP(),
   as multiples of the concrete forward pass; target: CROWN-IBP ≤ 2 + K forward-equivalents;
2. CROWN() and AlphaCROWN() time per example (batch 1 and a small batch; networks with more than
   20,000 ReLU inputs once, at batch 1);
3. peak memory of CROWN() margins at batch 1, measured in a fresh process (maximum resident set
   size minus the process's size after compiling the network).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import absnet

ROOT = Path(__file__).resolve().parents[1]


def _median_times(fns: dict[str, Callable[[], object]], repeat: int, warm: bool = True) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for f in fns.values() if warm else ():
            f()
        for _ in range(repeat):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def margins_table(file: str, models: list[str], batch: int, eps: float, repeat: int) -> None:
    print(f"\n1. margins of a batch of {batch}: time as multiples of the forward pass")
    print(f"{'model':<10}{'forward ms':>12}{'IBP':>8}{'CROWN-IBP':>11}{'target':>8}{'CROWN-IBP/IBP':>15}")
    for name in models:
        net = absnet.compile_file(file, name, seed=0).eval()
        k = net.output_shape[0]
        g = torch.Generator().manual_seed(0)
        x = torch.rand((batch, *net.input_shape), generator=g)
        y = torch.randint(0, k, (batch,), generator=g)
        t = _median_times({
            "forward": lambda net=net, x=x: net(x),
            "ibp": lambda net=net, x=x, y=y: net.margin_lower(x, y, eps, "Box()"),
            "crown_ibp": lambda net=net, x=x, y=y: net.margin_lower(x, y, eps, "CROWN_IBP()"),
        }, repeat)
        f = t["forward"]
        print(f"{name:<10}{f * 1e3:>12.2f}{t['ibp'] / f:>8.2f}{t['crown_ibp'] / f:>11.2f}{2 + k:>8}"
              f"{t['crown_ibp'] / t['ibp']:>15.2f}")


def per_example_table(file: str, models: list[str], batches: list[int], eps: float, repeat: int,
                      iters: int, big: int = 20000) -> None:
    """Networks with more than ``big`` ReLU inputs run once at batch 1 (full CROWN is quadratic)."""
    print(f"\n2. CROWN and AlphaCROWN(iters={iters}) margins: ms per example")
    print(f"{'model':<10}{'batch':>6}{'CROWN':>10}{'AlphaCROWN':>12}{'CROWN-IBP':>11}")
    for name in models:
        net = absnet.compile_file(file, name, seed=0).eval()
        k = net.output_shape[0]
        relus = sum(math.prod(n.meta["in_shapes"][0]) for n in net.graph.nodes() if n.op == "ReLU")
        large = relus > big
        for batch in [1] if large else batches:
            g = torch.Generator().manual_seed(1)
            x = torch.rand((batch, *net.input_shape), generator=g)
            y = torch.randint(0, k, (batch,), generator=g)
            t = _median_times({
                "crown": lambda net=net, x=x, y=y: net.margin_lower(x, y, eps, "CROWN()"),
                "alpha": lambda net=net, x=x, y=y: net.margin_lower(x, y, eps, f"AlphaCROWN(iters={iters})"),
                "crown_ibp": lambda net=net, x=x, y=y: net.margin_lower(x, y, eps, "CROWN_IBP()"),
            }, 1 if large else repeat, warm=not large)
            print(f"{name:<10}{batch:>6}{t['crown'] * 1e3 / batch:>10.1f}{t['alpha'] * 1e3 / batch:>12.1f}"
                  f"{t['crown_ibp'] * 1e3 / batch:>11.2f}")


_PEAK = """
import json, sys, torch, absnet
torch.set_num_threads(int(sys.argv[4]))
def hwm():  # VmHWM: this process's peak resident set (ru_maxrss would include the parent's, kept across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
net = absnet.compile_file(sys.argv[1], sys.argv[2], seed=0).eval()
x = torch.rand((1, *net.input_shape)); y = torch.zeros(1, dtype=torch.long)
net(x)
base = hwm()
with torch.no_grad():
    net.margin_lower(x, y, float(sys.argv[3]), "CROWN()")
peak = hwm()
print(json.dumps({"base_kib": base, "peak_kib": peak}))
"""


def peak_memory_table(file: str, models: list[str], eps: float, threads: int) -> None:
    print("\n3. peak memory of CROWN() margins, batch 1 (fresh process; resident set growth)")
    for name in models:
        out = subprocess.run([sys.executable, "-c", _PEAK, file, name, str(eps), str(threads)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:<10}{(r['peak_kib'] - r['base_kib']) / 1024:>10.0f} MiB "
              f"(process peak {r['peak_kib'] / 1024:.0f} MiB)")


def run(file: str, models: list[str], eps: float, repeat: int, threads: int, batch: int = 64,
        iters: int = 20) -> None:
    """All three tables."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, eps={eps}, median of {repeat}")
    margins_table(file, models, batch, eps, repeat)
    per_example_table(file, models, [1, 8], eps, repeat, iters)
    peak_memory_table(file, models, eps, threads)
