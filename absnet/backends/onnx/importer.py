"""Import a concrete ONNX network (VNN-COMP models, ``torch.onnx.export`` output) into absnet.

The importer reads the graph in four steps:

1. *Split*: a value is constant when it depends on no graph input (initializers, ``Constant``,
   ``Shape``/``Size`` of any value, and nodes whose inputs are all constant); every other node is
   dynamic and must map to an absnet layer (``ONNX_OPS``). Dynamic nodes that do not map are
   collected and reported at once (E503) before anything runs.
2. *Evaluate*: the graph runs once in onnxruntime (``onnx.reference`` where onnxruntime cannot)
   on a random input with batch 1, which folds the constant subgraphs exporters emit (Shape/Gather/Concat/Unsqueeze/Cast
   chains) and gives every value's static shape.
3. *Map and fold* (:mod:`absnet.backends.onnx.import_rules`): each dynamic node becomes a layer;
   Identity/Dropout vanish; chains of Add/Sub/Mul/Div by constants become one affine step that is
   folded into a preceding Linear/Conv2d, written as ``Normalize`` at the input, or as a
   ``BatchNorm`` with unit statistics elsewhere; Pad folds into the next Conv/AvgPool; a Transpose
   before a flatten and a Linear folds into the Linear's weight columns (NHWC flatten).
4. *Structure*: the value graph becomes nested ``Add``/``Concat`` branches by walking the dominator
   tree backwards from the output, and the text is emitted one statement per layer with the
   weights keyed by DSL position (``layers.3.weight``). The compiled network is checked against
   the graph's own output on the evaluation input: a disagreement is an error, never an import.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from absnet.backends.onnx.import_rules import (
    ONNX_OPS,
    Op,
    Unsupported,
    convert_node,
    fold,
    unsupported_diagnostic,
)
from absnet.backends.torch.from_torch import _pair
from absnet.diagnostics import AbsnetError, Diagnostic

#: the input range written when neither the caller nor the file (absnet's own export) gives one:
#: ONNX carries no range and clipping to a guessed one could make a verdict unsound, so unbounded
UNBOUNDED = (-1e30, 1e30)
_RANDOM_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")


def _error(message: str, help: str | None = None, notes: Sequence[str] = ()) -> AbsnetError:
    return AbsnetError(Diagnostic("E503", message, help=help, notes=tuple(notes)))


@dataclass
class Imported:
    """The result of an import: ``.absnet`` text, the weights keyed like its ``state_dict``, the net."""

    source: str
    weights: dict[str, np.ndarray]
    net: Any  # AbstractNetwork (eval mode, weights loaded)


def load_model(model_or_path: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The ModelProto and a display name for errors; E503 when the file cannot be read as ONNX."""
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, "<ModelProto>"
    path = str(model_or_path)
    try:
        model = onnx.load(path)
    except FileNotFoundError:
        raise _error(f"cannot read {path}: no such file", help="check the path of the .onnx file") from None
    except Exception as e:  # protobuf raises DecodeError and friends
        raise _error(f"cannot read {path} as an ONNX model: {type(e).__name__}: {e}",
                     help="is it an .onnx file? re-export it, e.g. with torch.onnx.export") from None
    if not model.graph.node:
        raise _error(f"{path} holds no ONNX graph (no nodes)", help="is it an .onnx file?")
    return model, path


def _io(model: onnx.ModelProto, where: str) -> tuple[str, tuple[int, ...], Any, str]:
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        raise _error(f"{where}: absnet imports graphs with one input and one output, this one has "
                     f"{len(inputs)} inputs ({', '.join(i.name for i in inputs)}) and {len(g.output)} outputs",
                     help="export the network with a single input tensor and a single output tensor")
    inp = inputs[0]
    tt = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if len(dims) < 2 or any(d is None or d < 1 for d in dims[1:]) or dims[0] not in (None, 0, 1):
        shown = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        raise _error(f"{where}: input {inp.name!r} has shape {shown}; absnet needs [batch, *static shape] with a "
                     "batch of 1 or a symbolic batch", help="export with a dummy input of batch 1 and static "
                     "image/feature sizes")
    dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
    if dtype not in (np.float32, np.float64, np.float16):
        raise _error(f"{where}: input {inp.name!r} has element type {dtype}, not a float type")
    return inp.name, tuple(int(d) for d in dims[1:]), dtype, g.output[0].name


def _constants(model: onnx.ModelProto) -> set[str]:
    """Names of the values that depend on no graph input (Shape of anything counts as constant)."""
    const = {i.name for i in model.graph.initializer} | {""}
    for node in model.graph.node:
        if node.op_type in _RANDOM_OPS:
            continue
        if node.op_type in ("Constant", "Shape", "Size") or all(i in const for i in node.input):
            const.update(node.output)
    return const


def _input_range(model: onnx.ModelProto, given: tuple[float, float] | None) -> tuple[float, float]:
    if given is not None:
        lo, hi = float(given[0]), float(given[1])
        if not lo <= hi:
            raise _error(f"the input range [{lo}, {hi}] is empty", help="give LOW <= HIGH")
        return max(lo, UNBOUNDED[0]), min(hi, UNBOUNDED[1])  # ±inf are written as the unbounded range
    props = {p.key: p.value for p in model.metadata_props}
    text = props.get("absnet.input_range")  # written by absnet's own export_onnx
    if text:
        try:
            lo_s, hi_s = text.strip("[] ").split(",")
            return float(lo_s), float(hi_s)
        except ValueError:
            pass
    return UNBOUNDED


def _evaluate(model: onnx.ModelProto, name: str, x: np.ndarray, where: str) -> dict[str, np.ndarray]:
    """Every value of the graph on input ``x``: onnxruntime with every node output made a graph output,
    onnx.reference for what onnxruntime cannot give (it lacks a type, or the session fails)."""
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    values[name] = x
    wanted = [o for n in model.graph.node for o in n.output if o]
    try:
        values.update(_run_ort(model, name, x, wanted))
    except Exception:  # onnx.reference below reports what is wrong with the graph
        pass
    if any(o not in values for o in wanted):
        from onnx.reference import ReferenceEvaluator

        try:
            results = ReferenceEvaluator(model).run(None, {name: x}, intermediate=True)
        except Exception as e:
            raise _error(f"{where}: the graph does not run on an input of shape {list(x.shape)}: "
                         f"{type(e).__name__}: {e}", help="check the file with onnx.checker.check_model") from None
        values.update({k: np.asarray(v) for k, v in results.items() if k not in values})
    return values


def _run_ort(model: onnx.ModelProto, name: str, x: np.ndarray, wanted: list[str]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(o, types[o], None) for o in wanted
                          if o not in have and types.get(o))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {name: x}), strict=True))


def _identifier(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", text).strip("_") or "Imported"
    keywords = ("network", "block", "train", "import", "input", "range", "repeat", "branch", "true", "false", "none")
    return f"N{name}" if name[0].isdigit() or name in keywords else name


# ----------------------------------------------------------------------- structure and emission


def _structure(ops: list[Op], start: str, end: str) -> list[tuple[Op, list[list]]]:
    """Nested statements computing ``end`` from ``start``: (op, branches) with branches = [] for layers."""
    import networkx as nx

    producer = {op.out: op for op in ops}
    g = nx.DiGraph()
    g.add_node(start)
    for op in ops:
        for i in op.ins:
            g.add_edge(i, op.out)
    idom = nx.immediate_dominators(g, start)

    def build(first: str, last: str) -> list[tuple[Op, list[list]]]:
        stmts: list[tuple[Op, list[list]]] = []
        v = last
        while v != first:
            op = producer[v]
            if op.kind in ("Add", "Concat"):
                fork = idom[v]
                stmts.append((op, [build(fork, u) for u in op.ins]))
                v = fork
            else:
                stmts.append((op, []))
                v = op.ins[0]
        return stmts[::-1]

    return build(start, end)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float | np.floating):
        return repr(float(str(np.float32(v)))) if math.isfinite(v) else repr(float(v))
    if isinstance(v, tuple):
        return _pair(v)
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _call(op: Op) -> str:
    args = [_fmt(op.attrs[k]) if k.startswith("_") else f"{k}={_fmt(v)}" for k, v in op.attrs.items()]
    return f"{op.kind}({', '.join(a.lstrip('_') for a in args)})"


def _emit(stmts: list, path: tuple[str, ...], depth: int, lines: list[str], weights: dict[str, np.ndarray]) -> None:
    pad = "  " * depth
    for i, (op, branches) in enumerate(stmts):
        p = (*path, str(i))
        note = f"    # {', '.join(op.nodes)}".replace("\n", " ").replace("\r", " ") if op.nodes else ""
        if op.kind in ("Add", "Concat"):
            head = "Add" if op.kind == "Add" else f"Concat(axis={op.attrs['axis']})"
            lines.append(f"{pad}{head} {{{note}")
            for j, br in enumerate(branches):
                if not br:
                    lines.append(f"{pad}  branch {{ }}")
                    continue
                lines.append(f"{pad}  branch {{")
                _emit(br, (*p, str(j)), depth + 2, lines, weights)
                lines.append(f"{pad}  }}")
            lines.append(f"{pad}}}")
            continue
        lines.append(f"{pad}{_call(op)}{note}")
        for k, t in op.params.items():
            weights[".".join(("layers", *p, k))] = np.ascontiguousarray(t, dtype=np.float32)


# ----------------------------------------------------------------------- the entry points


def import_onnx(model_or_path: str | Path | onnx.ModelProto, *, input_range: tuple[float, float] | None = None,
                name: str | None = None, seed: int = 0) -> Imported:
    """Import a concrete ONNX network: its ``.absnet`` source, weights and compiled network.

    Args:
        model_or_path: an ``.onnx`` path or an ``onnx.ModelProto``.
        input_range: the declared input range (default: the one absnet's export recorded, else
            unbounded, written as ±1e30; a VNN-LIB property gives the input box anyway).
        name: the network's name in the source (default: from the file name or graph name).
        seed: the seed of the random evaluation input the import is checked on.

    Raises:
        AbsnetError: E503 when the file cannot be read or run, or when nodes have no absnet
            counterpart (all of them in one diagnostic, each with its name, op type and reason).
    """
    from absnet.api import compile_source

    model, where = load_model(model_or_path)
    in_name, in_shape, dtype, out_name = _io(model, where)
    const = _constants(model)
    if out_name in const:
        raise _error(f"{where}: the output {out_name!r} does not depend on the input")
    dynamic = [n for n in model.graph.node if not all(o in const for o in n.output)]
    problems = [Unsupported(n.name or n.output[0], n.op_type, "no absnet layer corresponds to it")
                for n in dynamic if n.op_type not in ONNX_OPS]
    if problems:
        raise AbsnetError(unsupported_diagnostic(where, problems))
    lo, hi = _input_range(model, input_range)
    rng = np.random.default_rng(seed)
    a, b = max(lo, -1.0), min(hi, 1.0)
    if a > b:
        a, b = lo, hi
    x = (a + (b - a) * rng.random((1, *in_shape))).astype(dtype)
    values = _evaluate(model, in_name, x, where)

    used = {i for n in model.graph.node for i in n.input} | {out_name}
    ops: list[Op] = []
    for node in dynamic:
        try:
            ops.extend(convert_node(node, const, values, used))
        except Unsupported as u:
            problems.append(u)
    if problems:
        raise AbsnetError(unsupported_diagnostic(where, problems))
    ops, out_name, problems = fold(ops, in_name, out_name, values)
    if problems:
        raise AbsnetError(unsupported_diagnostic(where, problems))

    stem = Path(where).stem if where != "<ModelProto>" else (model.graph.name or "Imported")
    net_name = _identifier(name or stem)
    lines = [f"# imported from {Path(where).name} by absnet (ONNX opset "
             f"{max((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')), default='?')}, "
             f"producer {model.producer_name or '?'} {model.producer_version}".rstrip() + ")",
             f"network {net_name} {{",
             f"  input [{', '.join(map(str, in_shape))}] range [{_fmt(float(lo))}, {_fmt(float(hi))}]"]
    weights: dict[str, np.ndarray] = {}
    _emit(_structure(ops, in_name, out_name) if out_name != in_name else [], (), 1, lines, weights)
    source = "\n".join(lines) + "\n}\n"
    net = compile_source(source, file=f"<import {where}>")
    load_weights_into(net, weights, where)
    net.eval()
    _check_agrees(net, x, values[model.graph.output[0].name], where)
    return Imported(source, weights, net)


def load_weights_into(net: Any, weights: dict[str, np.ndarray], where: str) -> None:
    """Load numpy weights into ``net`` (strict); a mismatch is an importer bug, reported as E503."""
    import torch

    own = net.state_dict()
    if set(own) != set(weights) or any(tuple(own[k].shape) != weights[k].shape for k in own):
        diff = sorted(set(own) ^ set(weights)) or [k for k in own if tuple(own[k].shape) != weights[k].shape]
        raise _error(f"{where}: the imported weights do not fit the emitted network ({', '.join(diff[:5])})",
                     help="this is a bug in the ONNX importer: please report it with the file")
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, strict=True)


def _check_agrees(net: Any, x: np.ndarray, want: np.ndarray, where: str) -> None:
    import torch

    with torch.no_grad():
        got = net(torch.from_numpy(x.astype(np.float32))).numpy()
    want = np.asarray(want, dtype=np.float32).reshape(got.shape) if want.size == got.size else want
    scale = max(1.0, float(np.abs(want).max()))
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4 * scale):
        err = float(np.abs(got - want).max()) if got.shape == want.shape else math.nan
        raise _error(f"{where}: the imported network disagrees with the ONNX graph on a test input "
                     f"(shapes {list(got.shape)} vs {list(want.shape)}, max difference {err:.3g})",
                     help="this is a bug in the ONNX importer: please report it with the file")


def compile_onnx(path_or_model: str | Path | onnx.ModelProto,
                 input_range: tuple[float, float] | None = None) -> Any:
    """Compile a concrete ONNX network into an :class:`AbstractNetwork` with its weights (eval mode).

    ``net.input_shape`` is the ONNX input's shape without the batch axis; ``net.source`` is the
    emitted ``.absnet`` text. See :func:`import_onnx` for ``input_range`` and the errors.

    >>> import absnet, torch
    >>> net = absnet.compile_source("network N { input [3] range [0, 1]  Linear(4) ReLU() Linear(2) }")
    >>> back = absnet.compile_onnx(absnet.export_onnx(net, domain="Point()"))
    >>> back.input_shape, bool(torch.allclose(back(torch.ones(1, 3)), net(torch.ones(1, 3)), atol=1e-6))
    ((3,), True)
    """
    return import_onnx(path_or_model, input_range=input_range).net
