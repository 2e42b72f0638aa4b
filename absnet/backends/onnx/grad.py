"""Reverse-mode differentiation of a recorded ONNX node program (DESIGN §4, feasibility §4c).

The forward is staged by :class:`TrainOps` (OnnxOps that remembers every value's static shape and
stages ``detach`` as a stop-gradient Identity). :func:`gradients` then walks the recorded nodes
backwards and applies one vector-Jacobian rule per ONNX op type, each written as ONNX nodes (facade
calls where the facade has the op). For y = f(x₁, …, xₖ) and the cotangent ḡ = ∂L/∂y a rule returns
x̄ᵢ = (∂y/∂xᵢ)ᵀ ḡ; a value read by several nodes sums its cotangents.

Broadcasting ops (Add, Sub, Mul, Div, Min, Max, Where, MatMul) *unbroadcast*: the cotangent is
summed over the axes an input was broadcast along (leading axes it lacks, extents of 1 that grew).
Subgradients follow torch's autograd, so trained weights match torch's:
- Relu: ḡ·[y > 0]; Abs: ḡ·sign(x) (0 at 0);
- Max/Min of two tensors: ḡ to the larger/smaller, ḡ/2 to each on a tie (torch.maximum/minimum);
- ReduceMax: ḡ split evenly among the tied maxima (torch.amax);
- Where: ḡ to the branch taken; comparisons, Shape, Cast, OneHot, … carry no gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from onnx import helper

from absnet.backends.onnx.emit import StagingError, Value, broadcast, is_batch, onnx_type
from absnet.backends.onnx.ops import OnnxOps

#: ops whose outputs carry no gradient (piecewise constant, or integer/shape valued)
NONDIFF = frozenset({"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Sign",
                     "Shape", "Size", "ConstantOfShape", "OneHot", "RandomUniformLike", "Cast", "ArgMax"})


class TrainOps(OnnxOps):
    """OnnxOps for differentiable graphs: records the :class:`Value` behind every ONNX name (the
    shapes the VJP rules need) and stages ``detach`` as an Identity that stops gradients."""

    def __init__(self, opset: int = 17, plan_batch: int = 1):
        super().__init__(opset=opset, plan_batch=plan_batch)
        self.values: dict[str, Value] = {}
        self.stopped: set[str] = set()

    def input(self, name: str, shape: Sequence[int], dtype: Any = np.float32, batched: bool = True) -> Value:
        v = super().input(name, shape, dtype, batched)
        self.values[name] = v
        return v

    def emit(self, op: str, inputs: Sequence[Value | None], shape: Sequence[int], dtype: Any, /,
             n_out: int = 1, **attrs: Any) -> Any:
        for v in inputs:
            if v is not None:
                self.values[self.g.materialize(v)] = v
        out = super().emit(op, inputs, shape, dtype, n_out, **attrs)
        for v in out if n_out > 1 else [out]:
            self.values[v.name] = v
        return out

    def detach(self, x: Value) -> Value:
        if x.const is not None:
            return x
        y = self.emit("Identity", [x], x.shape, x.dtype)
        self.stopped.add(y.name)
        return y


# --------------------------------------------------------------------------- helpers

Rule = Callable[[TrainOps, list, list, list, dict, list], list]
VJP: dict[str, Rule] = {}


def vjp(*ops: str) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for op in ops:
            VJP[op] = fn
        return fn
    return deco


def unbroadcast(ops: TrainOps, g: Value, shape: Sequence[int]) -> Value:
    """Sum ``g`` over the axes along which a value of ``shape`` was broadcast to ``g``'s shape."""
    lead = len(g.shape) - len(shape)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(shape) if not is_batch(d) and int(d) == 1
                                and (is_batch(g.shape[lead + i]) or int(g.shape[lead + i]) != 1)]
    if not axes:
        return g
    r = ops.sum(g, axes, keepdims=True)
    return ops.reshape(r, list(shape)) if lead or tuple(r.shape) != tuple(shape) else r


def _expand(ops: TrainOps, g: Value, like: Value) -> Value:
    """Broadcast ``g`` (keepdims-shaped) to ``like``'s shape (runtime shape when batched)."""
    if like.batched:
        shp = ops.emit("Shape", [like], (len(like.shape),), np.int64)
    else:
        shp = ops.known(np.array([int(d) for d in like.shape], np.int64), hint="shape")
    return ops.emit("Expand", [g, shp], like.shape, g.dtype)


def _keep_shape(x: Value, axes: Sequence[int]) -> list[int]:
    return [1 if i in axes else d for i, d in enumerate(x.shape)]


def _axes(x: Value, xs: list, attrs: dict) -> list[int]:
    ax = attrs.get("axes")
    if ax is None and len(xs) > 1 and xs[1] is not None:
        ax = xs[1].const.tolist()
    if ax is None:
        ax = list(range(len(x.shape)))
    return sorted(int(a) % len(x.shape) for a in ax)


# --------------------------------------------------------------------------- elementwise rules


@vjp("Add")
def _add(ops, xs, ys, gs, attrs, need):
    return [unbroadcast(ops, gs[0], x.shape) for x in xs]


@vjp("Sub")
def _sub(ops, xs, ys, gs, attrs, need):
    g = gs[0]
    return [unbroadcast(ops, g, xs[0].shape), unbroadcast(ops, ops.neg(g), xs[1].shape) if need[1] else None]


@vjp("Mul")
def _mul(ops, xs, ys, gs, attrs, need):
    a, b = xs
    g = gs[0]
    return [unbroadcast(ops, ops.mul(g, b), a.shape) if need[0] else None,
            unbroadcast(ops, ops.mul(g, a), b.shape) if need[1] else None]


@vjp("Div")
def _div(ops, xs, ys, gs, attrs, need):
    a, b = xs
    g = gs[0]
    return [unbroadcast(ops, ops.div(g, b), a.shape) if need[0] else None,
            unbroadcast(ops, ops.neg(ops.div(ops.mul(g, ys[0]), b)), b.shape) if need[1] else None]


@vjp("Neg")
def _neg(ops, xs, ys, gs, attrs, need):
    return [ops.neg(gs[0])]


@vjp("Identity")
def _identity(ops, xs, ys, gs, attrs, need):
    return [gs[0]]


@vjp("Abs")
def _abs(ops, xs, ys, gs, attrs, need):
    sign = ops.emit("Sign", [xs[0]], xs[0].shape, xs[0].dtype)
    return [ops.mul(gs[0], sign)]


@vjp("Relu")
def _relu(ops, xs, ys, gs, attrs, need):
    return [ops.where(ops.greater(ys[0], 0.0), gs[0], 0.0)]


@vjp("Exp")
def _exp(ops, xs, ys, gs, attrs, need):
    return [ops.mul(gs[0], ys[0])]


@vjp("Log")
def _log(ops, xs, ys, gs, attrs, need):
    return [ops.div(gs[0], xs[0])]


@vjp("Sqrt")
def _sqrt(ops, xs, ys, gs, attrs, need):
    return [ops.div(gs[0], ops.mul(ys[0], 2.0))]


def _minmax(is_max: bool) -> Rule:
    def rule(ops, xs, ys, gs, attrs, need):
        if len(xs) != 2:
            raise StagingError(f"no VJP rule for a {len(xs)}-input Max/Min")
        a, b = xs
        g = gs[0]
        eq = ops.emit("Equal", [a, b], broadcast(a.shape, b.shape), np.bool_)
        half = ops.where(eq, ops.mul(g, 0.5), 0.0)
        a_wins = ops.greater(a, b) if is_max else ops.greater(b, a)
        b_wins = ops.greater(b, a) if is_max else ops.greater(a, b)
        return [unbroadcast(ops, ops.where(a_wins, g, half), a.shape) if need[0] else None,
                unbroadcast(ops, ops.where(b_wins, g, half), b.shape) if need[1] else None]
    return rule


VJP["Max"], VJP["Min"] = _minmax(True), _minmax(False)


@vjp("Where")
def _where(ops, xs, ys, gs, attrs, need):
    c, a, b = xs
    g = gs[0]
    return [None, unbroadcast(ops, ops.where(c, g, 0.0), a.shape) if need[1] else None,
            unbroadcast(ops, ops.where(c, 0.0, g), b.shape) if need[2] else None]


# --------------------------------------------------------------------------- linear algebra


def _swap(ops: TrainOps, v: Value) -> Value:
    r = len(v.shape)
    return ops.transpose(v, [*range(r - 2), r - 1, r - 2])


@vjp("MatMul")
def _matmul(ops, xs, ys, gs, attrs, need):
    a, b = xs
    g = gs[0]
    if len(a.shape) < 2 or len(b.shape) < 2:
        # a vector operand is a one-row (a) or one-column (b) matrix; the result lacks that axis
        a2 = ops.reshape(a, (1, *a.shape)) if len(a.shape) < 2 else a
        b2 = ops.reshape(b, (*b.shape, 1)) if len(b.shape) < 2 else b
        full = list(g.shape)
        if len(a.shape) < 2:
            full.insert(len(full) - (1 if len(b.shape) >= 2 else 0), 1)
        if len(b.shape) < 2:
            full.append(1)
        ga, gb = _matmul(ops, [a2, b2], ys, [ops.reshape(g, full)], attrs, need)
        return [None if ga is None else ops.reshape(ga, a.shape), None if gb is None else ops.reshape(gb, b.shape)]
    ga = unbroadcast(ops, ops.matmul(g, _swap(ops, b)), a.shape) if need[0] else None
    gb = None
    if need[1]:
        if a.batched and not b.batched and len(b.shape) == 2:
            # Σ over the batch and every leading axis: one Gemm of the flattened rows, aᵀ·g
            k, n = int(b.shape[0]), int(b.shape[1])
            a2, g2 = ops.reshape(a, [-1, k]), ops.reshape(g, [-1, n])
            gb = ops.emit("Gemm", [a2, g2], (k, n), a.dtype, transA=1)
        else:
            gb = unbroadcast(ops, ops.matmul(_swap(ops, a), g), b.shape)
    return [ga, gb]


def _conv_args(op: str, attrs: dict, w: Value) -> tuple[list[int], list[int], list[int], list[int], int]:
    """Strides, pads (one side), dilations, kernel extent and groups of a Conv/ConvTranspose node."""
    p = list(attrs["pads"])[:2]
    if list(attrs["pads"])[2:] != p:
        raise StagingError(f"no VJP rule for a {op} with asymmetric pads")
    k = [int(v) for v in w.shape[2:]]
    return list(attrs["strides"]), p, list(attrs["dilations"]), k, int(attrs.get("group", 1))


@vjp("Conv")
def _conv(ops, xs, ys, gs, attrs, need):
    x, w = xs[0], xs[1]
    g = gs[0]
    s, p, d, k, groups = _conv_args("Conv", attrs, w)
    out = [int(v) for v in g.shape[2:]]
    gx = None
    if need[0]:
        # ConvTranspose with Conv's weight (C_out, C_in/groups, k, k) maps back to C_in channels
        opad = [int(x.shape[2 + i]) - ((out[i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1) for i in range(2)]
        gx = ops.conv_transpose(g, w, s, p, opad, d, groups)
    gw = _conv_weight_grad(ops, x, g, s, p, d, k, groups) if need[1] else None
    gb = ops.sum(g, [0, 2, 3]) if len(xs) > 2 and need[2] else None
    return [gx, gw, gb]


@vjp("ConvTranspose")
def _conv_transpose(ops, xs, ys, gs, attrs, need):
    # ConvTranspose(x, w) is the adjoint of Conv(·, w): ⟨g, Convᵀ(x)⟩ = ⟨Conv(g), x⟩. So dx is Conv(g, w)
    # with the same attributes, and dw is Conv's weight gradient with g as its input and x as its output's
    x, w = xs[0], xs[1]
    g = gs[0]
    if len(xs) > 2:
        raise StagingError("no VJP rule for a ConvTranspose with a bias")
    s, p, d, k, groups = _conv_args("ConvTranspose", attrs, w)
    gx = ops.conv(g, w, None, s, p, d, groups) if need[0] else None
    if gx is not None and tuple(gx.shape[2:]) != tuple(x.shape[2:]):
        raise StagingError(f"ConvTranspose output padding {attrs.get('output_padding')} is not below the stride")
    gw = _conv_weight_grad(ops, g, x, s, p, d, k, groups) if need[1] else None
    return [gx, gw]


def _conv_weight_grad(ops: TrainOps, x: Value, g: Value, s: list[int], p: list[int], d: list[int],
                      k: list[int], groups: int) -> Value:
    """dW[o, c] = Σ_n x[n, c] ⋆ g[n, o]: one Conv over the batch with channels and batch swapped and
    stride and dilation exchanged; rows past the kernel (from the stride's floor) are cut. Grouped:
    every (c, o) pair is computed, then each group's diagonal block is kept."""
    out = [int(v) for v in g.shape[2:]]
    ci, co = int(x.shape[1]), int(g.shape[1])
    xt = ops.emit("Transpose", [x], (ci, x.shape[0], *x.shape[2:]), x.dtype, perm=[1, 0, 2, 3])
    gt = ops.emit("Transpose", [g], (co, g.shape[0], *g.shape[2:]), g.dtype, perm=[1, 0, 2, 3])
    full = [(int(x.shape[2 + i]) + 2 * p[i] - s[i] * (out[i] - 1) - 1) // d[i] + 1 for i in range(2)]
    r = ops.emit("Conv", [xt, gt], (ci, co, *full), x.dtype, strides=d, dilations=s, pads=[*p, *p])
    for i in range(2):
        if full[i] != k[i]:
            r = ops.slice(r, 2 + i, 0, k[i])
    r = ops.transpose(r, [1, 0, 2, 3])  # (C_out, C_in, k, k)
    if groups == 1:
        return r
    cog, cig = co // groups, ci // groups
    r = ops.reshape(r, [groups, cog, groups, cig, *k])
    mask = ops.known(np.eye(groups, dtype=np.float32).reshape(groups, 1, groups, 1, 1, 1), hint="group_mask")
    return ops.reshape(ops.sum(ops.mul(r, mask), [2]), [co, cig, *k])


# --------------------------------------------------------------------------- reductions and shapes


@vjp("ReduceSum")
def _reduce_sum(ops, xs, ys, gs, attrs, need):
    x = xs[0]
    axes = _axes(x, xs, attrs)
    g = ops.reshape(gs[0], _keep_shape(x, axes))
    return [_expand(ops, g, x)]


@vjp("ReduceMax")
def _reduce_max(ops, xs, ys, gs, attrs, need):
    x = xs[0]
    axes = _axes(x, xs, attrs)
    keep = _keep_shape(x, axes)
    y, g = ops.reshape(ys[0], keep), ops.reshape(gs[0], keep)
    hit = ops.emit("Equal", [x, y], x.shape, np.bool_)
    mask = ops.emit("Cast", [hit], x.shape, x.dtype, to=onnx_type(x.dtype))
    count = ops.sum(mask, axes, keepdims=True)
    return [ops.mul(ops.div(g, count), mask)]


@vjp("Reshape")
def _reshape(ops, xs, ys, gs, attrs, need):
    return [ops.reshape(gs[0], list(xs[0].shape))]


@vjp("Transpose")
def _transpose(ops, xs, ys, gs, attrs, need):
    return [ops.transpose(gs[0], [int(i) for i in np.argsort(attrs["perm"])])]


@vjp("Concat")
def _concat(ops, xs, ys, gs, attrs, need):
    axis = attrs["axis"] % len(ys[0].shape)
    out, start = [], 0
    for x, want in zip(xs, need):
        n = int(x.shape[axis])
        out.append(ops.slice(gs[0], axis, start, start + n) if want else None)
        start += n
    return out


@vjp("Slice")
def _slice(ops, xs, ys, gs, attrs, need):
    x, g = xs[0], gs[0]
    starts, ends, axes = (xs[i].const.tolist() for i in (1, 2, 3))
    steps = xs[4].const.tolist() if len(xs) > 4 else [1] * len(axes)
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        if sp < 1:
            raise StagingError("no VJP rule for a Slice with a negative step")
        ax %= len(x.shape)
        dim = int(x.shape[ax])
        lo, hi, _ = slice(st, en, sp).indices(dim)
        if sp > 1:
            # interleave sp − 1 zeros after each kept element: (…, n, …) → (…, n, sp, …) → (…, n·sp, …)
            shape = list(g.shape)
            n = int(shape[ax])
            g = ops.reshape(g, [*shape[:ax + 1], 1, *shape[ax + 1:]])
            g = ops.pad(g, [(0, 0)] * (ax + 1) + [(0, sp - 1)] + [(0, 0)] * (len(shape) - ax - 1))
            g = ops.reshape(g, [*shape[:ax], n * sp, *shape[ax + 1:]])
            hi = lo + min(n * sp, dim - lo)
            if n * sp > dim - lo:
                g = ops.slice(g, ax, 0, dim - lo)
        pads = [(0, 0)] * len(x.shape)
        pads[ax] = (lo, dim - hi)
        g = ops.pad(g, pads)
    return [g]


@vjp("Pad")
def _pad(ops, xs, ys, gs, attrs, need):
    x, g = xs[0], gs[0]
    flat = xs[1].const.tolist()
    r = len(x.shape)
    for ax in range(r):
        b = flat[ax]
        if b or flat[r + ax]:
            g = ops.slice(g, ax, b, b + int(x.shape[ax]))
    return [g]


@vjp("GatherElements")
def _gather(ops, xs, ys, gs, attrs, need):
    x, idx = xs
    return [ops.emit("ScatterElements", [ops.zeros_like(x), idx, gs[0]], x.shape, x.dtype, axis=attrs["axis"],
                     reduction="add"), None]


@vjp("ScatterElements")
def _scatter(ops, xs, ys, gs, attrs, need):
    _, idx, upd = xs
    g, axis = gs[0], attrs["axis"]
    return [ops.scatter(g, idx, ops.zeros_like(upd), axis) if need[0] else None, None,
            ops.gather(g, idx, axis) if need[2] else None]


@vjp("TopK")
def _topk(ops, xs, ys, gs, attrs, need):
    x = xs[0]
    if gs[0] is None:
        return [None, None]
    return [ops.emit("ScatterElements", [ops.zeros_like(x), ys[1], gs[0]], x.shape, x.dtype, axis=attrs["axis"],
                     reduction="add"), None]


# --------------------------------------------------------------------------- the pass


def gradients(ops: TrainOps, loss: Value, wrt: Sequence[Value]) -> list[Value]:
    """∂loss/∂w for every w in ``wrt`` (graph inputs), appended to ``ops``'s graph as ONNX nodes.

    ``loss`` must be a scalar. A parameter the loss does not depend on gets a zero gradient.

    Raises:
        StagingError: the forward uses an op that has no VJP rule here (named in the message).
    """
    if loss.shape != ():
        raise StagingError(f"the loss must be a scalar, not {list(loss.shape)}")
    nodes = list(ops.g.nodes)
    live = {ops.g.materialize(w) for w in wrt}
    for n in nodes:
        if n.op_type in NONDIFF or (n.op_type == "Identity" and n.output[0] in ops.stopped):
            continue
        if any(i in live for i in n.input):
            live.update(n.output)
    grads: dict[str, Value] = {}
    if loss.name in live:
        grads[loss.name] = ops.known(np.array(1.0, loss.dtype), hint="seed")
    for n in reversed(nodes):
        if not any(o in grads for o in n.output) or n.output[0] not in live:
            continue
        rule = VJP.get(n.op_type)
        if rule is None:
            raise StagingError(f"no VJP rule for ONNX {n.op_type} (node {n.name})")
        xs = [ops.values.get(i) if i else None for i in n.input]
        ys = [ops.values.get(o) for o in n.output]
        gs = [grads.get(o) for o in n.output]
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        need = [bool(i) and i in live for i in n.input]
        for name, gi, want in zip(n.input, rule(ops, xs, ys, gs, attrs, need), need):
            if not want or gi is None:
                continue
            grads[name] = ops.add(grads[name], gi) if name in grads else gi
    out = []
    for w in wrt:
        gw = grads.get(w.name or "")
        out.append(gw if gw is not None else ops.known(np.zeros([int(d) for d in w.shape], w.dtype), hint="zero"))
    return out
