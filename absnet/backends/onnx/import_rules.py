"""The ONNX importer's rules: one ONNX node → one layer record (:func:`convert_node`), then the
folding rewrites over the records (:func:`fold`). See :mod:`absnet.backends.onnx.importer`.

Rewrite rules of :func:`fold`, in order:
- ``Alias`` (Identity, Dropout, float Cast, a Reshape that keeps the shape) → its input.
- ``Pad`` (zeros, symmetric, spatial) → the padding of the one Conv2d/AvgPool2d that reads it.
- ``Transpose`` → Flatten → Linear: the permutation moves into the Linear's weight columns.
- ``Affine`` (x·scale + shift by constants, from Add/Sub/Mul/Div) after an ``Affine`` → one Affine.
- ``Affine`` after a Linear/Conv2d read by nothing else, per output channel → its weight and bias.
- any other ``Affine``, per channel: ``Normalize`` on the network input (scale > 0), else a
  ``BatchNorm1d/2d`` with running mean 0, variance 1 and eps 0 (exactly x·weight + bias in eval mode).
Each rule is exact in real arithmetic; anything else is reported, never approximated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from absnet.diagnostics import Diagnostic

ACTIVATIONS = {"Relu": "ReLU", "LeakyRelu": "LeakyReLU", "Sigmoid": "Sigmoid", "Tanh": "Tanh",
               "Softplus": "Softplus", "Elu": "ELU"}
ONNX_OPS = frozenset({
    *ACTIVATIONS, "Gemm", "MatMul", "Conv", "MaxPool", "AveragePool", "GlobalAveragePool",
    "BatchNormalization", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Pad", "Add", "Sub", "Mul",
    "Div", "Sum", "Concat", "Identity", "Dropout", "Cast",
})


@dataclass
class Op:
    """One layer record: an absnet op name (or Alias/Affine/Pad/Transpose until folded), its dynamic
    inputs, its output value, attributes (``_``-prefixed keys are written positionally), weights and
    the ONNX nodes it came from."""

    kind: str
    ins: list[str]
    out: str
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)


class Unsupported(Exception):
    """A node with no absnet counterpart, and why."""

    def __init__(self, node: str, op_type: str, reason: str):
        super().__init__(reason)
        self.node, self.op_type, self.reason = node, op_type, reason


def unsupported_diagnostic(where: str, problems: Sequence[Unsupported]) -> Diagnostic:
    """One E503 listing every unsupported node with its name, op type and reason."""
    n = len(problems)
    return Diagnostic(
        "E503", f"{where}: {n} ONNX node{'s' if n > 1 else ''} cannot be imported into absnet",
        notes=tuple(f"node {p.node!r} ({p.op_type}): {p.reason}" for p in problems),
        help="absnet imports " + ", ".join(sorted(ONNX_OPS)) + " (with constants folded); remove or replace "
             "the listed nodes, e.g. drop a final Softmax (it does not change the predicted class)")


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _pairs(node: onnx.NodeProto, in_hw: Sequence[int], out_hw: Sequence[int], k: Sequence[int],
           op: str) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(stride, padding, dilation) of a 2-D Conv/pool node; Unsupported for asymmetric padding."""
    name = node.name or node.output[0]
    stride = tuple(_attr(node, "strides", [1, 1]))
    dil = tuple(_attr(node, "dilations", [1, 1]))
    auto = _attr(node, "auto_pad", "NOTSET")
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * 4
        for d in range(2):
            total = max((out_hw[d] - 1) * stride[d] + (k[d] - 1) * dil[d] + 1 - in_hw[d], 0)
            pads[d] = total // 2
            pads[d + 2] = total - total // 2
    elif auto == "VALID":
        pads = [0] * 4
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise Unsupported(name, op, f"asymmetric padding {pads} (absnet pads both sides equally)")
    return (int(stride[0]), int(stride[1])), (int(pads[0]), int(pads[1])), (int(dil[0]), int(dil[1]))


def convert_node(node: onnx.NodeProto, const: set[str], values: dict[str, np.ndarray], used: set[str]) -> list[Op]:
    """The layer records of a node with a dynamic input; Unsupported when absnet has no counterpart."""
    return [o] if isinstance(o := _convert(node, const, values, used), Op) else o


def _convert(node: onnx.NodeProto, const: set[str], values: dict[str, np.ndarray], used: set[str]) -> Op | list[Op]:
    t, name, out = node.op_type, node.name or node.output[0], node.output[0]
    dyn = [i for i in node.input if i and i not in const]
    pe = {v: tuple(values[v].shape[1:]) for v in (*dyn, out)}  # per-example shapes (batch 1 dropped)

    def fail(reason: str) -> Unsupported:
        return Unsupported(name, t, reason)

    def const_in(i: int) -> np.ndarray | None:
        return values[node.input[i]] if len(node.input) > i and node.input[i] else None

    def op(kind: str, attrs: dict | None = None, params: dict | None = None, ins: list[str] | None = None) -> Op:
        return Op(kind, ins or dyn[:1], out, attrs or {}, params or {}, [name])

    if any(o in used for o in node.output[1:]):
        raise fail("its extra outputs (indices, statistics or masks) are used")
    if len(dyn) > 1 and t not in ("Add", "Sum", "Concat"):
        raise fail(f"it combines {len(dyn)} computed values; absnet combines branches only by Add or Concat")
    if node.input[0] not in dyn and t not in ("Add", "Mul", "Sum", "Sub"):
        raise fail("its first input is a constant and a later one is computed")
    x = dyn[0]
    if t in ("Identity", "Dropout"):
        if t == "Dropout" and const_in(2) is not None and bool(const_in(2)):
            raise fail("training_mode is true")
        return op("Alias")
    if t == "Cast":
        if values[out].dtype.kind != "f":
            raise fail(f"casts to {values[out].dtype}, not a float type")
        return op("Alias")
    if t in ACTIVATIONS:
        alpha = _attr(node, "alpha", 0.01 if t == "LeakyRelu" else 1.0)
        return op(ACTIVATIONS[t], {"_a": float(alpha)} if t in ("LeakyRelu", "Elu") else {})
    if t in ("Gemm", "MatMul"):
        w = const_in(1)
        if node.input[1] in dyn or w is None or w.ndim != 2 or not pe[x] or np.prod(pe[x][:-1]) != 1 or \
                (t == "Gemm" and len(pe[x]) != 1):
            raise fail(f"absnet's Linear takes flat inputs times a constant matrix (input {list(pe[x])})")
        if t == "Gemm":
            if _attr(node, "transA", 0):
                raise fail("transA=1 transposes the batch")
            w = (w if _attr(node, "transB", 0) else w.T) * float(_attr(node, "alpha", 1.0))
            c = const_in(2)
            b = None if c is None else np.broadcast_to(c * float(_attr(node, "beta", 1.0)), (1, w.shape[0]))[0]
        else:
            w, b = w.T, None
        params = {"weight": w} if b is None else {"weight": w, "bias": b}
        linear = op("Linear", {"_out": int(w.shape[0]), "bias": b is not None}, params)
        if len(pe[x]) == 1:
            return [linear]
        # [1, ..., 1, K] (e.g. ACAS Xu's [1, 1, 5]): Flatten, Linear, and back to [1, ..., 1, M]
        flat, lin = f"{out}#flat", f"{out}#linear"
        values[flat], values[lin] = values[x].reshape(1, -1), values[out].reshape(1, -1)
        linear.ins, linear.out = [flat], lin
        return [Op("Flatten", [x], flat, nodes=[name]), linear, Op("Reshape", [lin], out, {"_s": list(pe[out])}, {},
                                                                    [name])]
    if t in ("Add", "Sum") and len(dyn) >= 2:
        if any(pe[v] != pe[out] for v in dyn):
            raise fail(f"it broadcasts values of shapes {[list(pe[v]) for v in dyn]}")
        return op("Add", ins=dyn)
    if t in ("Add", "Sub", "Mul", "Div"):
        if pe[x] != pe[out] or values[x].shape[0] != values[out].shape[0]:
            raise fail(f"the constant changes the shape {list(pe[x])} to {list(pe[out])}")
        first = node.input[0] == x
        c = np.asarray(values[node.input[1 if first else 0]], dtype=np.float64)
        if c.ndim == len(pe[x]) + 1:
            c = c[0]
        one, zero = np.ones(()), np.zeros(())
        if t == "Div" and not first:
            raise fail("it divides by a computed value")
        if t == "Div" and not np.all(c):
            raise fail("it divides by a constant that contains 0")
        scale, shift = {"Add": lambda: (one, c), "Mul": lambda: (c, zero), "Div": lambda: (1.0 / c, zero),
                        "Sub": lambda: (one, -c) if first else (-one, c)}[t]()
        return op("Affine", {"scale": scale, "shift": shift})
    if t == "Concat":
        if len(dyn) != len([i for i in node.input if i]):
            raise fail("it concatenates constants with computed values")
        axis = int(_attr(node, "axis")) % len(values[out].shape)
        if axis == 0:
            raise fail("it concatenates along the batch axis")
        return op("Concat", {"axis": axis}, ins=dyn)
    if t == "Conv":
        w, b = const_in(1), const_in(2)
        if node.input[1] in dyn or w is None or w.ndim != 4:
            raise fail("absnet has 2-D convolutions with constant kernels only")
        k = w.shape[2:]
        stride, pad, dil = _pairs(node, pe[x][1:], pe[out][1:], k, t)
        attrs = {"_out": int(w.shape[0]), "kernel": tuple(k), "stride": stride, "padding": pad, "dilation": dil,
                 "groups": int(_attr(node, "group", 1)), "bias": b is not None}
        return op("Conv2d", attrs, {"weight": w} if b is None else {"weight": w, "bias": b})
    if t in ("MaxPool", "AveragePool"):
        k = list(_attr(node, "kernel_shape"))
        if len(k) != 2 or len(pe[x]) != 3:
            raise fail("absnet pools images [C, H, W] with 2-D windows only")
        stride, pad, dil = _pairs(node, pe[x][1:], pe[out][1:], k, t)
        if dil != (1, 1):
            raise fail("dilated pooling")
        floor = tuple((pe[x][1 + d] + 2 * pad[d] - k[d]) // stride[d] + 1 for d in range(2))
        if floor != pe[out][1:]:
            raise fail("ceil_mode=1 changes the output size")
        if t == "AveragePool" and pad != (0, 0) and not _attr(node, "count_include_pad", 0):
            raise fail("count_include_pad=0 with padding (absnet counts the padding zeros)")
        return op("MaxPool2d" if t == "MaxPool" else "AvgPool2d", {"_k": tuple(k), "stride": stride, "padding": pad})
    if t == "GlobalAveragePool":
        if len(pe[x]) != 3:
            raise fail(f"absnet pools images [C, H, W], not {list(pe[x])}")
        return op("AdaptiveAvgPool2d", {"_o": (1, 1)})
    if t == "BatchNormalization":
        if len(pe[x]) not in (1, 3) or _attr(node, "training_mode", 0):
            raise fail(f"absnet normalises features [C] or images [C, H, W] in eval mode (input {list(pe[x])})")
        params = {"weight": const_in(1), "bias": const_in(2), "running_mean": const_in(3), "running_var": const_in(4)}
        return op(f"BatchNorm{2 if len(pe[x]) == 3 else 1}d", {"eps": float(_attr(node, "epsilon", 1e-5))}, params)
    if t in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
        axes = _attr(node, "axes", None)
        if axes is None and t in ("Squeeze", "Unsqueeze") and const_in(1) is not None:
            axes = const_in(1).tolist()
        if t == "Squeeze" and axes is None:
            raise fail("it squeezes every axis of size 1, the batch axis too")
        full = values[out].shape
        if (t == "Flatten" and int(_attr(node, "axis", 1)) % len(values[x].shape) != 1) or \
                (axes is not None and 0 in [a % (len(full) if t == "Unsqueeze" else len(values[x].shape))
                                           for a in axes]) or not full or full[0] != 1:
            raise fail("it moves or merges the batch axis")
        if pe[out] == pe[x]:
            return op("Alias")
        return op("Flatten") if len(pe[out]) == 1 else op("Reshape", {"_s": list(pe[out])})
    if t == "Transpose":
        perm = list(_attr(node, "perm", range(len(values[x].shape) - 1, -1, -1)))
        if perm[0] != 0:
            raise fail(f"perm={perm} moves the batch axis")
        return op("Alias") if perm == sorted(perm) else op("Transpose", {"perm": [p - 1 for p in perm[1:]]})
    if t == "Pad":
        mode = _attr(node, "mode", "constant")
        pads = _attr(node, "pads", None)
        pads = np.asarray(const_in(1) if pads is None else pads, dtype=np.int64)
        value = _attr(node, "value", None)
        value = (const_in(2) if const_in(2) is not None else 0.0) if value is None else value
        rank = len(values[x].shape)
        if const_in(3) is not None:  # opset 18: axes
            full = np.zeros(2 * rank, np.int64)
            for j, a in enumerate(np.asarray(const_in(3)).tolist()):
                full[a % rank], full[a % rank + rank] = pads[j], pads[j + len(pads) // 2]
            pads = full
        if mode != "constant" or float(np.asarray(value)) != 0.0:
            raise fail(f"mode={mode} value={float(np.asarray(value))}: absnet pads with zeros only")
        if rank != 4 or pads[:2].any() or pads[4:6].any() or (pads < 0).any() or pads[2] != pads[6] \
                or pads[3] != pads[7]:
            raise fail(f"pads {pads.tolist()} are not symmetric zero padding of the image sides")
        return op("Pad", {"padding": (int(pads[2]), int(pads[3]))})
    raise fail("no absnet layer corresponds to it")  # pragma: no cover - ONNX_OPS is checked first


# ----------------------------------------------------------------------- folding


def _per_channel(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``a`` broadcast to ``shape`` as one value per channel (axis 0), or None when it varies within one."""
    try:
        full = np.broadcast_to(a, shape).reshape(shape[0], -1)
    except ValueError:
        return None
    return full[:, 0].copy() if (full == full[:, :1]).all() else None


def _shortest(v: float, err: Any, scale: float) -> float:
    """The shortest decimal near ``v`` whose ``err`` is within float32 rounding of ``scale`` (0.3081, not
    0.30810001: torch's normalisation constants read back as written)."""
    for digits in range(1, 18):
        d = float(f"{v:.{digits}g}")
        if d != 0 and abs(err(d)) <= 2.0**-23 * abs(scale):
            return d
    return float(v)


def fold(ops: list[Op], start: str, end: str, values: dict[str, np.ndarray]
         ) -> tuple[list[Op], str, list[Unsupported]]:
    """Apply the rewrite rules of the module docstring; return the records, the output value and problems."""
    rename: dict[str, str] = {}

    def r(v: str) -> str:
        while v in rename:
            v = rename[v]
        return v

    kept = []
    for o in ops:
        o.ins = [r(i) for i in o.ins]
        if o.kind == "Alias":
            rename[o.out] = o.ins[0]
        else:
            kept.append(o)
    ops, end = kept, r(end)
    problems: list[Unsupported] = []

    def users(v: str) -> list[Op]:
        return [o for o in ops if v in o.ins]

    def only_user(o: Op) -> Op | None:
        us = users(o.out)
        return us[0] if len(us) == 1 and o.out != end and us[0].ins.count(o.out) == 1 else None

    def drop(o: Op, into: Op) -> None:  # `into` now reads what `o` read
        into.ins = [o.ins[0] if i == o.out else i for i in into.ins]
        into.nodes = o.nodes + into.nodes
        ops.remove(o)

    for o in [o for o in ops if o.kind == "Pad"]:
        u = only_user(o)
        k = u.attrs.get("kernel", u.attrs.get("_k")) if u else None
        if u is None or u.kind not in ("Conv2d", "AvgPool2d") or (
                u.kind == "AvgPool2d" and any(2 * (o.attrs["padding"][d] + u.attrs["padding"][d]) > k[d]
                                              for d in range(2))):
            problems.append(Unsupported(o.nodes[0], "Pad", "zero padding folds only into the one Conv or AveragePool "
                                        "that reads it (AveragePool: at most half the window)"))
            continue
        u.attrs["padding"] = tuple(a + b for a, b in zip(u.attrs["padding"], o.attrs["padding"], strict=True))
        drop(o, u)
    for o in [o for o in ops if o.kind == "Transpose"]:
        f = only_user(o)
        lin = only_user(f) if f is not None and f.kind == "Flatten" else None
        if lin is None or lin.kind != "Linear":
            problems.append(Unsupported(o.nodes[0], "Transpose", "a Transpose folds only into a Flatten followed by "
                                        "Gemm/MatMul (absnet has no general transpose)"))
            continue
        shape = values[o.ins[0]].shape[1:]
        idx = np.arange(int(np.prod(shape))).reshape(shape).transpose(o.attrs["perm"]).ravel()
        w = np.empty_like(lin.params["weight"])
        w[:, idx] = lin.params["weight"]
        lin.params["weight"] = w
        drop(o, f)
    for o in [o for o in ops if o.kind == "Affine"]:  # topological order: merge into the previous Affine
        prev = next((p for p in ops if p.out == o.ins[0]), None)
        if prev is not None and prev.kind == "Affine" and only_user(prev) is o:
            s0, b0 = prev.attrs["scale"], prev.attrs["shift"]
            o.attrs = {"scale": s0 * o.attrs["scale"], "shift": b0 * o.attrs["scale"] + o.attrs["shift"]}
            drop(prev, o)
    for o in [o for o in ops if o.kind == "Affine"]:
        shape = values[o.out].shape[1:]
        prev = next((p for p in ops if p.out == o.ins[0]), None)
        lin = next((p for p in ops if p.out == prev.ins[0]), None) if prev is not None and prev.kind == "Reshape" \
            else None
        if lin is not None and lin.kind == "Linear" and only_user(lin) is prev and only_user(prev) is o:
            # scale/shift after Linear → Reshape: per output feature, so into the Linear; the Reshape moves last
            s, b = (np.broadcast_to(o.attrs[k], shape).reshape(-1) for k in ("scale", "shift"))
            lin.params["weight"] = lin.params["weight"] * s[:, None]
            lin.params["bias"] = lin.params.get("bias", np.zeros(s.shape)) * s + b
            lin.attrs["bias"] = True
            prev.out, prev.nodes = o.out, prev.nodes + o.nodes
            ops.remove(o)
            continue
        s, b = (_per_channel(o.attrs[k], shape) for k in ("scale", "shift"))
        if s is None or b is None:
            problems.append(Unsupported(o.nodes[-1], "Add/Sub/Mul/Div", f"its constant varies within a channel of "
                                        f"the value {list(shape)} (absnet scales and shifts per channel)"))
            continue
        if prev is not None and prev.kind in ("Linear", "Conv2d") and only_user(prev) is o:
            col = s.reshape(-1, *[1] * (prev.params["weight"].ndim - 1))
            prev.params["weight"] = prev.params["weight"] * col
            prev.params["bias"] = prev.params.get("bias", np.zeros(s.shape)) * s + b
            prev.attrs["bias"] = True
            prev.out, prev.nodes = o.out, prev.nodes + o.nodes
            ops.remove(o)
            continue
        if o.ins[0] == start and (s > 0).all() and (len(shape) == 3 or (np.all(s == s[0]) and np.all(b == b[0]))):
            if np.all(s == s[0]) and np.all(b == b[0]):
                s, b = s[:1], b[:1]
            std = [_shortest(1.0 / si, lambda d, si=si: 1.0 / d - si, si) for si in s]
            mean = [_shortest(-bi * d, lambda m, d=d, bi=bi: -m / d - bi, bi / d) for bi, d in zip(b, std, strict=True)]
            o.kind, o.attrs = "Normalize", {"mean": mean, "std": std}
        elif len(shape) in (1, 3):
            o.kind, o.attrs = f"BatchNorm{2 if len(shape) == 3 else 1}d", {"eps": 0.0}
            o.params = {"weight": s, "bias": b, "running_mean": np.zeros_like(s), "running_var": np.ones_like(s)}
        else:
            problems.append(Unsupported(o.nodes[-1], "Add/Sub/Mul/Div", f"a per-channel scale of a value of shape "
                                        f"{list(shape)} (absnet has it for [C] and [C, H, W])"))
    return ops, end, problems
