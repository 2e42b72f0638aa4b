"""OnnxOps: the tensor-ops facade staged out as an ONNX graph (DESIGN §4).

A rule calls OnnxOps exactly as it calls TorchOps; every call appends ONNX nodes to a
:class:`~absnet.backends.onnx.emit.GraphBuilder` and returns a symbolic
:class:`~absnet.backends.onnx.emit.Value` (name, static shape, dtype; ``emit.py`` holds both). The
semantics are TorchOps's: numpy broadcasting; ``gather``/``scatter`` are GatherElements /
ScatterElements; ``topk`` is TopK(largest=1, sorted=1) with int64 indices; ``sum``/``max`` are
ReduceSum/ReduceMax; Python numbers given as operands become constants of the other operand's dtype.

Rules of the staging:
- **Batch.** Axis 0 of every value computed from the graph inputs is dynamic. Rules fold generators
  into it, so its extent is k·N for a static multiplier k; ``shape()`` reports it as a
  :class:`BatchDim` (an ``int``: k times the batch size the graph is planned for, ``plan_batch``,
  which rules may use to size work such as back-substitution chunks) and every other extent as a
  plain int. Reshape recognises a BatchDim (or a ``-1``) at axis 0 and writes ``-1`` there, every other
  extent as a number, so no batch size is ever baked into the graph. The batch must stay on axis 0.
- **Constants.** ``constant`` and the parameters are values with a known numpy array. An op whose
  inputs are all known is folded at export time, by TorchOps itself (so folded numbers are the
  torch backend's, bit for bit), unless the result would be large (over ``FOLD_LIMIT`` elements and
  larger than what the graph stores for its inputs): then the node is emitted. A constant becomes
  an initializer only when an emitted node reads it; identical ones are stored once; a large
  constant whose rows are one-hot (identity matrices, the [I; −I] objective rows of
  back-substitution) is built by OneHot from its indices instead of stored densely.
- A node identical to an earlier one (op, inputs, attributes) is not emitted again: rules recompute
  e.g. a zonotope's radius for its lower and its upper bound.
- ``detach`` is the identity (no node); ``zeros_like`` of a batched value is
  ConstantOfShape(Shape(x)); ``rand_like`` is RandomUniformLike without a seed: onnxruntime's
  random stream differs from torch's, so randomised directives (CorrRand, DecorrRand) give
  different (equally sound) bounds than the torch backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from onnx import helper

from absnet.backends.onnx.emit import (
    ONNX_TYPES,
    BatchDim,
    GraphBuilder,
    StagingError,
    Value,
    batch_at_zero,
    broadcast,
    extent,
    is_batch,
    numel,
    onnx_type,
)
from absnet.backends.torch.ops import TorchOps

FOLD_LIMIT = 1 << 12  # elements of a folded result above which (if it grows) the node is emitted instead
_NP_OF_TORCH = {torch.float32: np.float32, torch.float64: np.float64, torch.int64: np.int64, torch.bool: np.bool_}

__all__ = ["BatchDim", "GraphBuilder", "OnnxOps", "StagingError", "Value", "broadcast", "is_batch", "onnx_type"]


class OnnxOps:
    """ONNX staging of :class:`absnet.transformers.tensor_ops.TensorOps` (see the module docstring)."""

    name = "onnx"

    def __init__(self, builder: GraphBuilder | None = None, opset: int = 17, plan_batch: int = 1):
        self.g = builder or GraphBuilder()
        self.opset, self.plan_batch = opset, plan_batch
        self._torch = TorchOps()

    # ------------------------------------------------------------------ values
    def input(self, name: str, shape: Sequence[int], dtype: Any = np.float32, batched: bool = True) -> Value:
        """A graph input; with ``batched`` a dynamic batch axis N is prepended to ``shape``."""
        self.g.reserve(name)
        return Value(name, ((BatchDim(1, self.plan_batch),) if batched else ()) + tuple(shape), dtype)

    def known(self, array: Any, dtype: Any = None, hint: str = "const") -> Value:
        """A constant value (written as an initializer only if a node reads it)."""
        a = np.asarray(array, dtype=dtype)
        return Value(None, a.shape, a.dtype, a, hint)

    def emit(self, op: str, inputs: Sequence[Value | None], shape: Sequence[int], dtype: Any, /,
             n_out: int = 1, **attrs: Any) -> Any:
        """Append one node (not part of the facade: export uses it for Equal/Cast); returns its
        output Value, or a list of them when ``n_out > 1``."""
        names = ["" if v is None else self.g.materialize(v) for v in inputs]
        outs = [Value(n, shape, dtype) for n in self.g.node(op, names, n_out, **attrs)]
        return outs if n_out > 1 else outs[0]

    def _lift(self, a: Any, like: Any) -> Value:
        if isinstance(a, Value):
            return a
        dtype = like.dtype if isinstance(like, Value) else np.float32
        return self.known(a, dtype)

    def _folds(self, inputs: Sequence[Value], shape: Sequence[int]) -> bool:
        if not all(v.const is not None for v in inputs):
            return False
        n = numel(shape)
        return n <= FOLD_LIMIT or n <= sum(v.stored for v in inputs)

    def _fold(self, method: str, *args: Any, **kw: Any) -> Any:
        """Compute ``method`` with TorchOps on the known values (exactly the torch backend's numbers)."""
        def tt(a: Any) -> Any:
            if isinstance(a, list):
                return [tt(v) for v in a]
            return torch.from_numpy(np.array(a.const)) if isinstance(a, Value) else a

        out = getattr(self._torch, method)(*(tt(a) for a in args), **kw)
        wrap = lambda t: self.known(t.numpy(), _NP_OF_TORCH[t.dtype], method)  # noqa: E731
        return tuple(wrap(t) for t in out) if isinstance(out, tuple) else wrap(out)

    # ------------------------------------------------------------------ elementwise
    def _elementwise(self, method: str, op: str, xs: Sequence[Value], dtype: Any = None) -> Value:
        shape = broadcast(*(x.shape for x in xs))
        if self._folds(xs, shape):
            return self._fold(method, *xs)
        return self.emit(op, xs, shape, dtype or xs[-1].dtype)

    def _binary(self, method: str, op: str, a: Any, b: Any, dtype: Any = None) -> Value:
        a, b = self._lift(a, b), self._lift(b, a)
        return self._elementwise(method, op, [a, b], dtype)

    def add(self, a: Any, b: Any) -> Value:
        return self._binary("add", "Add", a, b)

    def sub(self, a: Any, b: Any) -> Value:
        return self._binary("sub", "Sub", a, b)

    def mul(self, a: Any, b: Any) -> Value:
        return self._binary("mul", "Mul", a, b)

    def div(self, a: Any, b: Any) -> Value:
        return self._binary("div", "Div", a, b)

    def minimum(self, a: Any, b: Any) -> Value:
        return self._binary("minimum", "Min", a, b)

    def maximum(self, a: Any, b: Any) -> Value:
        return self._binary("maximum", "Max", a, b)

    def greater(self, a: Any, b: Any) -> Value:
        return self._binary("greater", "Greater", a, b, np.bool_)

    def neg(self, a: Value) -> Value:
        return self._elementwise("neg", "Neg", [a])

    def abs(self, a: Value) -> Value:
        return self._elementwise("abs", "Abs", [a])

    def exp(self, a: Value) -> Value:
        return self._elementwise("exp", "Exp", [a])

    def log(self, a: Value) -> Value:
        return self._elementwise("log", "Log", [a])

    def sqrt(self, a: Value) -> Value:
        return self._elementwise("sqrt", "Sqrt", [a])

    def relu(self, a: Value) -> Value:
        return self._elementwise("relu", "Relu", [a])

    def where(self, cond: Value, a: Any, b: Any) -> Value:
        a, b = self._lift(a, b), self._lift(b, a)
        return self._elementwise("where", "Where", [cond, a, b], a.dtype)

    # ------------------------------------------------------------------ linear algebra
    def matmul(self, a: Value, b: Value) -> Value:
        sa = (1, *a.shape) if len(a.shape) == 1 else a.shape
        sb = (*b.shape, 1) if len(b.shape) == 1 else b.shape
        if is_batch(sa[-1]) or is_batch(sb[-2]) or int(sa[-1]) != int(sb[-2]):
            raise StagingError(f"matmul of {list(a.shape)} and {list(b.shape)}")
        lead = broadcast(sa[:-2], sb[:-2]) if len(sa) > 2 or len(sb) > 2 else ()
        shape = (*lead, sa[-2], sb[-1])
        if len(a.shape) == 1:
            shape = (*shape[:-2], shape[-1])
        if len(b.shape) == 1:
            shape = shape[:-1]
        shape = batch_at_zero(shape, "matmul")
        if self._folds([a, b], shape):
            return self._fold("matmul", a, b)
        return self.emit("MatMul", [a, b], shape, a.dtype)

    @staticmethod
    def _conv_attrs(stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int) -> dict:
        return {"strides": list(stride), "pads": [*padding, *padding], "dilations": list(dilation), "group": groups}

    def conv(self, x: Value, w: Value, bias: Value | None, stride: Sequence[int], padding: Sequence[int],
             dilation: Sequence[int], groups: int) -> Value:
        k = w.shape[2:]
        spatial = [(int(x.shape[2 + i]) + 2 * padding[i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1
                   for i in range(2)]
        shape = (x.shape[0], w.shape[0], *spatial)
        ins = [x, w] if bias is None else [x, w, bias]
        if self._folds(ins, shape):
            return self._fold("conv", x, w, bias, stride, padding, dilation, groups)
        return self.emit("Conv", ins, shape, x.dtype, kernel_shape=list(k),
                         **self._conv_attrs(stride, padding, dilation, groups))

    def conv_transpose(self, x: Value, w: Value, stride: Sequence[int], padding: Sequence[int],
                       output_padding: Sequence[int], dilation: Sequence[int], groups: int) -> Value:
        k = w.shape[2:]
        spatial = [(int(x.shape[2 + i]) - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k[i] - 1)
                   + output_padding[i] + 1 for i in range(2)]
        shape = (x.shape[0], w.shape[1] * groups, *spatial)
        if self._folds([x, w], shape):
            return self._fold("conv_transpose", x, w, stride, padding, output_padding, dilation, groups)
        return self.emit("ConvTranspose", [x, w], shape, x.dtype, kernel_shape=list(k),
                         output_padding=list(output_padding), **self._conv_attrs(stride, padding, dilation, groups))

    # ------------------------------------------------------------------ reductions
    def _reduce(self, method: str, op: str, x: Value, axes: Sequence[int], keepdims: bool) -> Value:
        rank = len(x.shape)
        ax = sorted({a % rank for a in axes})
        if not ax:
            raise StagingError(f"{method} over no axes")
        shape = tuple((1 if i in ax else d) for i, d in enumerate(x.shape) if keepdims or i not in ax)
        if self._folds([x], shape):
            return self._fold(method, x, list(axes), keepdims)
        axes_t = self.known(np.array(ax, np.int64), hint="axes")
        if op == "ReduceSum" or self.opset >= 18:
            return self.emit(op, [x, axes_t], shape, x.dtype, keepdims=int(keepdims))
        return self.emit(op, [x], shape, x.dtype, axes=ax, keepdims=int(keepdims))

    def sum(self, x: Value, axes: Sequence[int], keepdims: bool = False) -> Value:
        return self._reduce("sum", "ReduceSum", x, axes, keepdims)

    def max(self, x: Value, axes: Sequence[int], keepdims: bool = False) -> Value:
        return self._reduce("max", "ReduceMax", x, axes, keepdims)

    # ------------------------------------------------------------------ shape and indexing
    def shape(self, x: Value) -> tuple[int, ...]:
        return x.shape

    def reshape(self, x: Value, shape: Sequence[int]) -> Value:
        target = list(shape)
        static = [int(d) for i, d in enumerate(target) if d != -1 and not (i == 0 and is_batch(d))]
        if any(is_batch(d) for d in target[1:]) or target.count(-1) > 1 or any(d < 0 for d in static):
            raise StagingError(f"reshape of {list(x.shape)} to {target}")
        size = numel(x.shape)  # per batch element when batched
        if x.batched:
            if is_batch(target[0]):
                if -1 in target[1:]:
                    target[target.index(-1, 1)] = size // (target[0].mult * numel(static) or 1)
                mult = target[0].mult
            elif target[0] == -1:
                mult = size // (numel(static) or 1)
            else:
                raise StagingError(f"reshape of batched {list(x.shape)} to {target}: axis 0 must stay the batch")
            out = (BatchDim(mult, x.shape[0].plan), *(int(d) for d in target[1:]))
        else:
            if any(is_batch(d) for d in target):
                raise StagingError(f"reshape of unbatched {list(x.shape)} to batched {target}")
            if -1 in target:
                target[target.index(-1)] = size // (numel(static) or 1)
            out = tuple(int(d) for d in target)
        if numel(out) != size:
            raise StagingError(f"reshape of {list(x.shape)} to {list(shape)}: element counts differ")
        if self._folds([x], out):
            return self.known(x.const.reshape([int(d) for d in out]), hint=x.hint)  # type: ignore[union-attr]
        dims = [-1 if x.batched and i == 0 else int(d) for i, d in enumerate(out)]
        return self.emit("Reshape", [x, self.known(np.array(dims, np.int64), hint="shape")], out, x.dtype)

    def transpose(self, x: Value, perm: Sequence[int]) -> Value:
        shape = batch_at_zero(tuple(x.shape[p] for p in perm), "transpose")
        if self._folds([x], shape):
            return self._fold("transpose", x, perm)
        return self.emit("Transpose", [x], shape, x.dtype, perm=list(perm))

    def concat(self, xs: Sequence[Value], axis: int) -> Value:
        xs = list(xs)
        rank = len(xs[0].shape)
        axis %= rank
        for x in xs:
            same = all(extent(a) == extent(b) and is_batch(a) == is_batch(b)
                       for i, (a, b) in enumerate(zip(x.shape, xs[0].shape)) if i != axis)
            if len(x.shape) != rank or not same or is_batch(x.shape[axis]):
                raise StagingError(f"concat along {axis} of {[list(v.shape) for v in xs]}")
        shape = list(xs[0].shape)
        shape[axis] = sum(int(x.shape[axis]) for x in xs)
        if self._folds(xs, shape):
            return self._fold("concat", xs, axis)
        return self.emit("Concat", xs, tuple(shape), xs[0].dtype, axis=axis)

    def slice(self, x: Value, axis: int, start: int, end: int, step: int = 1) -> Value:
        axis %= len(x.shape)
        if is_batch(x.shape[axis]):
            raise StagingError("slicing the batch axis")
        shape = list(x.shape)
        shape[axis] = len(range(*slice(start, end, step).indices(int(x.shape[axis]))))
        if self._folds([x], shape):
            return self._fold("slice", x, axis, start, end, step)
        i64 = lambda v: self.known(np.array([v], np.int64), hint="slice")  # noqa: E731
        end = min(end, int(x.shape[axis]))
        return self.emit("Slice", [x, i64(start), i64(end), i64(axis), i64(step)], tuple(shape), x.dtype)

    def pad(self, x: Value, pads: Sequence[tuple[int, int]], value: float = 0.0) -> Value:
        rank = len(x.shape)
        full = [(0, 0)] * (rank - len(pads)) + [tuple(p) for p in pads]
        if x.batched and full[0] != (0, 0):
            raise StagingError("padding the batch axis")
        shape = tuple(d if b == a == 0 else int(d) + b + a for d, (b, a) in zip(x.shape, full))
        if self._folds([x], shape):
            return self._fold("pad", x, pads, value)
        flat = np.array([b for b, _ in full] + [a for _, a in full], np.int64)
        fill = self.known(np.array(value, x.dtype), hint="pad_value")
        return self.emit("Pad", [x, self.known(flat, hint="pads"), fill], shape, x.dtype, mode="constant")

    def topk(self, x: Value, k: int, axis: int) -> tuple[Value, Value]:
        axis %= len(x.shape)
        if is_batch(x.shape[axis]):
            raise StagingError("topk along the batch axis")
        shape = tuple(k if i == axis else d for i, d in enumerate(x.shape))
        if self._folds([x], shape):
            return self._fold("topk", x, k, axis)
        vals, idx = self.emit("TopK", [x, self.known(np.array([k], np.int64), hint="k")], shape, x.dtype, n_out=2,
                              axis=axis, largest=1, sorted=1)
        idx.dtype = np.dtype(np.int64)
        return vals, idx

    def gather(self, x: Value, indices: Value, axis: int) -> Value:
        if self._folds([x, indices], indices.shape):
            return self._fold("gather", x, indices, axis)
        return self.emit("GatherElements", [x, indices], indices.shape, x.dtype, axis=axis % len(x.shape))

    def scatter(self, x: Value, indices: Value, updates: Value, axis: int) -> Value:
        if self._folds([x, indices, updates], x.shape):
            return self._fold("scatter", x, indices, updates, axis)
        return self.emit("ScatterElements", [x, indices, updates], x.shape, x.dtype, axis=axis % len(x.shape))

    # ------------------------------------------------------------------ constants and randomness
    def constant(self, value: Any, like: Value) -> Value:
        return self.known(value, like.dtype)

    def zeros_like(self, x: Value) -> Value:
        if not x.batched:
            return self.known(np.zeros([int(d) for d in x.shape], x.dtype), hint="zeros")
        shp = self.emit("Shape", [x], (len(x.shape),), np.int64)
        fill = helper.make_tensor("value", ONNX_TYPES[x.dtype], [1], [0])
        return self.emit("ConstantOfShape", [shp], x.shape, x.dtype, value=fill)

    def rand_like(self, x: Value) -> Value:
        return self.emit("RandomUniformLike", [x], x.shape, x.dtype, dtype=ONNX_TYPES[x.dtype])

    def detach(self, x: Value) -> Value:
        return x
