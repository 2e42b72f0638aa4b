"""The ONNX graph builder under OnnxOps: symbolic values, the dynamic batch axis, constants and nodes.

:class:`Value` is a symbolic tensor (ONNX name, static shape with a :class:`BatchDim` at axis 0 for
batched values, dtype, and its numpy value when known at export time). :class:`GraphBuilder`
appends nodes and initializers: each distinct constant is stored once, a large constant with one-hot
rows is built by OneHot from its indices, and a node identical to an earlier one is not repeated.
:func:`broadcast` is numpy broadcasting of static shapes that keeps the batch on axis 0.
The staging rules themselves are described in :mod:`absnet.backends.onnx.ops`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ONEHOT_MIN = 1 << 14  # elements of a constant from which a one-hot structure is emitted by OneHot
RANDOM_OPS = frozenset({"RandomUniformLike"})  # never merged: two draws must stay independent

ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
               np.dtype(np.int64): TensorProto.INT64, np.dtype(np.bool_): TensorProto.BOOL}


class StagingError(ValueError):
    """A rule did something the ONNX staging cannot express (e.g. moved the batch off axis 0)."""


class BatchDim(int):
    """Axis 0 of a batched value: ``mult`` times the dynamic batch N. As an int it is ``mult·plan``,
    its extent at the planned batch size: rules only use that number to size work (the row chunks
    of back-substitution), never in the graph."""

    mult: int
    plan: int

    def __new__(cls, mult: int, plan: int = 1) -> BatchDim:
        d = super().__new__(cls, int(mult) * int(plan))
        d.mult, d.plan = int(mult), int(plan)
        return d

    def __repr__(self) -> str:
        return "N" if self.mult == 1 else f"{self.mult}N"


def is_batch(d: Any) -> bool:
    return isinstance(d, BatchDim)


class Value:
    """A symbolic tensor: its ONNX name (None for a constant not yet written), shape, dtype, and
    its numpy value when it is known at export time."""

    __slots__ = ("_parts", "const", "dtype", "hint", "name", "shape")

    def __init__(self, name: str | None, shape: Sequence[int], dtype: Any, const: np.ndarray | None = None,
                 hint: str = "const"):
        self.name, self.shape, self.dtype = name, tuple(shape), np.dtype(dtype)
        self.const, self.hint = const, hint
        self._parts: Any = False  # onehot_parts(const), computed on first use

    def onehot(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(indices, values) when the constant is large and its rows are one-hot (see onehot_parts)."""
        if self._parts is False:
            self._parts = None if self.const is None else onehot_parts(self.const)
        return self._parts

    @property
    def stored(self) -> int:
        """Elements the graph stores for this constant (0 for a computed value)."""
        if self.const is None:
            return 0
        parts = self.onehot()
        return self.const.size if parts is None else 2 * parts[0].size

    @property
    def batched(self) -> bool:
        return bool(self.shape) and is_batch(self.shape[0])

    def __repr__(self) -> str:
        return f"Value({self.name or self.hint}, {list(self.shape)}, {self.dtype})"


def extent(d: int) -> int:
    """An extent as a number: a BatchDim counts its multiplier (the extent per batch element)."""
    return d.mult if isinstance(d, BatchDim) else int(d)


def numel(shape: Sequence[int]) -> int:
    return math.prod(extent(d) for d in shape)


def batch_at_zero(shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    if any(is_batch(d) for d in shape[1:]):
        raise StagingError(f"{what} moves the batch axis off axis 0 (shape {list(shape)})")
    return shape


def broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """numpy broadcasting of static shapes where axis 0 may be a BatchDim."""
    rank = max(len(s) for s in shapes)
    out: list[int] = []
    for i in range(rank):
        dims = [s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0]
        batch = [d for d in dims if is_batch(d)]
        static = {int(d) for d in dims if not is_batch(d) and int(d) != 1}
        if batch:
            if any(b.mult != batch[0].mult for b in batch) or static:
                raise StagingError(f"cannot broadcast {[list(s) for s in shapes]}: the batch meets a static extent")
            out.append(batch[0])
        elif len(static) > 1:
            raise StagingError(f"cannot broadcast {[list(s) for s in shapes]}")
        else:
            out.append(static.pop() if static else 1)
    return batch_at_zero(tuple(out), "broadcasting")


class GraphBuilder:
    """Collects nodes and initializers; writes each distinct constant once."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._consts: dict[tuple, str] = {}
        self._taken: set[str] = set()
        self._seen: dict[tuple, list[str]] = {}
        self._count = 0

    def reserve(self, name: str) -> None:
        """Keep ``name`` (a graph input) from being given to anything else."""
        self._taken.add(name)

    def fresh(self, hint: str) -> str:
        name = hint
        while name in self._taken:
            self._count += 1
            name = f"{hint}_{self._count}"
        self._taken.add(name)
        return name

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> list[str]:
        """Append a node and return its output names; a node identical to an earlier one (same op,
        inputs and attributes) is not repeated (common subexpressions), except random ones."""
        key = (op, tuple(inputs), n_out, repr(sorted(attrs.items())))
        if op not in RANDOM_OPS and key in self._seen:
            return self._seen[key]
        outs = [self.fresh(f"{op}_{len(self.nodes)}" + (f"_{i}" if n_out > 1 else "")) for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=f"n{len(self.nodes)}_{op}", **attrs))
        self._seen[key] = outs
        return outs

    def initializer(self, array: np.ndarray, hint: str) -> str:
        """The name of an initializer holding ``array`` (an existing one if identical)."""
        array = np.asarray(array, order="C")  # (np.ascontiguousarray would make scalars 1-D)
        key = (array.dtype.str, array.shape, hashlib.sha1(array.tobytes()).hexdigest())
        if key not in self._consts:
            name = self.fresh(hint)
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def materialize(self, v: Value) -> str:
        """The ONNX name of ``v``, writing its constant (initializer or OneHot nodes) on first use."""
        if v.name is None:
            assert v.const is not None
            v.name = self._onehot(v) or self.initializer(v.const, v.hint)
        return v.name

    def _onehot(self, v: Value) -> str | None:
        """A constant with one-hot rows as OneHot(indices)·values, reshaped (stores 2 numbers a row)."""
        parts = v.onehot()
        if parts is None:
            return None
        c = v.const
        assert c is not None
        key = (c.dtype.str, c.shape, hashlib.sha1(np.asarray(c, order="C").tobytes()).hexdigest())
        if key in self._consts:
            return self._consts[key]
        idx, vals = parts
        # depth as a scalar: onnx.reference rejects the 1-element form the spec also allows
        depth = self.initializer(np.array(c.shape[-1], np.int64), "onehot_depth")
        onoff = self.initializer(np.array([0, 1], c.dtype), "onehot_values")
        (t,) = self.node("OneHot", [self.initializer(idx, f"{v.hint}_index"), depth, onoff], axis=-1)
        if not np.all(vals == 1):
            (t,) = self.node("Mul", [t, self.initializer(vals.reshape(-1, 1), f"{v.hint}_value")])
        (t,) = self.node("Reshape", [t, self.initializer(np.array(c.shape, np.int64), "shape")])
        self._consts[key] = t
        return t


def onehot_parts(c: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For a float constant of at least ONEHOT_MIN elements whose rows (along the last axis) hold at
    most one non-zero each: the column (int64) and value of each row's non-zero; else None."""
    if c.size < ONEHOT_MIN or c.ndim < 2 or c.dtype.kind != "f" or c.shape[-1] < 4:
        return None
    rows = c.reshape(-1, c.shape[-1])
    nz = rows != 0
    if nz.sum(axis=1).max() > 1:
        return None
    idx = nz.argmax(axis=1).astype(np.int64)
    return idx, rows[np.arange(rows.shape[0]), idx]


def onnx_type(dtype: Any) -> int:
    """The TensorProto element type of a numpy dtype."""
    return ONNX_TYPES[np.dtype(dtype)]
