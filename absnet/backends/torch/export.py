"""Export a compiled network's analysis as a standalone PyTorch program (DESIGN §6, feasibility §6).

``--target export`` (primary): a ``torch.export`` ExportedProgram, saved as ``.pt2``, with a dynamic
batch axis ``N``. It loads with ``torch.export.load`` in a process that has only torch installed
(no absnet source) and computes the same bounds as ``net.bounds``. ``--target torchscript`` (legacy):
the same program, scripted (``torch.jit.script``) from the FX graph that ``torch.export`` produced;
it never uses ``torch.jit.trace``, which would freeze shape arithmetic of one batch into the program.

Both run the torch backend's own analysis (``AbstractNetwork.plan`` in eval mode, the input encoding
of ``margins.input_bounds``/``abstract_input``, the output queries ``margins.bounds``/
``margin_lower``) with :class:`ExportOps`, TorchOps whose ``shape`` reports the batch axis as the
planning batch (``plan_batch``): the rules' Python arithmetic on shapes (the CROWN chunk size,
``absnet/domains/linear.py`` ``_chunk_rows``) then stays static, while ``reshape`` and ``slice`` map
the batch marker back to the traced (symbolic) batch size.

I/O contract (the ONNX exporter's, ``absnet/backends/onnx/export.py``), positional in this order:
- ``input`` (N, *input_shape) float32 and ``epsilon`` () float32; or with ``input_spec="box"``
  ``input_lower`` and ``input_upper``; outputs (``lower``, ``upper``) (N, *output_shape);
- ``margins=True``: also ``label`` (N,) int64; outputs (``lower``, ``upper``, ``margin_lower`` (N, C),
  ``certified`` (N,) bool);
- ``Point()``: ``input`` → ``output`` (a tuple of one tensor).
AlphaCROWN and WongKolter(proj=k) (gradient steps, random projections) and randomised directives
raise E502.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from absnet.backends.onnx.export import check_exportable
from absnet.backends.torch.ops import TorchOps
from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.ir.domains import Analysis
from absnet.transformers import margins as M

TARGETS = ("export", "torchscript")
#: directives that draw random numbers in eval mode: an exported program would freeze one draw
RANDOM_OPS = ("CorrRand", "DecorrRand")


def _error(message: str, help: str | None = None) -> AbsnetError:
    return AbsnetError(Diagnostic("E502", message, help=help))


def features() -> dict[str, bool]:
    """What the installed torch offers: ``export`` (torch.export + Dim + save/load), ``torchscript``."""
    ex = getattr(torch, "export", None)
    jit = getattr(torch, "jit", None)
    return {
        "export": all(hasattr(ex, n) for n in ("export", "Dim", "save", "load")) if ex is not None else False,
        "torchscript": jit is not None and hasattr(jit, "script") and hasattr(jit, "save"),
    }


def _require(feature: str) -> None:
    if not features()[feature]:
        raise _error(f"the installed torch {torch.__version__} lacks {feature} support",
                     help="install torch ≥ 2.3 for --target export, or use --target onnx")


class _Batch(int):
    """A shape entry standing for a traced (symbolic) size; its int value is the planning batch."""

    sym: Any

    def __new__(cls, value: int, sym: Any) -> _Batch:
        obj = super().__new__(cls, value)
        obj.sym = sym
        return obj


class ExportOps(TorchOps):
    """TorchOps for tracing: symbolic sizes appear as :class:`_Batch` ints (value ``plan_batch``).

    Rules may compute with shapes in Python (chunk sizes); those computations see a static number
    instead of guarding on the symbolic batch, which torch.export would reject (or specialise).
    """

    def __init__(self, plan_batch: int = 1):
        super().__init__(None)
        self.plan_batch = plan_batch

    def shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(_Batch(self.plan_batch, d) if isinstance(d, torch.SymInt) else int(d) for d in x.shape)

    def reshape(self, x: torch.Tensor, shape: Any) -> torch.Tensor:
        return x.reshape(tuple(_unwrap(d) for d in shape))

    def slice(self, x: torch.Tensor, axis: int, start: int, end: int, step: int = 1) -> torch.Tensor:
        return super().slice(x, axis, _unwrap(start), _unwrap(end), step)

    def constant(self, value: Any, like: torch.Tensor) -> torch.Tensor:
        # numpy constants (identity matrices, masks) are float64: convert before they become program
        # constants, or the .pt2 stores them at double size and converts on every run
        if isinstance(value, np.ndarray) and like.dtype.is_floating_point:
            value = value.astype(np.dtype(str(like.dtype).removeprefix("torch.")))
        return super().constant(value, like)

    def rand_like(self, x: torch.Tensor) -> torch.Tensor:
        raise _error("a randomised directive (CorrRand, DecorrRand, Dropout in training) draws random numbers: "
                     "an exported program would freeze them", help="export a network without random directives")


def _unwrap(d: Any) -> Any:
    return d.sym if isinstance(d, _Batch) else d


class AnalysisModule(nn.Module):
    """``net``'s analysis under one domain as a module with the export I/O contract (eval mode)."""

    def __init__(self, net: Any, analysis: Analysis, input_spec: str = "ball", margins: bool = False,
                 plan_batch: int = 1):
        super().__init__()
        self.net = net
        self.analysis = analysis
        self.input_spec = input_spec
        self.margins = margins
        self.plan_batch = plan_batch
        self.classes = int(net.output_shape[0]) if margins else 0

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ops = ExportOps(self.plan_batch)
        net, a = self.net, self.analysis
        if a.kind == "point":
            return (net.propagate(args[0], a, ops=ops),)
        low, high = net.input_range
        if self.input_spec == "ball":
            lo, hi = M.input_bounds(ops, args[0], args[1], low, high)
        else:
            lo, hi = M.box_bounds(ops, args[0], args[1], low, high)
        out = net.propagate(M.abstract_input(ops, lo, hi, a), a, ops=ops)
        lower, upper = M.bounds(ops, out)
        if not self.margins:
            return lower, upper
        hit = args[2].reshape(-1, 1) == torch.arange(self.classes, device=lower.device)
        m = M.margin_lower(ops, out, hit.to(lower.dtype))
        certified = m.masked_fill(hit, math.inf).amin(dim=1) > 0
        return lower, upper, m, certified


def input_names(analysis: Analysis, input_spec: str = "ball", margins: bool = False) -> list[str]:
    """The program's inputs, in positional order."""
    if analysis.kind == "point":
        return ["input"]
    names = ["input", "epsilon"] if input_spec == "ball" else ["input_lower", "input_upper"]
    return names + (["label"] if margins else [])


def output_names(analysis: Analysis, margins: bool = False) -> list[str]:
    """The program's outputs, in order."""
    if analysis.kind == "point":
        return ["output"]
    return ["lower", "upper"] + (["margin_lower", "certified"] if margins else [])


def example_inputs(net: Any, analysis: Analysis, input_spec: str = "ball", margins: bool = False,
                   batch: int = 2, eps: float = 0.02, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the program's signature (inputs uniform in the network's input range)."""
    g = torch.Generator().manual_seed(seed)
    low, high = net.input_range
    x = low + (high - low) * torch.rand((batch, *net.input_shape), generator=g)
    if analysis.kind == "point":
        return (x,)
    if input_spec == "ball":
        out: tuple[torch.Tensor, ...] = (x, torch.tensor(eps))
    else:
        out = (x - eps, x + eps)
    if margins:
        out += (torch.randint(0, int(net.output_shape[0]), (batch,), generator=g),)
    return out


def reference(net: Any, analysis: Analysis, input_spec: str, margins: bool,
              args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The torch backend's answer for the program's inputs (``net.bounds`` and friends)."""
    with torch.no_grad():
        if analysis.kind == "point":
            return (net(args[0]),)
        if input_spec == "ball":
            lo, hi = net.bounds(args[0], args[1], analysis)
            if not margins:
                return lo, hi
            m = net.margin_lower(args[0], args[2], args[1], analysis)
            return lo, hi, m, net.certify(args[0], args[2], args[1], analysis)
        lo, hi = net.bounds_box(args[0], args[1], analysis)
        if not margins:
            return lo, hi
        # AbstractNetwork has no margin query over a box: the same steps as bounds_box + margin_lower
        ops = TorchOps()
        lower, upper = M.box_bounds(ops, args[0], args[1], *net.input_range)
        out = net.propagate(M.abstract_input(ops, lower, upper, analysis), analysis)
        hit = torch.nn.functional.one_hot(args[2].long(), int(net.output_shape[0])).bool()
        m = M.margin_lower(ops, out, hit.to(lower.dtype))
        return lo, hi, m, m.masked_fill(hit, math.inf).amin(dim=1) > 0


def max_rel_diff(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> float:
    """max |got − want| / max(1, max |want|) over every float output (bool outputs: 0 or inf)."""
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        if g.shape != w.shape:
            return math.inf
        if w.dtype == torch.bool:
            worst = max(worst, 0.0 if bool((g == w).all()) else math.inf)
            continue
        scale = max(1.0, float(w.abs().max())) if w.numel() else 1.0
        worst = max(worst, float((g.double() - w.double()).abs().max()) / scale if w.numel() else 0.0)
    return worst


def _prepare(net: Any, domain: Analysis | str, input_spec: str, margins: bool,
             plan_batch: int = 1) -> tuple[Analysis, AnalysisModule]:
    analysis = net.analysis(domain)
    check_exportable(analysis, input_spec, margins)
    if margins and len(net.output_shape) != 1:
        raise _error(f"margins need flat outputs (classes), but {net.name} outputs {list(net.output_shape)}",
                     help="export without margins, or end the network with Flatten() and Linear(classes)")
    for node in net.graph.nodes():
        if node.op in RANDOM_OPS and not node.attrs.get("only_train", True):
            raise AbsnetError(Diagnostic(
                "E502", f"{node.describe()} draws random numbers in eval mode: an exported program would freeze "
                "one draw", node.span, help="use --target onnx (which draws at run time) or CorrMaxK/DecorrMin"))
    if plan_batch < 1:
        raise _error(f"plan_batch must be at least 1, got {plan_batch}")
    net.eval()
    return analysis, AnalysisModule(net, analysis, input_spec, margins, plan_batch).eval()


def export_program(net: Any, path: str | Path | None = None, domain: Analysis | str = "Box()",
                   input_spec: str = "ball", margins: bool = False, *, check: bool = True,
                   plan_batch: int = 1) -> Any:
    """The ``torch.export`` ExportedProgram of ``net``'s analysis under ``domain`` (saved to ``path``).

    The batch axis is dynamic (``torch.export.Dim("N")``); ``net`` is put in eval mode. With
    ``check`` the program is run at batch sizes 1 and 3 and compared with the torch backend
    (≤ 1e-5 relative to the largest bound), else E502. ``plan_batch`` is the batch size the
    back-substitution (CROWN family) is chunked for, as in ``export_onnx``: one coefficient tensor
    stays under ``ABSNET_CROWN_CHUNK_MIB`` (read at export) at that batch.

    >>> import absnet, torch
    >>> net = absnet.compile_source("network N { input [2] range [-1, 1]  Linear(3) ReLU() Linear(2) }")
    >>> prog = export_program(net, domain="HBox()")
    >>> [t.shape[0] for t in prog.module()(torch.zeros(5, 2), torch.tensor(0.1))]
    [5, 5]
    """
    _require("export")
    analysis, module = _prepare(net, domain, input_spec, margins, plan_batch)
    args = example_inputs(net, analysis, input_spec, margins)
    batch = torch.export.Dim("N", min=1)
    dynamic = tuple({0: batch} if t.dim() else None for t in args)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module, args, dynamic_shapes=(dynamic,))
    except AbsnetError:
        raise
    except Exception as e:  # torch's errors are long; the first line names the guard or op
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _error(f"{net.name} under {analysis} cannot be exported by torch.export: {type(e).__name__}: {first}",
                     help="use --target onnx, or report it") from e
    if check:
        _check(program.module(), net, analysis, input_spec, margins, "torch.export")
    if path is not None:
        torch.export.save(program, str(path))
    return program


def export_torchscript(net: Any, path: str | Path | None = None, domain: Analysis | str = "Box()",
                       input_spec: str = "ball", margins: bool = False, *, check: bool = True,
                       plan_batch: int = 1) -> Any:
    """A TorchScript module (``torch.jit.script``) of ``net``'s analysis (saved with ``torch.jit.save``).

    The generic rules (Python dataclasses, registry dispatch) do not script; the module scripted is
    the FX graph ``torch.export`` produced from the plan, whose shapes stay symbolic (``sym_size``),
    so no batch size is frozen in. Legacy: prefer :func:`export_program`.
    """
    _require("torchscript")
    program = export_program(net, None, domain, input_spec, margins, check=False, plan_batch=plan_batch)
    analysis = net.analysis(domain)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(scriptable_graph(program))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _error(f"{net.name} under {analysis} cannot be scripted by torch.jit.script: {type(e).__name__}: "
                     f"{first}", help="use --target export (a .pt2 from torch.export), the primary PyTorch target"
                     ) from e
    if check:
        _check(scripted, net, analysis, input_spec, margins, "TorchScript")
    if path is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(scripted, str(path))
    return scripted


def scriptable_graph(program: Any) -> torch.fx.GraphModule:
    """A flat FX GraphModule of ``program`` that ``torch.jit.script`` accepts.

    ``program.module()`` is not scriptable: its forward flattens pytrees, it calls a guard module
    (input shape checks), and its nodes call op overloads (``aten.permute.default``), which
    TorchScript cannot resolve. This copy has the plain positional calling convention, no guard
    call (a wrong input shape fails in the first op instead), overload packets (``aten.permute``;
    the schema is chosen again at script time) and ``x.size(d)`` for ``aten.sym_size.int``: every
    size stays computed at run time, so nothing is specialised to the tracing batch.
    """
    gm = program.module()  # a fresh module: its graph is ours to edit
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module":
            if node.users:
                raise _error(f"unexpected submodule call {node.target} in the exported graph")
            graph.erase_node(node)
        elif node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            if node.target is torch.ops.aten.sym_size.int:
                node.op, node.target = "call_method", "size"
            else:
                node.target = node.target.overloadpacket
    attrs = {n.target: functools.reduce(getattr, n.target.split("."), gm)
             for n in graph.nodes if n.op == "get_attr"}
    flat = torch.fx.GraphModule(attrs, graph)
    flat.graph._codegen = torch.fx.graph.CodeGen()
    flat.recompile()
    return flat


def _check(fn: Any, net: Any, analysis: Analysis, input_spec: str, margins: bool, what: str) -> None:
    for n in (1, 3):
        args = example_inputs(net, analysis, input_spec, margins, batch=n, seed=n)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = tuple(fn(*args))
        diff = max_rel_diff(got, reference(net, analysis, input_spec, margins, args))
        if not diff <= 1e-5:
            raise _error(f"the {what} program of {net.name} under {analysis} differs from the torch backend at "
                         f"batch {n} (max relative difference {diff:.3g})", help="use --target onnx, or report it")


def compile_target(net: Any, target: str, out_path: str | Path, domain: Analysis | str = "Box()",
                   input_spec: str = "ball", margins: bool = False) -> dict[str, Any]:
    """Write ``net``'s analysis for ``target`` ("export": .pt2, "torchscript": .pt) to ``out_path``.

    Returns stats: target, path, bytes, analysis, inputs, outputs, export_s (seconds to build and
    save, checks included), max_rel_diff (vs the torch backend on a random batch of 2, re-loaded from
    the file).
    """
    if target not in TARGETS:
        raise _error(f"unknown PyTorch target {target!r}", help=f"use one of {', '.join(TARGETS)}")
    out = Path(out_path)
    analysis = net.analysis(domain)
    t0 = time.perf_counter()
    if target == "export":
        export_program(net, out, analysis, input_spec, margins)
        loaded = torch.export.load(str(out)).module()
    else:
        export_torchscript(net, out, analysis, input_spec, margins)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.jit.load(str(out))
    seconds = time.perf_counter() - t0
    args = example_inputs(net, analysis, input_spec, margins, batch=2, seed=2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = tuple(loaded(*args))
    return {
        "target": target, "path": str(out), "bytes": out.stat().st_size, "analysis": str(analysis),
        "inputs": input_names(analysis, input_spec, margins), "outputs": output_names(analysis, margins),
        "export_s": round(seconds, 3),
        "max_rel_diff": max_rel_diff(got, reference(net, analysis, input_spec, margins, args)),
    }
