"""The linear-bounds domain (CROWN family): values known as linear functions of an input set.

A :class:`LinearValue` is one node's output inside a *linear segment*, a DAG that starts at sources
(:class:`InputSet`: the analysis input, or the box reached at a ``ToLinear`` directive). Every other
value keeps its inputs and a backward rule (``transformers/backward.py``): given coefficients
Λ (B, S, *shape) of S linear objectives over the value (B = 1 while they are shared by the batch,
else N) it returns coefficients over each input and a constant c (B, S) such that, for every point
of the input sets,

    Λ·value ≥ Σ_i Λ_i·input_i + c                      (a lower bound; crown_ibp.md §1.4)

:func:`lower_bound` substitutes backwards through the segment in reverse creation order (a
topological order of the DAG, so branches that meet again add their coefficients) and concretises
at the sources: Λ·x ≥ Λ·mid − |Λ|·rad over a box; Λ·x₀ − ε‖Λ‖₂ over an L2 ball, and the larger of
the two when the ball is intersected with the input range. Upper bounds are lower bounds of the
negated objective, so one Λ serves both (objective rows [I; −I]).

Every value also carries an interval ``box``: IBP's bounds, tightened wherever back-substitution
computed bounds. They are CROWN-IBP's intermediate bounds and keep CROWN's no looser than IBP's.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from absnet.domains.box import Box
from absnet.ir.domains import Analysis
from absnet.transformers.tensor_ops import TensorOps

T = Any
_SEQ = itertools.count()


@dataclass(eq=False)
class InputSet:
    """A source of a linear segment: the box [lower, upper] (N, *s), optionally intersected with
    the L2 ball of radius ``eps`` around ``center``."""

    lower: T
    upper: T
    center: T | None = None
    eps: T | None = None


@dataclass
class Backward:
    """Options of one back-substitution: optimised lower slopes (α-CROWN) keyed by node id, shaped
    (N, S, *s); ``collect`` (when a dict) receives each ReLU's default lower slope and unstable mask."""


    alpha: dict[str, T] | None = None
    collect: dict[str, tuple[T, T]] | None = None
    #: when a dict: receives, per value reached (keyed by ``id(value)``), the coefficients Λ over it
    taps: dict[int, T] | None = None


BackwardFn = Callable[[TensorOps, T, Backward], tuple[list[T | None], T | None]]


@dataclass(eq=False)
class LinearValue:
    """One node's output in a linear segment (see the module docstring)."""

    shape: tuple[int, ...]
    box: Box
    analysis: Analysis
    inputs: tuple[LinearValue, ...] = ()
    backward: BackwardFn | None = None
    source: InputSet | None = None
    node: str = ""
    op: str = ""
    seq: int = field(default_factory=lambda: next(_SEQ))
    interval: tuple[T, T] | None = None  # back-substituted (and IBP-intersected) bounds, once computed

    kind = "linear"

    @property
    def center(self) -> T:
        return self.box.center

    @staticmethod
    def from_set(s: InputSet, analysis: Analysis, ops: TensorOps, node: str = "input") -> LinearValue:
        return LinearValue(tuple(ops.shape(s.lower)[1:]), Box.from_bounds(ops, s.lower, s.upper), analysis,
                           source=s, node=node, interval=(s.lower, s.upper))

    def lower(self, ops: TensorOps) -> T:
        return bounds(ops, self)[0]

    def upper(self, ops: TensorOps) -> T:
        return bounds(ops, self)[1]


# --------------------------------------------------------------------------- back-substitution


def ancestors(value: LinearValue) -> list[LinearValue]:
    """Every value ``value`` depends on (itself included), latest first: a reverse topological order."""
    seen: dict[int, LinearValue] = {}
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen[id(v)] = v
        stack.extend(v.inputs)
    return sorted(seen.values(), key=lambda v: v.seq, reverse=True)


def lower_bound(ops: TensorOps, value: LinearValue, spec: T, bw: Backward | None = None) -> T:
    """A lower bound (N, S) of spec·value over the segment's input sets; ``spec`` is (B, S, *shape)."""
    bw = bw or Backward()
    lams: dict[int, T] = {id(value): spec}
    total: T | None = None
    for v in ancestors(value):
        lam = lams.pop(id(v), None)
        if lam is None:
            continue
        if bw.taps is not None:
            bw.taps[id(v)] = lam
        if v.source is not None:
            c = concretize(ops, lam, v.source)
        else:
            assert v.backward is not None
            in_lams, c = v.backward(ops, lam, bw)
            for inp, new in zip(v.inputs, in_lams, strict=True):
                if new is not None:
                    old = lams.get(id(inp))
                    lams[id(inp)] = new if old is None else ops.add(old, new)
        if c is not None:
            total = c if total is None else ops.add(total, c)
    assert total is not None
    return total


def concretize(ops: TensorOps, lam: T, s: InputSet) -> T:
    """min over the input set of Λ·x (B, S): the box term, and the L2 term where a ball is given."""
    n = math.prod(ops.shape(lam)[2:])
    flat = ops.reshape(lam, (ops.shape(lam)[0], -1, n))

    def dot(t: T) -> T:  # (B, S, n)·(N, n) → (N, S)
        return ops.reshape(ops.matmul(flat, ops.reshape(t, (-1, n, 1))), (-1, ops.shape(flat)[1]))

    half = ops.constant(0.5, lam)
    mid = ops.mul(ops.add(s.lower, s.upper), half)
    rad = ops.mul(ops.sub(s.upper, s.lower), half)
    box = ops.sub(dot(mid), ops.reshape(ops.matmul(ops.abs(flat), ops.reshape(rad, (-1, n, 1))),
                                        (-1, ops.shape(flat)[1])))
    if s.center is None:
        return box
    # the floor keeps the gradient finite where a row is all zero (behind dead ReLUs); it only lowers the bound
    norm = ops.sqrt(ops.maximum(ops.sum(ops.mul(flat, flat), [2]), ops.constant(1e-30, lam)))
    ball = ops.sub(dot(s.center), ops.mul(norm, ops.reshape(s.eps, (-1, 1))))
    return ops.maximum(box, ball)


def _eye_rows(n: int, start: int, stop: int, like: T, ops: TensorOps) -> T:
    """Rows start..stop of [I; −I] (2n × n) as a constant."""
    r = np.arange(start, stop)
    rows = np.zeros((stop - start, n), dtype=np.float32)
    rows[np.arange(stop - start), r % n] = np.where(r < n, 1.0, -1.0)
    return ops.constant(rows, like)


def _chunk_rows(ops: TensorOps, value: LinearValue, rows: int) -> int:
    """Objective rows per back-substitution so one coefficient tensor stays under the budget
    (ABSNET_CROWN_CHUNK_MIB, default 512 MiB of float32)."""
    budget = float(os.environ.get("ABSNET_CROWN_CHUNK_MIB", "512")) * 2**20 / 4
    batch = max(ops.shape(value.box.center)[0], 1)
    widest = max(math.prod(v.shape) for v in ancestors(value))
    return max(1, min(rows, int(budget // (batch * widest))))


def back_substitute(ops: TensorOps, value: LinearValue) -> tuple[T, T]:
    """Elementwise (lower, upper) bounds (N, *shape) of ``value`` by back-substitution alone."""
    n = math.prod(value.shape)
    like = value.box.center
    chunk = _chunk_rows(ops, value, 2 * n)
    parts = []
    for start in range(0, 2 * n, chunk):
        stop = min(start + chunk, 2 * n)
        spec = ops.reshape(_eye_rows(n, start, stop, like, ops), (1, stop - start, *value.shape))
        parts.append(lower_bound(ops, value, spec))
    lb = parts[0] if len(parts) == 1 else ops.concat(parts, 1)
    lo = ops.reshape(ops.slice(lb, 1, 0, n), (-1, *value.shape))
    hi = ops.neg(ops.reshape(ops.slice(lb, 1, n, 2 * n), (-1, *value.shape)))
    return lo, hi


#: ops whose linear rules are exact affine maps (no relaxation)
AFFINE_OPS = frozenset({"Linear", "Conv2d", "Normalize", "BatchNorm1d", "BatchNorm2d", "AvgPool2d",
                        "AdaptiveAvgPool2d", "Flatten", "Reshape", "Add", "Concat", "Dropout"})


def _affine_of_ball(value: LinearValue) -> bool:
    """Whether ``value`` is an affine map of an L2-ball source: there back-substitution gives the
    exact bounds (the dual-norm rule W·x₀ ± ε‖W_j‖₂ of crown_ibp.md §1.3), and its coefficients stay
    shared by the batch, so CROWN-IBP uses it instead of the ball's bounding box."""
    values = ancestors(value)
    return (any(v.source is not None and v.source.center is not None for v in values)
            and all(v.source is not None or v.op in AFFINE_OPS for v in values))


#: affine ops that mix elements (the others are elementwise or reshape)
MIXING_OPS = frozenset({"Linear", "Conv2d", "AvgPool2d", "AdaptiveAvgPool2d"})


def _one_affine_map_of_box(value: LinearValue) -> bool:
    """Whether ``value`` is a single chain of affine ops over a box source with at most one op that
    mixes elements: interval arithmetic is then exact (each output is Σ w_j x_j + c over a box,
    whose range is c ± Σ |w_j| r_j), so back-substitution cannot improve on IBP."""
    values = ancestors(value)
    if any(len(v.inputs) > 1 or (v.source is None and v.op not in AFFINE_OPS) for v in values):
        return False
    if any(v.source is not None and v.source.center is not None for v in values):
        return False
    return sum(v.op in MIXING_OPS for v in values) <= 1


def interval(ops: TensorOps, value: LinearValue, force: bool = False) -> tuple[T, T]:
    """The intermediate bounds of ``value`` as its analysis defines them: IBP's box (CROWN-IBP;
    back-substitution for affine maps of an L2 ball), or back-substitution (intersected with IBP's
    box unless the analysis says otherwise). ``force``
    back-substitutes even under CROWN-IBP (at outputs and Concretize). Cached on the value, whose
    box is tightened to the result."""
    if value.interval is not None:
        return value.interval
    a = value.analysis
    if a.intermediate == "ibp" and not force and not _affine_of_ball(value):
        return value.box.lower(ops), value.box.upper(ops)
    if _one_affine_map_of_box(value):  # IBP is exact there: skip the n-row back-substitution
        value.interval = (value.box.lower(ops), value.box.upper(ops))
        return value.interval
    if a.proj and not force and a.proj < math.prod(value.shape):
        from absnet.backends.torch.projection import projected_interval

        lo, hi = projected_interval(ops, value, a.proj)
    else:
        lo, hi = back_substitute(ops, value)
    if a.intersect:
        lo = ops.maximum(lo, value.box.lower(ops))
        hi = ops.minimum(hi, value.box.upper(ops))
    hi = ops.maximum(hi, lo)
    value.interval = (lo, hi)
    value.box = Box.from_bounds(ops, lo, hi)
    return lo, hi


def bounds(ops: TensorOps, value: LinearValue) -> tuple[T, T]:
    """Elementwise output bounds by back-substitution from the value (objective rows [I; −I])."""
    if value.analysis.alpha_iters:
        n = math.prod(value.shape)
        spec = ops.reshape(_eye_rows(n, 0, 2 * n, value.box.center, ops), (1, 2 * n, *value.shape))
        lb = optimised_lower_bound(ops, value, spec)
        lo = ops.reshape(ops.slice(lb, 1, 0, n), (-1, *value.shape))
        hi = ops.neg(ops.reshape(ops.slice(lb, 1, n, 2 * n), (-1, *value.shape)))
        return lo, ops.maximum(hi, lo)
    lo, hi = back_substitute(ops, value)
    return lo, ops.maximum(hi, lo)


# --------------------------------------------------------------------------- margins


def _tables(k: int) -> tuple[np.ndarray, np.ndarray]:
    """For label y: the K−1 objective rows e_y − e_j (j ≠ y), flattened (K, (K−1)·K), and the map
    of those rows back to classes (K, (K−1)·K)."""
    spec = np.zeros((k, k - 1, k))
    place = np.zeros((k, k - 1, k))
    for y in range(k):
        others = [j for j in range(k) if j != y]
        for r, j in enumerate(others):
            spec[y, r, y], spec[y, r, j] = 1.0, -1.0
            place[y, r, j] = 1.0
    return spec.reshape(k, -1), place.reshape(k, -1)


def margin_lower(ops: TensorOps, value: LinearValue, onehot: T) -> T:
    """Lower bounds of z_y − z_j (N, K), 0 at j = y: the K−1 margin rows are the objective, so the
    specification is folded into the last layer by the first backward step (crown_ibp.md §1.2)."""
    k = ops.shape(onehot)[1]
    assert value.shape == (k,), f"margins need flat outputs, got {value.shape}"
    spec_t, place_t = _tables(k)
    spec = ops.reshape(ops.matmul(onehot, ops.constant(spec_t, onehot)), (-1, k - 1, k))
    if value.analysis.alpha_iters:
        lb = optimised_lower_bound(ops, value, spec)
    else:
        lb = lower_bound(ops, value, spec)
    place = ops.reshape(ops.matmul(onehot, ops.constant(place_t, onehot)), (-1, k - 1, k))
    return ops.reshape(ops.matmul(ops.reshape(lb, (-1, 1, k - 1)), place), (-1, k))


def optimised_lower_bound(ops: TensorOps, value: LinearValue, spec: T) -> T:
    """α-CROWN: the lower slopes of unstable ReLUs, one per objective row and neuron, are improved
    by projected gradient ascent (Adam) on the bound; the best slopes seen per row are kept, so the
    result is never below CROWN's (the starting point). Torch only: it needs autograd."""
    from absnet.backends.torch.alpha import optimise_slopes

    return optimise_slopes(ops, value, spec)
