"""``absc verify NET PROP.vnnlib`` and ``absc verify --instances CSV``: VNN-COMP-style verdicts.

Rules:

- The network: a ``.onnx`` file through ``absnet.compile_onnx`` (once per file in a batch), with the
  input range set to the hull of the property's boxes (so range clamping never cuts a box); any
  other file is a ``.absnet`` network (``--network``), with ``--checkpoint`` weights (without: its
  seed-0 initial weights, said on stderr).
- One property: stdout gets the verdict (``unsat``, ``sat``, ``unknown``, ``timeout``, ``error``) on
  its first line, then how it was reached; ``--json`` prints the result as JSON instead (or writes
  it to a file); ``--counterexample FILE`` writes VNN-COMP's result file (the verdict, and for
  ``sat`` the point: ``((X_0 v) … (Y_0 v) …)``). Exit 0 for every verdict but ``error``: 1 when
  the input was at fault (a bad property: E504, a file that cannot be read), 70 for an internal error.
- ``--instances CSV``: rows ``onnx,vnnlib,timeout`` (paths relative to the CSV's folder; ``--timeout``
  overrides the third column), one verdict each, written as ``onnx,vnnlib,verdict,seconds`` rows
  to ``--results`` (else stdout), a progress line per instance on stderr; an instance that fails
  is an ``error`` row and the run goes on; exit 1 when any row is ``error``.
- ``--analyses`` as in the dataset path; ``--attack none`` turns the counterexample search off,
  else its ``k`` is the number of PGD steps and ``restart`` the number of random starts.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.verify.property import PropertyResult, format_counterexample, verify_property
from absnet.verify.vnnlib import Property, read_vnnlib

DEFAULT_TIMEOUT = 60.0


def load_network(path: str, prop: Property, a: argparse.Namespace, cache: dict[str, Any] | None = None) -> Any:
    """The network of ``path`` for ``prop`` (see the module rules), in eval mode on ``--device``. An
    ONNX network is imported once per ``cache`` (the instances of a benchmark share their networks)
    and gets each property's input range."""
    import absnet

    if Path(path).suffix.lower() == ".onnx":
        lo = min(float(c.lower.min()) for c in prop.cases) if prop.cases else 0.0
        hi = max(float(c.upper.max()) for c in prop.cases) if prop.cases else 1.0
        if not hi > lo:
            lo, hi = lo - 1.0, hi + 1.0
        if not Path(path).is_file():
            raise AbsnetError(Diagnostic("E604", f"cannot read {path}: no such file"))
        key = str(Path(path).resolve())
        net = (cache or {}).get(key)
        if net is None:
            net = absnet.compile_onnx(path, input_range=(-math.inf, math.inf))
            if cache is not None:
                cache[key] = net
        net.input_range = (lo, hi)
    else:
        from absnet.cli import _load_weights

        net = absnet.compile_file(path, getattr(a, "network", None))
        if a.checkpoint:
            _load_weights(net, a.checkpoint)
        else:
            print(f"absc verify: note: no --checkpoint: {net.name} has its seed-0 initial weights", file=sys.stderr)
    return net.to(a.device).eval()


def _options(a: argparse.Namespace) -> dict[str, Any]:
    from absnet.backends.torch.network import AbstractNetwork
    from absnet.verify.commands import split_analyses
    from absnet.verify.verifier import parse_attack

    analyses = split_analyses(a.analyses)
    for text in analyses:
        AbstractNetwork.analysis(text)  # E201 (did-you-mean) before anything is loaded
    opts: dict[str, Any] = {"analyses": analyses, "seed": a.seed or 0}
    if a.attack.strip().lower() == "none":
        opts["attack"] = False
    else:
        goal = parse_attack(a.attack)
        opts.update(steps=goal.k, restarts=max(1, goal.restart or 1))
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    return opts


def _decide(net_path: str, prop_path: str, timeout: float, a: argparse.Namespace,
            opts: dict[str, Any], cache: dict[str, Any] | None = None) -> PropertyResult:
    """The result for one instance (the property read, the network loaded, the verdict); never raises."""
    start = time.perf_counter()
    try:
        prop = read_vnnlib(prop_path)
        net = load_network(net_path, prop, a, cache)
    except AbsnetError as e:
        return PropertyResult("error", time.perf_counter() - start, message=e.render())
    except Exception as e:  # an importer crash is an error, never a verdict
        return PropertyResult("error", time.perf_counter() - start, message=f"{type(e).__name__}: {e}", internal=True)
    r = verify_property(net, prop, timeout=max(0.0, timeout - (time.perf_counter() - start)), **opts)
    r.time = time.perf_counter() - start
    return r


def run_property(a: argparse.Namespace) -> int:
    """One network, one property (see the module rules)."""
    opts = _options(a)
    timeout = a.timeout if a.timeout is not None else DEFAULT_TIMEOUT
    r = _decide(a.target, a.property, timeout, a, opts)
    payload = r.to_json()
    payload.update({"network": a.target, "property": a.property, "timeout": timeout, "analyses": opts["analyses"]})
    if a.counterexample:
        text = format_counterexample(r.x, r.y) if r.verdict == "sat" and r.x is not None else r.verdict + "\n"
        Path(a.counterexample).parent.mkdir(parents=True, exist_ok=True)
        Path(a.counterexample).write_text(text)
    if a.json == "-":
        print(json.dumps(payload, indent=2))
    else:
        print(r.verdict)
        how = f"by {r.by}" if r.by else ""
        print(f"  {a.property} on {a.target}: {how + ', ' if how else ''}{r.time:.3f} s")
        if a.json:
            Path(a.json).write_text(json.dumps(payload, indent=2) + "\n")
            print(f"results: {a.json}")
    if r.verdict == "error":
        print(f"absc verify: internal error: {r.message}" if r.internal else r.message, file=sys.stderr)
        return 70 if r.internal else 1
    return 0


def read_instances(path: str) -> list[tuple[str, str, float]]:
    """The rows (onnx, vnnlib, timeout) of a VNN-COMP ``instances.csv``; E504 for a malformed row."""
    from absnet.diagnostics import Span

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise AbsnetError(Diagnostic("E604", f"cannot read {path}: {e.strerror}")) from None
    rows = []
    for ln, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        try:
            if len(row) != 3:
                raise ValueError
            rows.append((row[0].strip(), row[1].strip(), float(row[2])))
        except ValueError:
            raise AbsnetError(Diagnostic("E504", f"expected onnx,vnnlib,timeout, got {','.join(row)!r}",
                                         Span(path, ln, 1), help="one instance per line: a.onnx,p.vnnlib,60")) from None
    return rows


def run_instances(a: argparse.Namespace) -> int:
    """Every instance of ``--instances`` (see the module rules)."""
    opts = _options(a)
    rows = read_instances(a.instances)
    root = Path(a.instances).parent
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    errors = 0
    networks: dict[str, Any] = {}
    for i, (onnx, vnnlib, limit) in enumerate(rows, 1):
        timeout = a.timeout if a.timeout is not None else limit
        r = _decide(str(root / onnx), str(root / vnnlib), timeout, a, opts, networks)
        errors += r.verdict == "error"
        writer.writerow([onnx, vnnlib, r.verdict, f"{r.time:.3f}"])
        if not a.no_progress:
            first = (r.message or "").strip().splitlines()[:1]
            print(f"verify: {i}/{len(rows)}  {onnx} {vnnlib}: {r.verdict} ({r.time:.2f} s)"
                  + (f": {first[0]}" if r.verdict == "error" and first else ""), file=sys.stderr, flush=True)
    if a.results:
        Path(a.results).parent.mkdir(parents=True, exist_ok=True)
        Path(a.results).write_text(out.getvalue())
        print(f"results: {a.results}")
    else:
        print(out.getvalue(), end="")
    return 1 if errors else 0


def emit_vnnlib(net: Any, onnx_path: str | Path, folder: str | Path, data: str, count: int, eps: float,
                timeout: float = DEFAULT_TIMEOUT, data_dir: str | None = None) -> Path:
    """Write a VNN-COMP-style benchmark around the first ``count`` test images of ``data``.

    One L∞ robustness property per image (``prop_<i>_eps_<eps>.vnnlib``: the ε-ball ∩ the network's
    input range, label = the dataset label) and ``instances.csv`` with rows
    ``<onnx relative to folder>,<property>,<timeout>``; returns the CSV's path. E601 when the
    dataset's images do not fit the network's input.
    """
    import os

    from absnet.data import load_split
    from absnet.verify.vnnlib import write_robustness

    split = load_split(data, "test", data_dir=data_dir)
    x, y = split.x[:count].double() / split.scale, split.y[:count]
    if tuple(x.shape[1:]) != tuple(net.input_shape):
        raise AbsnetError(Diagnostic("E601", f"{data} images have shape {list(x.shape[1:])}, but {net.name} takes "
                                             f"{list(net.input_shape)}", help="pass the dataset the network is for"))
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(Path(onnx_path).resolve(), out.resolve())
    lines = []
    for i, (xi, yi) in enumerate(zip(x, y)):
        name = f"prop_{i}_eps_{eps:g}.vnnlib"
        write_robustness(out / name, xi.numpy(), int(yi), eps, math.prod(net.output_shape), net.input_range)
        lines.append(f"{rel},{name},{timeout:g}\n")
    csv_path = out / "instances.csv"
    csv_path.write_text("".join(lines))
    return csv_path


__all__ = ["emit_vnnlib", "load_network", "read_instances", "run_instances", "run_property"]
