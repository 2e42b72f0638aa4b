"""Which step of the VNN-LIB cascade settles each property, and the time per instance.

    python benchmarks/vnnlib_cascade.py [--tiny 60] [--mnist 30] [--timeout 30] [--analyses "Box(), ..."]

Two generated sets, on the CPU, one thread:
1. tiny: random ReLU networks (2–5 inputs, two hidden layers of 3–8 units, 2–3 outputs, seeded
   initial weights) with random properties: a box of radius 0.01–0.5 per input, 1–3 disjuncts of
   1–2 random rows C·y ≤ d, d chosen so that the centre violates every row by 0.01–0.5 (the centre
   is never a counterexample);
2. mnist: a 784-16-16-10 MLP trained for 300 clean Adam steps on 6,000 MNIST training images,
   with L∞ robustness properties (write_robustness → read_vnnlib) around the first test images,
   ε cycling through 0.01, 0.02, 0.03, 0.04 (skipped when ../shared/data/mnist is absent).

For every instance the whole cascade runs (``verify_property`` with the given analyses, PGD after
the first one, then input splitting with the last analysis that does not optimise slopes). The
table counts the instances each step settled (the step that gave the verdict) and their mean time;
``excluded`` sums the disjuncts each analysis excluded over all instances.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

import absnet
from absnet.verify.property import DEFAULT_ANALYSES, verify_property
from absnet.verify.vnnlib import Case, Disjunct, Property, format_property, parse_vnnlib, robustness_property

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ABSNET_DATA", ROOT / ".." / "shared" / "data")).resolve()


def tiny_set(count: int, seed: int = 0) -> list[tuple[object, Property]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n_in, n_out = int(rng.integers(2, 6)), int(rng.integers(2, 4))
        body = " ".join(f"Linear({int(rng.integers(3, 9))}) ReLU()" for _ in range(2))
        net = absnet.compile_source(f"network R {{ input [{n_in}] range [-1, 1] {body} Linear({n_out}) }}",
                                    seed=seed * 1000 + i).eval()
        centre, rad = rng.uniform(-1, 1, n_in), rng.uniform(0.1, 1.0, n_in)
        with torch.no_grad():
            yc = net(torch.tensor(centre, dtype=torch.float32).unsqueeze(0))[0].double().numpy()
        ds = []
        for _ in range(int(rng.integers(1, 4))):
            m = int(rng.integers(1, 3))
            C = rng.normal(size=(m, n_out))  # d: every row violated at the centre by 0.01–0.5
            ds.append(Disjunct(C, C @ yc - rng.uniform(0.01, 0.2, m), np.zeros(m, dtype=bool)))
        out.append((net, Property(n_in, n_out, (Case(centre - rad, centre + rad, tuple(ds)),))))
    return out


def train_mnist_mlp(hidden: int, count: int, data: Path = DATA) -> tuple[object, torch.Tensor, torch.Tensor] | None:
    """A 784-h-h-10 MLP trained for 300 clean steps on 6000 MNIST images, and the first ``count`` test
    images and labels; None when ``data`` holds no MNIST (the tests use it too)."""
    if not (data / "mnist").is_dir():
        return None
    from absnet.data import load_split

    train = load_split("mnist", "train", data_dir=data, download=False)
    test = load_split("mnist", "test", data_dir=data, download=False)
    net = absnet.compile_source(f"network M {{ input [1, 28, 28] range [0, 1] Flatten() Linear({hidden}) ReLU() "
                                f"Linear({hidden}) ReLU() Linear(10) }}", seed=0)
    x, y = train.x[:6000].float() / train.scale, train.y[:6000]
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(300):
        idx = torch.randint(0, len(y), (128,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), test.x[:count].float() / test.scale, test.y[:count]


def mnist_set(count: int) -> list[tuple[object, Property]]:
    trained = train_mnist_mlp(16, count)
    if trained is None:
        print(f"(mnist set skipped: no MNIST in {DATA / 'mnist'}; set ABSNET_DATA)")
        return []
    net, xs, ys = trained
    out = []
    for i, (xi, yi) in enumerate(zip(xs, ys)):
        eps = [0.01, 0.02, 0.03, 0.04][i % 4]
        text = format_property(robustness_property(xi.numpy(), int(yi), eps, 10))  # through the writer and reader
        out.append((net, parse_vnnlib(text, f"mnist_{i}.vnnlib")))
    return out


def settled_by(r: object) -> str:
    v, by = r.verdict, r.by  # type: ignore[attr-defined]
    if v == "unsat":
        return f"unsat: {by}"
    if v == "sat":
        return f"sat: {by}"
    return v


def run_set(name: str, items: list[tuple[object, Property]], analyses: list[str], timeout: float) -> None:
    if not items:
        return
    groups: dict[str, list[float]] = defaultdict(list)
    excluded: dict[str, int] = defaultdict(int)
    start = time.perf_counter()
    for net, prop in items:
        r = verify_property(net, prop, analyses, timeout=timeout)
        groups[settled_by(r)].append(r.time)
        for k, v in r.stats.items():
            excluded[k] += v
    total = time.perf_counter() - start
    order = [f"unsat: {a}" for a in analyses] + [k for k in sorted(groups) if k.startswith("unsat: split")] + \
        ["sat: center", "sat: pgd", "sat: split", "unknown", "timeout", "error"]
    order += [k for k in groups if k not in order]
    print(f"\n{name}: {len(items)} instances, {total:.1f} s in all, timeout {timeout:g} s per instance")
    print(f"{'settled by':<28}{'instances':>10}{'mean s':>10}{'max s':>10}")
    for k in order:
        ts = groups.get(k, [])
        print(f"{k:<28}{len(ts):>10}{(np.mean(ts) if ts else 0):>10.3f}{(max(ts) if ts else 0):>10.3f}")
    times = [t for ts in groups.values() for t in ts]
    print(f"{'all':<28}{len(times):>10}{np.mean(times):>10.3f}{max(times):>10.3f}")
    print("disjuncts excluded per analysis: " + ", ".join(f"{a} {excluded[a]}" for a in analyses)
          + f"; boxes analysed while splitting {excluded['split_boxes']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", type=int, default=60, help="random tiny instances (default 60)")
    p.add_argument("--mnist", type=int, default=30, help="MNIST robustness instances (default 30)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--analyses", default=", ".join(DEFAULT_ANALYSES))
    a = p.parse_args()
    torch.set_num_threads(1)
    from absnet.verify.commands import split_analyses

    analyses = split_analyses(a.analyses)
    run_set("tiny random networks", tiny_set(a.tiny), analyses, a.timeout)
    run_set("MNIST 784-16-16-10 robustness", mnist_set(a.mnist), analyses, a.timeout)


if __name__ == "__main__":
    main()
