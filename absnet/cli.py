"""The ``absc`` command line: check, compile, show, ops, bounds, demo, train, test, verify, version.

Exit codes: 0 ok, 1 the input has errors, 2 bad command line, 70 internal error.
Results go to stdout, progress and diagnostics to stderr.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic, did_you_mean

DEFAULT_DOMAINS = ("Box()", "HBox()", "HSwitch()", "HNIPS()", "ZNIPS()")


def _parse_args_kv(items: Sequence[str]) -> dict[str, Any]:
    """``--arg in_ch=3`` values: ints, floats, true/false, or comma lists of numbers."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"absc: error: --arg expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _value(v.strip())
    return out


def _value(v: str) -> Any:
    if v in ("true", "false"):
        return v == "true"
    if "," in v or v.startswith("["):
        return [_value(x) for x in v.strip("[]").split(",") if x.strip()]
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def _parse_analysis(text: str) -> Any:
    from absnet.frontend import parse_analysis

    return parse_analysis(text)


def read_source(path: str) -> str:
    """A file's text; E604 when it cannot be read."""
    try:
        return Path(path).read_text()
    except OSError as e:
        raise AbsnetError(Diagnostic("E604", f"cannot read {path}: {e.strerror}")) from None


def cmd_check(a: argparse.Namespace) -> int:
    from absnet.passes.pipeline import check_graph, check_text, lower

    failed = False
    for path in a.files:
        try:
            text = read_source(path)
            analyses = [_parse_analysis(t) for t in a.analysis]
            if a.network or a.arg:
                graph, sources = lower(text, file=path, network=a.network, args=_parse_args_kv(a.arg))
                diags = []
                if analyses:
                    try:
                        check_graph(graph, analyses)
                    except AbsnetError as e:
                        diags = list(e.diagnostics)
            else:
                diags, sources = check_text(text, path, analyses)
            if diags:
                raise AbsnetError(diags, sources)
            print(f"{path}: ok")
        except AbsnetError as e:
            failed = True
            print(e.render(), file=sys.stderr)
    return 1 if failed else 0


def cmd_show(a: argparse.Namespace) -> int:
    from absnet.ir.printer import print_graph
    from absnet.passes.estimate_cost import estimate
    from absnet.passes.infer_domains import InferDomains
    from absnet.passes.pipeline import lower

    graph, _ = lower(read_source(a.file), file=a.file, network=a.network, args=_parse_args_kv(a.arg))
    meta: tuple[str, ...] = ("shape",)
    if a.domain:
        from absnet.frontend import parse_analysis

        analysis = parse_analysis(a.domain)
        InferDomains(analysis, a.train).run(graph)
        report = estimate(graph, analysis, a.train)
        meta = ("shape", "domain", "generators")
        print(print_graph(graph, meta=meta))
        print(f"# {report.describe(a.batch)}")
        return 0
    print(print_graph(graph, meta=meta))
    return 0


def cmd_ops(a: argparse.Namespace) -> int:
    from absnet.ir.domains import DOMAIN_KINDS
    from absnet.ir.ops import CATALOG_LIST
    from absnet.transformers.registry import load_rules

    rules = load_rules()
    width = max(len(op.name) for op in CATALOG_LIST) + 2
    print("op".ljust(width) + "category    " + "".join(d.ljust(10) for d in DOMAIN_KINDS) + "doc")
    for op in CATALOG_LIST:
        if op.category == "input":
            continue
        marks = "".join(("yes" if (op.name, d) in rules else "-").ljust(10) for d in DOMAIN_KINDS)
        print(op.name.ljust(width) + op.category.ljust(12) + marks + op.doc)
    return 0


def cmd_bounds(a: argparse.Namespace) -> int:
    import torch

    import absnet

    net = absnet.compile_file(a.file, a.network, args=_parse_args_kv(a.arg), seed=a.seed)
    net.eval()
    g = torch.Generator().manual_seed(a.seed)
    lo, hi = net.input_range
    x = lo + (hi - lo) * torch.rand((a.batch, *net.input_shape), generator=g)
    print(_bounds_table(net, x, a.eps, a.domain or DEFAULT_DOMAINS))
    return 0


def _bounds_table(net: Any, x: Any, eps: float, domains: Sequence[str]) -> str:
    import torch

    rows = [f"{'analysis':<12}{'mean width':>14}{'max width':>14}{'time (s)':>10}"]
    with torch.no_grad():
        for d in domains:
            t0 = time.perf_counter()
            lo, up = net.bounds(x, eps, domain=d)
            dt = time.perf_counter() - t0
            w = up - lo
            rows.append(f"{d:<12}{w.mean().item():>14.4g}{w.max().item():>14.4g}{dt:>10.3f}")
    return "\n".join(rows)


def cmd_demo(a: argparse.Namespace) -> int:
    import torch

    import absnet
    from absnet import frontend
    from absnet.passes.estimate_cost import parameter_count
    from absnet.passes.pipeline import lower

    models = Path(a.models)
    files = sorted(models.glob("*.absnet"))
    if not files:
        raise AbsnetError(Diagnostic("E604", f"no .absnet files in {models}", help="pass --models DIR"))
    print(f"{'model':<28}{'file':<28}{'parameters':>14}")
    for f in files:
        text = f.read_text()
        for name in frontend.list_networks(text, file=str(f)):
            graph, _ = lower(text, file=str(f), network=name)
            print(f"{name:<28}{f.name:<28}{parameter_count(graph):>14,}")
    g = torch.Generator().manual_seed(0)
    for f, name in a.bounds_models:
        net = absnet.compile_file(models / f, name, seed=0).eval()
        x = torch.rand((4, *net.input_shape), generator=g)
        print(f"\n{name} (untrained, seed 0), 4 random inputs, eps = {a.eps}")
        print(_bounds_table(net, x, a.eps, DEFAULT_DOMAINS))
    return 0


COMPILE_TARGETS = ("onnx", "onnx-train", "export", "torchscript")


def cmd_compile(a: argparse.Namespace) -> int:
    """Compile a network to an analysis artifact (``--target onnx``: docs/onnx.md), smoke-test it, report it."""
    import torch

    import absnet
    from absnet.backends.onnx.export import export_onnx, graph_stats

    if a.target not in COMPILE_TARGETS:
        hint = did_you_mean(a.target, COMPILE_TARGETS)
        print(f"absc compile: error: unknown --target {a.target}; targets: {', '.join(COMPILE_TARGETS)}"
              + (f" ({hint})" if hint else ""), file=sys.stderr)
        return 2
    if a.emit_vnnlib and (a.target != "onnx" or a.domain.replace(" ", "") not in ("Point()", "Point")):
        print("absc compile: error: --emit-vnnlib goes with --target onnx --domain \"Point()\" (the concrete "
              "network the properties are about)", file=sys.stderr)
        return 2
    net = absnet.compile_file(a.file, a.network, args=_parse_args_kv(a.arg), seed=a.seed)
    if a.checkpoint:
        _load_weights(net, a.checkpoint)
    if a.output:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)  # -o runs/x/net.onnx creates runs/x
    if a.target == "onnx-train":
        return _compile_train_step(net, a)
    if a.target in ("export", "torchscript"):
        return _compile_torch_program(net, a)
    net.eval()
    analysis = net.analysis(a.domain)
    out = Path(a.output or f"{net.name}.{analysis.name}.onnx")
    model = export_onnx(net, out, domain=analysis, input_spec=a.input_spec, margins=a.margins, opset=a.opset,
                        plan_batch=a.plan_batch)
    with torch.no_grad():
        smoke, diff = _smoke(net, model, analysis, a)
    if diff is not None and diff > 1e-4:
        print(f"absc compile: internal error: onnxruntime and the torch backend disagree on {out} (max relative "
              f"difference {diff:.2g}); please report it with `absc version --full`", file=sys.stderr)
        return 70
    stats = graph_stats(model)
    print(f"wrote {out}")
    print(f"  network   {net.name} ({a.file}), analysis {analysis}, input spec {a.input_spec}")
    print(f"  graph     {stats['nodes']:,} nodes, {stats['initializers']:,} initializers, {stats['bytes']:,} bytes, "
          f"opset {a.opset}, batch axis N dynamic")
    print(f"  inputs    {_io(model.graph.input)}")
    print(f"  outputs   {_io(model.graph.output)}")
    print(f"  smoke     {smoke}")
    if a.emit_vnnlib:  # VNN-COMP-style properties around test images: docs/verify.md
        from absnet.verify.property_commands import emit_vnnlib

        csv_path = emit_vnnlib(net, out, a.emit_vnnlib, a.data, a.count, a.eps, data_dir=a.data_dir)
        print(f"wrote {a.count} VNN-LIB properties (eps {a.eps:g}, {a.data} test images) and {csv_path}")
    return 0


def _compile_torch_program(net: Any, a: argparse.Namespace) -> int:
    """``--target export`` (a torch.export .pt2) or ``torchscript`` (.pt): docs/export.md."""
    from absnet.backends.torch.export import compile_target

    analysis = net.analysis(a.domain)
    out = Path(a.output or f"{net.name}.{analysis.name}.{'pt2' if a.target == 'export' else 'pt'}")
    st = compile_target(net, a.target, out, analysis, a.input_spec, a.margins)
    if st["max_rel_diff"] > 1e-4:
        print(f"absc compile: internal error: the {a.target} program and the torch backend disagree on {out} (max "
              f"relative difference {st['max_rel_diff']:.2g}); please report it with `absc version --full`",
              file=sys.stderr)
        return 70
    kind = "torch.export .pt2" if a.target == "export" else "TorchScript"
    print(f"wrote {st['path']}")
    print(f"  network   {net.name} ({a.file}), analysis {st['analysis']}, input spec {a.input_spec}")
    print(f"  program   {kind}, {st['bytes']:,} bytes, batch axis N dynamic, built in {st['export_s']:.1f} s")
    print(f"  inputs    {', '.join(st['inputs'])}")
    print(f"  outputs   {', '.join(st['outputs'])}")
    print(f"  smoke     reloaded from the file, ran a random batch of 2: max relative difference to the torch "
          f"backend {st['max_rel_diff']:.1e}")
    return 0


def _compile_train_step(net: Any, a: argparse.Namespace) -> int:
    """``--target onnx-train``: the training-step graph (docs/onnx.md, "Training-step graphs")."""
    from absnet.backends.onnx.train_step import compile_train_target

    goal = a.goal or "Box()"
    out = Path(a.output or f"{net.name}.step.onnx")
    st = compile_train_target(net, out, goal=goal, optimizer=a.optimizer, eps=a.eps, seed=a.seed)
    worst = max(st["smoke_rel_diff"], st["smoke_grad_rel_diff"])
    if worst > 1e-4:
        print(f"absc compile: internal error: onnxruntime and torch disagree on the training step {out} (max "
              f"relative difference {worst:.2g}); please report it with `absc version --full`", file=sys.stderr)
        return 70

    def shapes(d: dict[str, Any], limit: int = 6) -> str:
        items = [f"{k} [{', '.join(map(str, v))}]" for k, v in d.items()]
        return ", ".join(items[:limit]) + (f", … ({len(items)} in all)" if len(items) > limit else "")

    print(f"wrote {out}")
    print(f"  network   {net.name} ({a.file}), goal {st['goal']}, optimizer {st['optimizer']}")
    print(f"  graph     {st['nodes']:,} nodes ({st['forward_nodes']:,} forward, {st['backward_nodes']:,} backward), "
          f"{st['bytes']:,} bytes, opset 17, batch axis N dynamic")
    print(f"  inputs    {shapes(st['inputs'])}")
    print(f"  outputs   {shapes(st['outputs'])}")
    print(f"  smoke     one step on a random batch of 2 (eps {a.eps:g}): loss {st['smoke_loss']:.6g} "
          f"(torch {st['smoke_loss_torch']:.6g}); max relative difference of the gradients "
          f"{st['smoke_grad_rel_diff']:.2g}")
    return 0


def _io(values: Any) -> str:
    from onnx import helper

    def dims(v: Any) -> str:
        return ", ".join(d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim)

    return ", ".join(f"{v.name} {helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)} [{dims(v)}]"
                     for v in values)


def _smoke(net: Any, model: Any, analysis: Any, a: argparse.Namespace) -> tuple[str, float | None]:
    """Run the graph in onnxruntime on 2 random inputs of its signature; the max relative difference
    to the torch backend's answer for them (None when the graph draws random numbers: then the two
    cannot agree)."""
    import numpy as np

    from absnet.backends.onnx.export import run_onnx
    from absnet.backends.torch.export import example_inputs, input_names, output_names, reference

    args = example_inputs(net, analysis, a.input_spec, a.margins, batch=2, eps=a.eps, seed=a.seed)
    got = run_onnx(model, **dict(zip(input_names(analysis, a.input_spec, a.margins), args, strict=True)))
    what = f"onnxruntime ran a random batch of 2 (eps {a.eps})"
    if any(n.op_type == "RandomUniformLike" for n in model.graph.node):
        return f"{what}; not compared: the graph draws random numbers (randomised directives)", None
    want = zip(output_names(analysis, a.margins), reference(net, analysis, a.input_spec, a.margins, args), strict=True)
    diff = max(float(np.max(np.abs(got[k] - w.numpy()) / np.maximum(1.0, np.abs(w.numpy()))))
               for k, w in want if w.dtype.is_floating_point)  # elementwise, each relative to max(1, |w|)
    return f"{what}: max relative difference to the torch backend {diff:.1e}", diff


def _load_weights(net: Any, path: str) -> None:
    """Weights from an absc train checkpoint (verified against its sidecar), or from a plain
    .safetensors file keyed like ``net.state_dict()``."""
    from absnet.train.checkpoint import load_weights

    p = Path(path)
    if p.suffix != ".safetensors" or p.with_suffix(".json").exists() or not p.exists():
        load_weights(p, net)
        return
    from safetensors.torch import load_file

    try:
        state = load_file(str(p))
    except Exception as e:
        raise AbsnetError(Diagnostic("E604", f"cannot read {p}: {e}")) from None
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        bad = sorted(set(want) ^ set(got)) + sorted(k for k in set(want) & set(got) if want[k] != got[k])
        raise AbsnetError(Diagnostic(
            "E605", f"{p} does not hold the weights of {net.name}: {len(bad)} keys are missing, extra or of "
            f"another shape (first: {bad[0]})", help="pass the checkpoint of this network (and the same --arg values)"))
    net.load_state_dict(state, strict=True)


def cmd_version(a: argparse.Namespace) -> int:
    import absnet

    print(f"absnet {absnet.__version__}")
    if a.full:
        import lark
        import networkx
        import torch

        print(f"python {platform.python_version()} ({platform.platform()})")
        print(f"torch {torch.__version__}, lark {lark.__version__}, networkx {networkx.__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="absc", description="absnet: compile and analyse provably robust networks")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="cmd", required=True)

    def net_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--network", "-n", help="which network of the file (default: the last one)")
        s.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                       help="network parameter, e.g. --arg in_ch=3 --arg size=32")

    s = sub.add_parser("check", help="check .absnet files and report every problem")
    s.add_argument("files", nargs="+")
    s.add_argument("--analysis", action="append", default=[], metavar="DOMAIN",
                   help='also check under this analysis, e.g. --analysis "CROWN()" (DiffAI\'s are always checked)')
    net_args(s)
    s.set_defaults(fn=cmd_check)

    s = sub.add_parser("compile", help="compile a network to an artifact: ONNX analysis or training-step graph, .pt2")
    s.add_argument("file")
    net_args(s)
    s.add_argument("--target", default="onnx",
                   help="artifact kind: onnx (an analysis graph), onnx-train (a training-step graph), "
                        "export (a torch.export .pt2) or torchscript (.pt)")
    s.add_argument("--goal", help="onnx-train: the training goal (default Box(); Point(), the Box/HBox/Z*, "
                                  "CROWN_IBP and linear-bound goals, their Mix/LinMix)")
    s.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd",
                   help="onnx-train: the update in the graph (torch.optim semantics; default sgd, momentum 0.9)")
    s.add_argument("--domain", "-d", default="Box()", help="the analysis, e.g. HBox() or CROWN() (default Box())")
    s.add_argument("--input-spec", choices=["ball", "box"], default="ball",
                   help="ball: inputs input and epsilon; box: input_lower and input_upper")
    s.add_argument("--margins", action="store_true", help="also a label input and margin_lower/certified outputs")
    s.add_argument("--output", "-o", help="output file (default NETWORK.ANALYSIS.onnx)")
    s.add_argument("--checkpoint", help="weights: an absc train checkpoint or a .safetensors state_dict")
    s.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    s.add_argument("--plan-batch", type=int, default=1, metavar="N",
                   help="batch size the CROWN family's back-substitution is chunked for (default 1)")
    s.add_argument("--eps", type=float, default=0.01,
                   help="epsilon of the smoke run and of --emit-vnnlib properties (default 0.01)")
    s.add_argument("--seed", type=int, default=0, help="initialisation and smoke-input seed (default 0)")
    s.add_argument("--emit-vnnlib", metavar="DIR", help="with --domain Point(): also write L-infinity robustness "
                   "properties around the first --count test images of --data, and DIR/instances.csv")
    s.add_argument("--data", default="mnist", help="--emit-vnnlib: the dataset of the test images (default mnist)")
    s.add_argument("--count", type=int, default=10, help="--emit-vnnlib: how many properties (default 10)")
    s.add_argument("--data-dir", help="--emit-vnnlib: folder with the dataset files")
    s.set_defaults(fn=cmd_compile)

    s = sub.add_parser("show", help="print a compiled network's IR")
    s.add_argument("what", choices=["ir"])
    s.add_argument("file")
    net_args(s)
    s.add_argument("--domain", help="also type the IR under this analysis and estimate its cost, e.g. HBox()")
    s.add_argument("--train", action="store_true", help="with --domain: training mode")
    s.add_argument("--batch", type=int, default=1, help="with --domain: batch size for the memory estimate")
    s.set_defaults(fn=cmd_show)

    s = sub.add_parser("ops", help="print the (op x domain) support matrix")
    s.set_defaults(fn=cmd_ops)

    s = sub.add_parser("bounds", help="bound a network's outputs on random inputs under several analyses")
    s.add_argument("file")
    net_args(s)
    s.add_argument("--domain", "-d", action="append", help=f"analysis (repeatable; default {DEFAULT_DOMAINS})")
    s.add_argument("--eps", type=float, default=0.01)
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_bounds)

    s = sub.add_parser("demo", help="compile the model zoo and print a bounds table")
    s.add_argument("--models", default=str(Path(__file__).resolve().parents[1] / "models"))
    s.add_argument("--eps", type=float, default=0.01)
    s.set_defaults(fn=cmd_demo, bounds_models=[("diffai.absnet", "FFNN"), ("diffai.absnet", "ConvSmall")])

    from absnet.train.commands import add_parsers

    add_parsers(sub)
    from absnet.verify.commands import add_parsers as add_verify_parsers

    add_verify_parsers(sub)
    from absnet.backends.onnx.commands import add_parsers as add_import_parsers

    add_import_parsers(sub)

    s = sub.add_parser("version", help="print versions")
    s.add_argument("--full", action="store_true")
    s.set_defaults(fn=cmd_version)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``absc``; return the exit code."""
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        return a.fn(a)
    except AbsnetError as e:
        print(e.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("absc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `absc ops | head`: the reader left, nothing went wrong
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception:
        if a.debug:
            traceback.print_exc()
        else:
            print("absc: internal error; please report it with the output of `absc version --full` "
                  "(rerun with --debug for the traceback)", file=sys.stderr)
        return 70
