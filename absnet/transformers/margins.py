"""Output-side queries written against the facade: input regions and margin bounds.

``margin_lower`` folds the specification "true class minus every other class" into the output
value (linear values: into the objective of the back-substitution, so it meets the last layer's
weights first), so generators shared by two logits cancel (correlation-aware certification,
reference/diffai.md §1.7): for a zonotope, d_j = z_y − z_j has centre c_y − c_j, generators
e_y − e_j and box radius b_y + b_j (j ≠ y), and 0 exactly at j = y.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from absnet.domains import Box, Zonotope
from absnet.domains import linear as L
from absnet.ir.domains import Analysis
from absnet.transformers.tensor_ops import TensorOps


def input_bounds(ops: TensorOps, x: Any, eps: Any, low: float, high: float) -> tuple[Any, Any]:
    """The L∞ ball of radius ``eps`` around ``x`` intersected with [low, high] (always l ≤ u)."""
    lo, hi = ops.constant(low, x), ops.constant(high, x)
    lower = ops.minimum(ops.maximum(ops.sub(x, eps), lo), hi)
    upper = ops.minimum(ops.maximum(ops.add(x, eps), lo), hi)
    return lower, upper


def box_bounds(ops: TensorOps, lower: Any, upper: Any, low: float, high: float) -> tuple[Any, Any]:
    """The box [lower, upper] intersected with [low, high]; an empty intersection becomes the point
    where the lower bound lands (always l ≤ u)."""
    lo_c, hi_c = ops.constant(low, lower), ops.constant(high, lower)
    lo = ops.minimum(ops.maximum(lower, lo_c), hi_c)
    return lo, ops.maximum(lo, ops.minimum(ops.maximum(upper, lo_c), hi_c))


def abstract_input(
    ops: TensorOps, lower: Any, upper: Any, analysis: Analysis, ball: tuple[Any, Any] | None = None
) -> Any:
    """Encode the box [lower, upper] (N, *s) as the analysis's input value.

    Box: centre/radius. H*/Z* analyses: centre plus one generator per input element (a diagonal
    generator matrix), as DiffAI's HBox family does (§1.8). Point: the centre. Linear analyses: the
    source of a linear segment; ``ball`` = (centre, ε) adds an L2 ball the box is intersected with
    (the box is then the ball's bounding box ∩ the input range).
    """
    if analysis.kind == "linear":
        center, eps = ball if ball is not None else (None, None)
        return L.LinearValue.from_set(L.InputSet(lower, upper, center, eps), analysis, ops)
    box = Box.from_bounds(ops, lower, upper)
    if analysis.kind == "point":
        return box.center
    if analysis.kind == "box":
        return box
    shape = ops.shape(lower)[1:]
    n = math.prod(shape)
    eye = ops.constant(_eye(n), lower)
    gens = ops.mul(ops.reshape(box.radius, [-1, 1, n]), eye)
    gens = ops.reshape(gens, [-1, n, *shape])
    return Zonotope(box.center, None, gens, (("input", n),), analysis.pure, analysis.relu)


def _eye(n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float64)


def bounds(ops: TensorOps, value: Any) -> tuple[Any, Any]:
    """(lower, upper) of a point, box, zonotope or linear value (linear: by back-substitution)."""
    if isinstance(value, L.LinearValue):
        return L.bounds(ops, value)
    if isinstance(value, Box | Zonotope):
        return value.lower(ops), value.upper(ops)
    return value, value


def margin_lower(ops: TensorOps, value: Any, onehot: Any) -> Any:
    """Lower bounds of z_y − z_j for every class j (N, C); 0 at j = y.

    ``onehot`` is the (N, C) one-hot encoding of the labels in the value's dtype.
    """
    if isinstance(value, L.LinearValue):
        return L.margin_lower(ops, value, onehot)
    not_y = ops.sub(ops.constant(1.0, onehot), onehot)
    if not isinstance(value, Box | Zonotope):
        zy = ops.sum(ops.mul(value, onehot), [1], keepdims=True)
        return ops.mul(ops.sub(zy, value), not_y)
    c = value.center
    cy = ops.sum(ops.mul(c, onehot), [1], keepdims=True)
    centre = ops.sub(cy, c)
    if isinstance(value, Box):
        ry = ops.sum(ops.mul(value.radius, onehot), [1], keepdims=True)
        rad = ops.add(ry, value.radius)
    else:
        rad = None
        if value.box is not None:
            by = ops.sum(ops.mul(value.box, onehot), [1], keepdims=True)
            rad = ops.add(by, value.box)
        if value.gens is not None:
            oh = ops.reshape(onehot, [-1, 1, ops.shape(onehot)[1]])
            gy = ops.sum(ops.mul(value.gens, oh), [2], keepdims=True)
            gr = ops.sum(ops.abs(ops.sub(gy, value.gens)), [1])
            rad = gr if rad is None else ops.add(rad, gr)
        if rad is None:
            rad = ops.zeros_like(c)
    return ops.mul(ops.sub(centre, rad), not_y)
