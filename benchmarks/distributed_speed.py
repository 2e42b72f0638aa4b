"""Training throughput (examples per second) of 1 and N processes, and the scaling efficiency.

Measured in one run: for each world size, ``absc train``'s engine (TorchEngine, DDP when N > 1)
takes ``--steps`` optimiser steps on the embedded digits with the spec's goal after ``--warmup``
steps; every rank holds ``--batch`` examples per step (global batch N·B, weak scaling), and the
time of a step is the slowest rank's. On the CPU each process gets ``--threads`` threads (default
1: N processes use N cores); with ``--device cuda`` the GPU counts 1..#GPUs are measured.
Efficiency = throughput(N) / (N · throughput(1)).

    python benchmarks/distributed_speed.py                    # CPU: 1 and 2 processes
    python benchmarks/distributed_speed.py --device cuda       # GPUs: 1..all of them
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from absnet.train import distributed  # noqa: E402

SPEC = """
network Wide(hidden=512) {
  input [1, 8, 8] range [0, 1]
  Flatten()
  Linear(hidden) ReLU()
  Linear(hidden) ReLU()
  Linear(hidden) ReLU()
  Linear(10)
}
train Bench {
  network Wide
  data digits(batch=64)
  epsilon 0.05
  goal Mix(a=Point(), b=Box(), bw=0.5)
  optimizer Adam(lr=0.001)
  seed 1
}
"""


def measure(batch: int, steps: int, warmup: int, threads: int, device: str, goal: str) -> dict:
    """One worker: time ``steps`` engine steps; return the job's examples/s (rank 0's view)."""
    sys.path.insert(0, str(ROOT))
    import random

    from absnet.data import Loader, load_split
    from absnet.goals.base import GoalContext
    from absnet.train.config import build_config
    from absnet.train.engines import TorchEngine
    from absnet.train.loop import build_network

    job, device = distributed.init_from_env(device)
    torch.set_num_threads(threads)
    cfg = build_config(SPEC, overrides=[f"data.batch={batch}", f"goal={goal}"])
    net = build_network(cfg, device)
    opt = cfg.optimizer.build(net.parameters())
    engine = TorchEngine(net, opt, cfg.goal)
    split = load_split("digits", "train")
    gen = torch.Generator().manual_seed(0)
    loader = Loader(split, batch * job.world, shuffle=True, generator=gen, drop_last=True, device=device,
                    rank=job.rank, world=job.world)
    ctx = GoalContext(net=net, time=1.0, epsilon=0.05, rng=random.Random(job.rank), generator=torch.Generator())
    net.train()

    def run(k: int) -> None:
        done = 0
        while done < k:
            for x, y in loader.epoch():
                engine.step(ctx, x, y, 0.001, check=lambda v: None, total=batch * job.world)
                done += 1
                if done == k:
                    break

    run(warmup)
    distributed.barrier()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = distributed.all_reduce_max(time.perf_counter() - start)
    distributed.shutdown()
    return {"world": job.world, "seconds": seconds, "examples_per_s": steps * batch * job.world / seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--nproc", type=int, nargs="+", help="world sizes (default: 1 2 on CPU, 1..#GPUs on CUDA)")
    p.add_argument("--batch", type=int, default=64, help="examples per rank per step")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--goal", default="Mix(a=Point(), b=Box(), bw=0.5)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    if a.device.startswith("cuda"):
        sizes = a.nproc or list(range(1, torch.cuda.device_count() + 1))
    else:
        sizes = a.nproc or [1, 2]
    args = (a.batch, a.steps, a.warmup, a.threads, a.device, a.goal)
    rows = []
    for n in sizes:
        if n == 1:  # the same code path, without a process group
            rows.append(measure(*args))
        else:
            rows.append(distributed.launch(measure, args, n))
    base = rows[0]["examples_per_s"] / rows[0]["world"]
    print(f"device {a.device}, batch {a.batch} per process, {a.steps} steps, goal {a.goal}, "
          f"{a.threads} thread(s) per process, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'processes':>9}  {'examples/s':>10}  {'speed-up':>8}  {'efficiency':>10}")
    for r in rows:
        r["speedup"] = r["examples_per_s"] / rows[0]["examples_per_s"]
        r["efficiency"] = r["examples_per_s"] / (r["world"] * base)
        print(f"{r['world']:>9}  {r['examples_per_s']:>10.0f}  {r['speedup']:>7.2f}x  {100 * r['efficiency']:>9.0f}%")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
