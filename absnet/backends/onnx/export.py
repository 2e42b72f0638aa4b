"""Export a compiled network as a standalone ONNX abstract analysis graph (DESIGN §6).

The graph is the torch backend's analysis staged out: the same plan (``AbstractNetwork.plan`` in
eval mode), the same input encoding (``margins.input_bounds``/``abstract_input``), the same rules and
output queries (``margins.bounds``/``margin_lower``), run with :class:`OnnxOps` instead of TorchOps.

I/O contract (opset ``DEFAULT_OPSET`` = 17 unless asked otherwise; batch axis ``N`` dynamic, every
other extent static; weights are initializers):
- inputs ``input`` (N, *input_shape) float32 and ``epsilon`` () float32 (the L∞ ball, intersected
  with the declared input range); or, with ``input_spec="box"``, ``input_lower`` and ``input_upper``
  (clamped to the range; an upper below the lower is raised to it);
- outputs ``lower``, ``upper`` (N, *output_shape);
- with ``margins=True`` also input ``label`` (N,) int64 and outputs ``margin_lower`` (N, C) (lower
  bounds of z_y − z_j, 0 at j = y) and ``certified`` (N,) bool (every margin j ≠ y is > 0);
- ``Point()``: the concrete network, input ``input``, output ``output``.
AlphaCROWN and WongKolter(proj=k) are torch-only (gradient steps, random projections): E502.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from absnet.backends.onnx.emit import BatchDim, StagingError, Value, onnx_type
from absnet.backends.onnx.ops import OnnxOps
from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.ir.domains import Analysis
from absnet.transformers import margins as M
from absnet.transformers.registry import RuleContext

if TYPE_CHECKING:
    import torch

DEFAULT_OPSET = 17
OPSETS = range(13, 22)  # 13: ReduceSum takes axes as an input; 18+: the other Reduce* too (handled)


def _error(message: str, help: str | None = None) -> AbsnetError:
    return AbsnetError(Diagnostic("E502", message, help=help))


def torch_only(analysis: Analysis) -> tuple[str, str] | None:
    """Why ``analysis`` runs in the torch backend only, and what to use instead (None: it stages)."""
    if analysis.alpha_iters:
        return (f"{analysis} optimises ReLU slopes by gradient steps: it runs in the torch backend only",
                "CROWN() (AlphaCROWN's starting point, never tighter), or net.bounds in torch")
    if analysis.proj:
        return (f"{analysis} estimates bounds with random projections: it runs in the torch backend only",
                "WongKolter() (the exact dual bound) or CROWN()")
    return None


def check_exportable(analysis: Analysis, input_spec: str = "ball", margins: bool = False,
                     opset: int = DEFAULT_OPSET) -> None:
    """Raise E502 when ``analysis`` (with these options) has no ONNX analysis graph."""
    why = torch_only(analysis)
    if why is not None:
        raise _error(why[0], help=f"export {why[1]}")
    if input_spec not in ("ball", "box"):
        raise _error(f"input_spec must be 'ball' or 'box', not {input_spec!r}",
                     help="ball: inputs input and epsilon (an L∞ ball); box: inputs input_lower and input_upper")
    if analysis.kind == "point" and (margins or input_spec != "ball"):
        raise _error("Point() exports the concrete network: it has no input set and no margins",
                     help="export an analysis such as Box() or CROWN() for bounds and margins")
    if opset not in OPSETS:
        raise _error(f"opset {opset} is not supported", help=f"use an opset from {OPSETS[0]} to {OPSETS[-1]} "
                     f"(default {DEFAULT_OPSET})")


def stage_parameters(net: Any, stage: Callable[[str, torch.Tensor], Value]) -> dict[str, dict[str, Value]]:
    """Every node's parameters and buffers, each staged by ``stage(state_dict key, tensor)``."""
    names = {id(m): n for n, m in net.named_modules()}
    return {node_id: {k: stage(f"{names[id(mod)]}.{k}", t) for k, t in mod.tensors().items()}
            for node_id, mod in net._param_modules.items()}


def constant_parameters(net: Any, ops: OnnxOps) -> dict[str, dict[str, Value]]:
    """Every node's parameters and buffers as constants named by their state_dict keys."""
    return stage_parameters(net, lambda key, t: ops.known(t.detach().cpu().float().numpy(), hint=key))


def _pads(p: Any) -> list[int]:
    return [int(p[0]), int(p[1]), int(p[0]), int(p[1])]


def _native_pool(ops: OnnxOps, node: Any, x: Value, shape: tuple[int, ...]) -> Value | None:
    a = node.attrs
    if node.op == "AdaptiveAvgPool2d":
        (h, w), (oh, ow) = x.shape[2:], a["output_size"]
        if (oh, ow) == (1, 1):
            return ops.emit("GlobalAveragePool", [x], shape, x.dtype)
        if h % oh or w % ow:
            return None  # torch's uneven windows: the rule's averaging matrix
        k = [int(h) // oh, int(w) // ow]
        return ops.emit("AveragePool", [x], shape, x.dtype, kernel_shape=k, strides=k)
    k = list(a["kernel_size"])
    stride = list(a["stride"] if a.get("stride") is not None else k)
    if node.op == "MaxPool2d":
        return ops.emit("MaxPool", [x], shape, x.dtype, kernel_shape=k, strides=stride, pads=_pads(a["padding"]))
    return ops.emit("AveragePool", [x], shape, x.dtype, kernel_shape=k, strides=stride, pads=_pads(a["padding"]),
                    count_include_pad=1)


def _native_point(ops: OnnxOps, node: Any, x: Value, out_shape: tuple[int, ...]) -> Value | None:
    """The concrete network's activation or pooling ``node`` as the one ONNX operator verifiers and
    importers read (Sigmoid, MaxPool, …) instead of the point rule's primitives; None: use the rule."""
    shape = (x.shape[0], *out_shape)
    op, a = node.op, node.attrs
    if op in ("Sigmoid", "Tanh", "Softplus"):
        return ops.emit(op, [x], shape, x.dtype)
    if op == "LeakyReLU":
        return ops.emit("LeakyRelu", [x], shape, x.dtype, alpha=float(a["negative_slope"]))
    if op == "ELU":
        return ops.emit("Elu", [x], shape, x.dtype, alpha=float(a["alpha"]))
    if op in ("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"):
        return _native_pool(ops, node, x, shape)
    return None


def propagate(net: Any, value: Any, analysis: Analysis, ops: OnnxOps, *, training: bool = False,
              params: Mapping[str, Mapping[str, Value]] | None = None, aux: list[tuple[Any, Any]] | None = None,
              time: float | None = None,
              set_buffer: Callable[[str], Callable[[str, Value], None]] | None = None) -> Any:
    """``AbstractNetwork.propagate`` staged with ``ops``: by default in eval mode with the parameters as
    constants; training-step graphs pass ``training=True`` and their own ``params`` (graph inputs),
    and collect DeepLoss terms in ``aux``. ``time`` (default ``net.time``) is the schedules' time.
    ``set_buffer(node id)`` gives the rules of a training-mode pass the setter of that node's running
    statistics (torch's ``update_buffers``); None leaves them alone."""
    steps, out_id = net.plan(analysis, training)
    params = constant_parameters(net, ops) if params is None else params
    aux = [] if aux is None else aux
    env: dict[str, Any] = {net.graph.input_id: value}
    native = analysis.kind == "point" and not training  # the concrete network, in the form verifiers read
    for st in steps:
        if native and isinstance(env[st.inputs[0]] if st.inputs else None, Value):
            out = _native_point(ops, st.node, env[st.inputs[0]], tuple(st.out_shape))
            if out is not None:
                env[st.node.id] = out
                continue
        ctx = RuleContext(ops, st.node, params.get(st.node.id, {}), analysis, training, st.in_shapes,
                          st.out_shape, net.time if time is None else time, aux,
                          None if set_buffer is None else set_buffer(st.node.id))
        try:
            env[st.node.id] = st.rule.fn(ctx, *(env[i] for i in st.inputs))
        except StagingError as e:
            fix = ("train this network with absc train (torch), or report it" if training
                   else "analyse this network in the torch backend (net.bounds), or report it")
            raise AbsnetError(Diagnostic(
                "E502", f"{st.node.describe()} under {analysis} cannot be staged to ONNX: {e}", st.node.span,
                help=fix)) from None
    return env[out_id]


def label_onehot(ops: OnnxOps, label: Value, classes: int, dtype: Any) -> tuple[Value, Value]:
    """The labels (N,) int64 as a boolean (N, classes) hit mask and its one-hot encoding in ``dtype``."""
    col = ops.reshape(label, (-1, 1))
    hit = ops.emit("Equal", [col, ops.known(np.arange(classes, dtype=np.int64), hint="classes")],
                   (col.shape[0], classes), np.bool_)
    return hit, ops.emit("Cast", [hit], hit.shape, dtype, to=onnx_type(dtype))


def build_analysis(net: Any, analysis: Analysis, ops: OnnxOps, input_spec: str = "ball",
                   margins: bool = False) -> tuple[list[Value], dict[str, Value]]:
    """Stage ``analysis`` of ``net``: the graph inputs and the named outputs."""
    shape = tuple(net.input_shape)
    if analysis.kind == "point":
        x = ops.input("input", shape)
        return [x], {"output": propagate(net, x, analysis, ops)}
    low, high = net.input_range
    if input_spec == "ball":
        x, eps = ops.input("input", shape), ops.input("epsilon", (), batched=False)
        inputs = [x, eps]
        lo, hi = M.input_bounds(ops, x, eps, low, high)
    else:
        lo_in, hi_in = ops.input("input_lower", shape), ops.input("input_upper", shape)
        inputs = [lo_in, hi_in]
        lo, hi = M.box_bounds(ops, lo_in, hi_in, low, high)
    out = propagate(net, M.abstract_input(ops, lo, hi, analysis), analysis, ops)
    lower, upper = M.bounds(ops, out)
    outputs = {"lower": lower, "upper": upper}
    if margins:
        classes = _classes(net)
        label = ops.input("label", (), np.int64)
        inputs.append(label)
        hit, onehot = label_onehot(ops, label, classes, lower.dtype)
        m = M.margin_lower(ops, out, onehot)
        others = ops.where(hit, ops.constant(math.inf, m), m)
        worst = ops.neg(ops.max(ops.neg(others), [1]))
        outputs.update(margin_lower=m, certified=ops.greater(worst, 0.0))
    return inputs, outputs


def _classes(net: Any) -> int:
    if len(net.output_shape) != 1:
        raise _error(f"margins need flat outputs (classes), but {net.name} outputs {list(net.output_shape)}",
                     help="export without margins, or end the network with Flatten() and Linear(classes)")
    return int(net.output_shape[0])


def _value_info(name: str, v: Value) -> onnx.ValueInfoProto:
    dims = ["N" if isinstance(d, BatchDim) and d.mult == 1 else int(d) for d in v.shape]
    if any(isinstance(d, BatchDim) and d.mult != 1 for d in v.shape):
        raise _error(f"output {name} has a batch axis of {v.shape[0]!r}, not N")
    return helper.make_tensor_value_info(name, onnx_type(v.dtype), dims)


def export_onnx(net: Any, path: str | Path | None = None, domain: Analysis | str = "Box()",
                input_spec: str = "ball", margins: bool = False, opset: int = DEFAULT_OPSET, *,
                plan_batch: int = 1) -> onnx.ModelProto:
    """The ONNX abstract analysis graph of ``net`` under ``domain`` (written to ``path`` if given).

    The graph is checked (``onnx.checker`` full check and strict shape inference) before it is
    returned. See the module docstring for its inputs and outputs. The graph runs at any batch
    size; ``plan_batch`` is the one its back-substitution (CROWN family) is chunked for: like the
    torch backend, one coefficient tensor stays under ``ABSNET_CROWN_CHUNK_MIB`` (512) at that batch,
    so larger values give more nodes and less memory per example.

    >>> import absnet
    >>> net = absnet.compile_source("network N { input [2] range [-1, 1]  Linear(3) ReLU() Linear(2) }")
    >>> model = absnet.export_onnx(net, domain="HBox()")
    >>> [i.name for i in model.graph.input], [o.name for o in model.graph.output]
    (['input', 'epsilon'], ['lower', 'upper'])
    """
    analysis = net.analysis(domain)
    check_exportable(analysis, input_spec, margins, opset)
    if plan_batch < 1:
        raise _error(f"plan_batch must be at least 1, got {plan_batch}")
    ops = OnnxOps(opset=opset, plan_batch=plan_batch)
    inputs, outputs = build_analysis(net, analysis, ops, input_spec, margins)
    g = ops.g
    for name, v in outputs.items():
        g.nodes.append(helper.make_node("Identity", [g.materialize(v)], [name], name=f"output_{name}"))
    graph = helper.make_graph(
        g.nodes, f"{net.name}_{analysis.name}", [_value_info(v.name or "", v) for v in inputs],
        [_value_info(n, v) for n, v in outputs.items()], initializer=g.initializers,
        doc_string=f"absnet abstract analysis graph of {net.name} under {analysis} (input spec {input_spec})",
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="absnet",
                              producer_version=_version())
    model.ir_version = helper.find_min_ir_version_for(opsets)
    helper.set_model_props(model, {
        "absnet.network": net.name, "absnet.analysis": str(analysis), "absnet.input_spec": input_spec,
        "absnet.input_range": f"[{net.input_range[0]}, {net.input_range[1]}]",
    })
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    if path is not None:
        onnx.save_model(model, str(path))
    return model


def _version() -> str:
    from absnet import __version__

    return __version__


def run_onnx(model_or_path: Any, threads: int | None = None, **inputs: Any) -> dict[str, np.ndarray]:
    """Run an exported graph in onnxruntime (CPU); returns every output by name.

    ``model_or_path`` is a ModelProto, a path, or an ``onnxruntime.InferenceSession`` (reuse one to
    avoid re-creating it). Inputs may be numpy arrays, torch tensors or numbers (``epsilon=0.1``).
    """
    import onnxruntime as ort

    sess = model_or_path
    if not isinstance(sess, ort.InferenceSession):
        sess = session(model_or_path, threads)
    feeds: dict[str, np.ndarray] = {}
    types = {i.name: i.type for i in sess.get_inputs()}
    for name, v in inputs.items():
        if name not in types:
            raise _error(f"the graph has no input {name!r}", help=f"its inputs: {', '.join(types)}")
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        feeds[name] = np.asarray(v, dtype=np.int64 if "int64" in types[name] else np.float32)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def session(model_or_path: Any, threads: int | None = None) -> Any:
    """An onnxruntime CPU InferenceSession for a ModelProto or a path."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    data = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    # Everything foldable was folded at export, except what export left unfolded on purpose: the
    # objective rows of back-substitution (OneHot of their indices) through their first layers.
    # onnxruntime's folding would materialise those at session creation (16 GB for ConvBig/CROWN).
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["ConstantFolding"])


def graph_stats(model: onnx.ModelProto) -> Mapping[str, int]:
    """Nodes, initializers and serialized bytes of a model."""
    return {"nodes": len(model.graph.node), "initializers": len(model.graph.initializer),
            "bytes": model.ByteSize()}
