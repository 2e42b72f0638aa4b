"""``absc verify``: give every test example a verdict (certified / falsified / unknown) with a cascade.

Rules:

- The first positional is dispatched by what it names: a folder is a run of ``absc train`` (its
  ``spec.absnet``, the train block and ``--set`` options of its ``resolved.json``, and
  ``checkpoints/last`` unless ``--checkpoint`` says otherwise); a ``.onnx`` file, or any network
  followed by a second positional (a ``.vnnlib`` property), goes to the property path
  (:mod:`absnet.verify.property_commands`: VNN-COMP-style verdicts); anything else is a
  ``.absnet`` spec with a train block, verified with ``--checkpoint`` (as ``absc test``).
  ``--instances CSV`` (no positionals) verifies a VNN-COMP benchmark's instances.
- Epsilon, seed, limit and batch default to the train block's ``test_epsilon``, ``seed``,
  ``test_size`` and ``test_batch``. ``--analyses`` is a comma list in DSL syntax, cheapest first;
  ``--attack none`` turns the attack off. Both are checked before anything is loaded (unknown
  analysis: E201 with did-you-mean).
- stdout: a header, the table of :func:`absnet.verify.verifier.format_table`, the results path.
  stderr: one progress line per batch with the running counts.
- The JSON report (settings, summary, steps, one record per example) is written atomically after
  every example has a verdict, by default next to the checkpoint as ``<stem>.verify.json``; an
  error inside an analysis leaves no report. Counterexample points are written only when asked
  (``--save-counterexamples DIR``, a safetensors file); the JSON keeps the predicted class and the
  L∞ distance of each one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from absnet.cli import read_source
from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.verify.verifier import DEFAULT_ANALYSES, DEFAULT_ATTACK

ONNX_SUFFIXES = (".onnx",)


def split_analyses(text: str) -> list[str]:
    """Split ``"Box(), HBox(relu=\\"NIPS\\")"`` at the commas outside brackets and quotes.

    >>> split_analyses('Box(), AlphaCROWN(iters=5, lr=0.1)')
    ['Box()', 'AlphaCROWN(iters=5, lr=0.1)']
    """
    parts, cur, depth, quote = [], [], 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _target(a: argparse.Namespace) -> tuple[str, str | None, str | None, list[str]]:
    """(spec file, checkpoint, train block, overrides) for the first positional."""
    from absnet.train.commands import _overrides

    path = Path(a.target)
    if not path.is_dir():
        return str(path), a.checkpoint, a.train, _overrides(a)
    spec = path / "spec.absnet"
    if not spec.is_file():
        raise AbsnetError(Diagnostic("E604", f"{path} is a folder but not a run of absc train (no spec.absnet)",
                                     help="pass a run folder (runs/<train>-<time>) or a .absnet spec"))
    train, overrides = a.train, _overrides(a)
    resolved = path / "resolved.json"
    if resolved.is_file():
        stored = json.loads(resolved.read_text())
        train = train or stored.get("train")
        if not a.set:  # the run's own --set options, as `absc train --resume` reuses them
            overrides = [o for o in stored.get("overrides", []) if not o.startswith("epochs=")]
    checkpoint = a.checkpoint or str(path / "checkpoints" / "last.safetensors")
    return str(spec), checkpoint, train, overrides


class _Usage(Exception):
    """A bad command line found after parsing (exit 2)."""


def _usage(message: str) -> _Usage:
    return _Usage(f"absc verify: error: {message}")


def cmd_verify(a: argparse.Namespace) -> int:
    from absnet.verify import property_commands as pc

    try:
        if a.instances is not None:
            if a.target is not None or a.property is not None:
                raise _usage("--instances takes no NET or PROPERTY positionals")
            if a.counterexample or a.json:
                raise _usage("--counterexample and --json go with one property, not with --instances")
            return pc.run_instances(a)
        if a.target is None:
            raise _usage("expected a network (NET.onnx PROP.vnnlib), a spec, a run folder, or --instances CSV")
        if a.property is not None or Path(a.target).suffix.lower() in ONNX_SUFFIXES:
            if a.property is None:
                raise _usage(f"{a.target} needs its property: absc verify {a.target} PROP.vnnlib")
            return pc.run_property(a)
        if a.json == "-" or a.timeout is not None or a.counterexample or a.results:
            raise _usage("--json without a path, --timeout, --counterexample and --results go with a property")
        spec, checkpoint, train, overrides = _target(a)
        if checkpoint is None:
            raise _usage("--checkpoint is required with a spec (or pass the run folder of absc train)")
    except _Usage as e:
        print(e, file=sys.stderr)
        return 2
    return _run(a, spec, checkpoint, train, overrides)


def _run(a: argparse.Namespace, spec: str, checkpoint: str, train: str | None, overrides: list[str]) -> int:
    import torch

    import absnet
    from absnet.backends.torch.network import AbstractNetwork
    from absnet.data import Loader
    from absnet.train import distributed
    from absnet.train.commands import _default_json, load_for_test
    from absnet.train.config import build_config
    from absnet.train.rundir import json_default
    from absnet.verify.verifier import format_table, parse_attack, verify_split

    analyses = split_analyses(a.analyses)
    if not analyses:
        raise AbsnetError(Diagnostic("E206", "--analyses names no analysis", help='e.g. --analyses "Box(), CROWN()"'))
    for text in analyses:
        AbstractNetwork.analysis(text)  # E201 (did-you-mean) before anything is loaded
    attack = None if a.attack.strip().lower() == "none" else a.attack
    if attack is not None:
        parse_attack(attack)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise AbsnetError(Diagnostic("E606", "--device cuda was asked for but torch sees no CUDA device",
                                     help="use --device cpu"))
    cfg = build_config(read_source(spec), train, file=spec, overrides=overrides)
    if getattr(a, "nproc", None) not in (None, 1):  # split the examples across N local processes
        return distributed.launch_command(a)
    job, a.device = distributed.init_from_env(a.device)
    distributed.set_threads(a.threads, a.device)
    net, meta, split = load_for_test(cfg, checkpoint, device=a.device, data_dir=a.data_dir, offline=a.offline)
    limit = a.limit if a.limit is not None else cfg.data.test_size
    batch = a.batch or cfg.data.test_batch
    pairs = list(Loader(split, batch, shuffle=False, limit=limit, device=a.device).epoch())
    x = torch.cat([p[0] for p in pairs]) if pairs else torch.zeros((0, *net.input_shape), device=a.device)
    y = torch.cat([p[1] for p in pairs]) if pairs else torch.zeros(0, dtype=torch.long, device=a.device)
    eps = a.epsilon if a.epsilon is not None else cfg.test_epsilon
    seed = a.seed if a.seed is not None else cfg.seed

    def progress(done: int, total: int, c: Any) -> None:
        if not a.no_progress:
            print(f"verify: {done}/{total}  certified {c['certified']}  falsified {c['falsified']}  "
                  f"unknown {c['unknown']}", file=sys.stderr, flush=True)

    report = verify_split(net, x, y, eps, analyses, attack, progress, batch=batch, seed=seed,
                          keep_counterexamples=not a.no_counterexamples)
    if not job.is_main:
        return 0
    print(f"{cfg.network} on {cfg.data.name} test ({len(report.examples)} images), checkpoint {checkpoint} "
          f"(epoch {meta.get('epoch', '?')}), epsilon {eps:g}")
    print(format_table(report))
    out = Path(a.json) if a.json else _default_json(Path(checkpoint), "verify")
    payload = report.to_json()
    payload["settings"].update({"checkpoint": str(checkpoint), "epoch": meta.get("epoch"), "spec": spec,
                                "train": cfg.name, "data": cfg.data.name, "limit": limit, "batch": batch,
                                "device": a.device, "absnet_version": absnet.__version__})
    if a.save_counterexamples:
        payload["counterexamples"] = str(_save_points(report, Path(a.save_counterexamples), out))
    _replace(out, (json.dumps(payload, indent=2, default=json_default) + "\n").encode())
    if a.save_counterexamples:
        print(f"counterexamples: {payload['counterexamples']}")
    print(f"results: {out}")
    return 0


def _save_points(report: Any, folder: Path, out: Path) -> Path:
    """Write the falsified examples' points (float64) with their indices, labels and predictions."""
    import torch
    from safetensors.torch import save

    found = [e for e in report.examples if e.verdict == "falsified" and e.counterexample is not None]
    shape = tuple(found[0].counterexample.shape) if found else ()
    tensors = {
        "indices": torch.tensor([e.index for e in found], dtype=torch.int64),
        "labels": torch.tensor([e.label for e in found], dtype=torch.int64),
        "predicted": torch.tensor([e.predicted for e in found], dtype=torch.int64),
        "points": torch.stack([e.counterexample for e in found]) if found else torch.zeros((0, *shape)),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{out.name.split('.')[0]}.counterexamples.safetensors"
    _replace(path, save({k: v.contiguous() for k, v in tensors.items()},
                            metadata={"epsilon": repr(report.epsilon), "network": report.network}))
    return path


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file and a rename, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return n


def _nonnegative(v: str) -> float:
    e = float(v)
    if not e >= 0 or e == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {v}")
    return e


def add_parsers(sub: Any) -> None:
    """Register ``verify`` on the ``absc`` sub-command parser."""
    s = sub.add_parser("verify", help="certify a checkpoint example by example: certified / falsified / unknown")
    s.add_argument("target", nargs="?", metavar="NET_SPEC_OR_RUN_DIR",
                   help="NET.onnx (with PROPERTY), a .absnet spec with a train block (with --checkpoint), "
                        "or a run folder of absc train")
    s.add_argument("property", nargs="?", metavar="PROPERTY",
                   help="a VNN-LIB property (.vnnlib) to verify on the network: unsat / sat / unknown / timeout")
    s.add_argument("--instances", metavar="CSV",
                   help="verify a VNN-COMP benchmark: lines onnx,vnnlib,timeout (paths relative to the CSV's folder)")
    s.add_argument("--results", metavar="CSV", help="with --instances: write onnx,vnnlib,verdict,seconds rows here "
                                                    "(default: stdout)")
    s.add_argument("--timeout", type=_nonnegative,
                   help="with a property: seconds per property (default 60; with --instances: the CSV's)")
    s.add_argument("--counterexample", metavar="FILE",
                   help="with a property: write the verdict there, and for sat the counterexample (VNN-COMP format)")
    s.add_argument("--network", "-n", help="with a .absnet file and a property: which network (default: the last)")
    s.add_argument("--train", "-t", help="which train block (default: the run's, else the last one in the file)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the train block, as in absc test")
    s.add_argument("--checkpoint", "-c", help="a .safetensors checkpoint (default for a run: checkpoints/last)")
    s.add_argument("--epsilon", type=_nonnegative, help="the L-infinity radius (default: the test_epsilon)")
    s.add_argument("--analyses", default=", ".join(DEFAULT_ANALYSES),
                   help=f"comma list of analyses, cheapest first (default: {', '.join(DEFAULT_ANALYSES)})")
    s.add_argument("--attack", default=DEFAULT_ATTACK,
                   help=f"attack run after the first analysis, or 'none' (default: {DEFAULT_ATTACK})")
    s.add_argument("--limit", type=_positive, help="verify the first N test images (default: the data test_size)")
    s.add_argument("--batch", type=_positive, help="examples per batch (default: the data test_batch)")
    s.add_argument("--seed", type=int, help="seed of the attack's restarts (default: the train block's seed)")
    s.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="where to write the report (default: next to the checkpoint, <stem>.verify.json); "
                        "with a property: the result as JSON, on stdout without FILE")
    s.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    s.add_argument("--data-dir", help="folder with the dataset files (default: $ABSNET_DATA, then the cache)")
    s.add_argument("--offline", action="store_true", help="never download datasets")
    s.add_argument("--threads", type=int, help="torch CPU threads")
    s.add_argument("--nproc", type=int, metavar="N", help="with a spec: split the examples across N local processes")
    s.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    points = s.add_mutually_exclusive_group()
    points.add_argument("--save-counterexamples", metavar="DIR",
                        help="write the counterexample points (float64) to DIR as .safetensors")
    points.add_argument("--no-counterexamples", action="store_true",
                        help="do not keep counterexample points in memory (the report still has class and distance)")
    s.set_defaults(fn=cmd_verify)
