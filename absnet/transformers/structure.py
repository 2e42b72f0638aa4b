"""Joins of parallel branches: Add (residual sums) and Concat, over any number of inputs.

Generators are aligned by block identity, never by position (fixes DiffAI's prefix heuristic,
reference/diffai.md §1.3 and §9.4): two inputs share a noise symbol exactly when they hold the same
block, so the output lists the union of the inputs' blocks in order of first appearance, and an
input lacking a block contributes zeros there. Box radii are independent noise and add (Add) or are
concatenated in the same order as the centres (Concat).

The zonotope rules accept a mix of inputs — a Box is a zonotope without generators and a plain
tensor one without radii — because ``infer_domains`` joins branch kinds (point < box < zonotope).
The box rules likewise accept plain tensors (radius zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from absnet.domains.box import Box
from absnet.domains.zonotope import Zonotope
from absnet.transformers._zono import (
    Value,
    as_zonotope,
    split_blocks,
    union_blocks,
    zero_gens,
)
from absnet.transformers.registry import RuleContext, transformer
from absnet.transformers.tensor_ops import TensorOps

T = Any


def _sum(ops: TensorOps, ts: Sequence[T]) -> T:
    out = ts[0]
    for t in ts[1:]:
        out = ops.add(out, t)
    return out


def _as_box(ops: TensorOps, v: Value) -> Box:
    return v if isinstance(v, Box) else Box(v, ops.zeros_like(v))


def _zonotopes(xs: Sequence[Value]) -> list[Zonotope]:
    """All inputs as zonotopes; flags (pure, relu) come from the first zonotope input."""
    first = next((x for x in xs if isinstance(x, Zonotope)), None)
    pure, relu = (first.pure, first.relu) if first is not None else (False, "Boxy")
    return [x if isinstance(x, Zonotope) else as_zonotope(x, pure, relu) for x in xs]


@transformer("Add", "point")
def add_point(ctx: RuleContext, *xs: T) -> T:
    """The sum of the branches."""
    return _sum(ctx.ops, xs)


@transformer("Add", "box")
def add_box(ctx: RuleContext, *xs: Value) -> Box:
    """c = Σ c_i, r = Σ r_i: Minkowski sum of boxes, exact for independent inputs and sound always."""
    boxes = [_as_box(ctx.ops, x) for x in xs]
    return Box(_sum(ctx.ops, [b.center for b in boxes]), _sum(ctx.ops, [b.radius for b in boxes]))


@transformer("Add", "zonotope")
def add_zonotope(ctx: RuleContext, *xs: Value) -> Zonotope:
    """Centres add; generators of the same block add (the same noise symbol, so exact); blocks held by
    one input only are kept as they are; box radii add (independent noise, sound). Inputs may mix
    zonotopes, boxes and points (DiffAI 2018 §1.3 with identity-based alignment)."""
    ops = ctx.ops
    zs = _zonotopes(xs)
    blocks = union_blocks(zs)
    parts = [split_blocks(ops, z) for z in zs]
    gens = [_sum(ops, [p[name] for p in parts if name in p]) for name, _ in blocks]
    boxes = [z.box for z in zs if z.box is not None]
    return zs[0].with_(
        center=_sum(ops, [z.center for z in zs]),
        box=_sum(ops, boxes) if boxes else None,
        gens=(gens[0] if len(gens) == 1 else ops.concat(gens, 1)) if gens else None,
        blocks=blocks,
    )


@transformer("Concat", "point")
def concat_point(ctx: RuleContext, *xs: T) -> T:
    """Concatenation along ``axis`` (counted with the batch axis, as the DSL does)."""
    return ctx.ops.concat(list(xs), ctx.attrs["axis"])


@transformer("Concat", "box")
def concat_box(ctx: RuleContext, *xs: Value) -> Box:
    """Concatenate centres and radii in the same order (exact; fixes DiffAI's reversed radii, §9.4)."""
    ops, ax = ctx.ops, ctx.attrs["axis"]
    boxes = [_as_box(ops, x) for x in xs]
    return Box(ops.concat([b.center for b in boxes], ax), ops.concat([b.radius for b in boxes], ax))


@transformer("Concat", "zonotope")
def concat_zonotope(ctx: RuleContext, *xs: Value) -> Zonotope:
    """Centres, box radii (zeros where an input has none) and, block by block, generators
    (zeros where an input lacks the block) are concatenated in input order: exact, since every
    input is expressed over the same noise symbols. Inputs may mix zonotopes, boxes and points."""
    ops, ax = ctx.ops, ctx.attrs["axis"]
    zs = _zonotopes(xs)
    blocks = union_blocks(zs)
    parts = [split_blocks(ops, z) for z in zs]
    gens = []
    for name, n in blocks:
        pieces = [p[name] if name in p else zero_gens(ops, z.center, n)
                  for p, z in zip(parts, zs, strict=True)]
        gens.append(ops.concat(pieces, ax + 1))
    box = None
    if any(z.box is not None for z in zs):
        box = ops.concat([ops.zeros_like(z.center) if z.box is None else z.box for z in zs], ax)
    return zs[0].with_(
        center=ops.concat([z.center for z in zs], ax),
        box=box,
        gens=(gens[0] if len(gens) == 1 else ops.concat(gens, 1)) if gens else None,
        blocks=blocks,
    )

