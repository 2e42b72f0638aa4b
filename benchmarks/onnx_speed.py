"""Bounds per second of the ONNX analysis graph in onnxruntime vs the torch backend, on the CPU.

    python benchmarks/onnx_speed.py [--models FFNN,ConvSmall,ConvBig] [--domains Box,HBox,CROWN_IBP]
                                    [--batch 64] [--repeat 5] [--threads 1]

For each model of ``--file`` (default models/diffai.absnet, MNIST sizes) and each analysis, the graph
is exported once, planned for the batch (``plan_batch``; its size in nodes and bytes is printed), then onnxruntime and
``net.bounds`` (eval mode, no gradients) are timed in interleaved rounds on the same batch; the
median of ``--repeat`` rounds is reported as examples bounded per second and the ratio ORT / torch,
so both sides see the same machine load. Analyses whose estimated memory exceeds ``--budget-gib``
are skipped. Also checks that the two agree (max relative difference).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import absnet
from absnet.backends.onnx.export import export_onnx, graph_stats, run_onnx, session

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", default=str(ROOT / "models" / "diffai.absnet"))
    p.add_argument("--models", default="FFNN,ConvSmall,ConvBig")
    p.add_argument("--domains", default="Box,HBox,ZNIPS,CROWN_IBP,CROWN")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget-gib", type=float, default=4.0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    import onnxruntime as ort

    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {a.threads} thread(s), batch {a.batch}, "
          f"eps {a.eps}, median of {a.repeat}")
    print(f"{'model':<10}{'analysis':<13}{'nodes':>7}{'bytes':>12}{'ORT ex/s':>11}{'torch ex/s':>12}"
          f"{'ORT/torch':>10}{'max rel diff':>14}")
    for name in a.models.split(","):
        net = absnet.compile_file(a.file, name, seed=0).eval()
        x = torch.rand((a.batch, *net.input_shape), generator=torch.Generator().manual_seed(0))
        for d in (d if d.endswith(")") else d + "()" for d in a.domains.split(",")):
            need = net.bytes_per_example(d) * a.batch / 2**30
            if need > a.budget_gib:
                print(f"{name:<10}{d:<13}  skipped: needs about {need:.1f} GiB (--budget-gib {a.budget_gib})")
                continue
            model = export_onnx(net, domain=d, plan_batch=a.batch)
            stats = graph_stats(model)
            sess = session(model, threads=a.threads)
            t_ort, t_torch = [], []
            run_onnx(sess, input=x, epsilon=a.eps)  # warm-up: onnxruntime plans its memory on the first run
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                out = run_onnx(sess, input=x, epsilon=a.eps)
                t1 = time.perf_counter()
                with torch.no_grad():
                    lo, hi = net.bounds(x, a.eps, domain=d)
                t_torch.append(time.perf_counter() - t1)
                t_ort.append(t1 - t0)
            diff = max(float(np.max(np.abs(out[k] - t.numpy()) / np.maximum(1.0, np.abs(t.numpy()))))
                       for k, t in (("lower", lo), ("upper", hi)))
            ort_rate, torch_rate = a.batch / statistics.median(t_ort), a.batch / statistics.median(t_torch)
            print(f"{name:<10}{d:<13}{stats['nodes']:>7}{stats['bytes']:>12,}{ort_rate:>11.1f}{torch_rate:>12.1f}"
                  f"{ort_rate / torch_rate:>10.2f}{diff:>14.1e}", flush=True)


if __name__ == "__main__":
    main()
