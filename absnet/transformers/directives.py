"""Abstraction directives (reference/diffai.md §2): they change how a value is represented, never
the set it denotes (correlate, ToZono, ToHZono) or only enlarge it (decorrelate, Concretize), so
every rule is sound for the identity map. On points they are the identity.

Directives that create generators from a Box return a hybrid zonotope (``out="zonotope"``, relu from
the analysis, pure=False). Freshly created generators form a new block named after the node, so
``Add``/``Concat`` align them by identity. The number of generators created is static (e.g.
min(num_correlate, n)); which elements are chosen is a value-dependent gather/scatter/topk.
Whether an ``only_train`` directive runs is the interpreter's decision: these rules always apply.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from absnet.domains.box import Box
from absnet.domains.zonotope import Zonotope
from absnet.ir.ops import CATALOG_LIST
from absnet.transformers._zono import (
    Value,
    as_zonotope,
    bounds,
    box_into_gens,
    concretize,
    const,
    correlate,
    correlate_fixed,
    decorrelate,
    deep_loss,
    elem_shape,
    numel,
)
from absnet.transformers.registry import RuleContext, transformer
from absnet.transformers.tensor_ops import TensorOps

T = Any
DIRECTIVES = tuple(op.name for op in CATALOG_LIST if op.category == "directive")


def directive_point(ctx: RuleContext, x: T) -> T:
    """Identity: directives shape abstract values only (diffai.md §2)."""
    return x


for _name in DIRECTIVES:
    transformer(_name, "point")(directive_point)


def _hybrid(ctx: RuleContext, x: Value) -> Zonotope:
    """A Box as a hybrid zonotope with the analysis's ReLU; zonotopes pass through."""
    return as_zonotope(x, pure=False, relu=ctx.analysis.relu)


# --------------------------------------------------------------------------- representation switches


def _to_zono(ctx: RuleContext, z: Zonotope) -> Zonotope:
    relu = ctx.attrs.get("relu") or z.relu  # the given variant wins (DiffAI inverted it, §9.4)
    return box_into_gens(ctx.ops, z, f"{ctx.name}:zono").with_(pure=True, relu=relu)


@transformer("ToZono", "box", out="zonotope")
def tozono_box(ctx: RuleContext, x: Box) -> Zonotope:
    """Every radius becomes its own generator b_j·δ_j (exact re-representation); the value becomes a
    pure zonotope with relu= if given."""
    return _to_zono(ctx, _hybrid(ctx, x))


@transformer("ToZono", "zonotope")
def tozono_zonotope(ctx: RuleContext, x: Zonotope) -> Zonotope:
    """Box radii become a new block of generators (exact); the value becomes pure, relu= if given."""
    return _to_zono(ctx, as_zonotope(x))


@transformer("CorrelateAll", "box", out="zonotope")
def correlateall_box(ctx: RuleContext, x: Box) -> Zonotope:
    """Same as ToZono: correlate every element (exact re-representation)."""
    return _to_zono(ctx, _hybrid(ctx, x))


@transformer("CorrelateAll", "zonotope")
def correlateall_zonotope(ctx: RuleContext, x: Zonotope) -> Zonotope:
    """Same as ToZono: correlate every element (exact re-representation)."""
    return _to_zono(ctx, as_zonotope(x))


@transformer("ToHZono", "box")
def tohzono_box(ctx: RuleContext, x: Box) -> Box:
    """Identity: a Box is already a hybrid value (its ReLU is the interval ReLU for every variant)."""
    return x


@transformer("ToHZono", "zonotope")
def tohzono_zonotope(ctx: RuleContext, x: Zonotope) -> Zonotope:
    """Same (c, b, E), now hybrid (box radii stay box radii), relu= if given: the set is unchanged."""
    z = as_zonotope(x)
    return z.with_(pure=False, relu=ctx.attrs.get("relu") or z.relu)


@transformer("Concretize", "box")
def concretize_box(ctx: RuleContext, x: Box) -> Box:
    """Identity: a Box has no generators."""
    return x


@transformer("Concretize", "zonotope")
def concretize_zonotope(ctx: RuleContext, x: Zonotope) -> Zonotope:
    """b' = b + Σ|e_i|, generators dropped: the box hull of the zonotope, a superset (sound)."""
    return concretize(ctx.ops, as_zonotope(x))


# --------------------------------------------------------------------------- correlation


def _count(ctx: RuleContext, z: Zonotope) -> int:
    return min(int(ctx.attrs["num_correlate"]), numel(elem_shape(ctx.ops, z.center)))


def _flat(ops: TensorOps, t: T) -> T:
    return ops.reshape(t, (-1, numel(elem_shape(ops, t))))


def _corr_rand(ctx: RuleContext, z: Zonotope) -> Zonotope:
    m = _count(ctx, z)
    if z.box is None or m <= 0:
        return z
    _, idx = ctx.ops.topk(ctx.ops.rand_like(_flat(ctx.ops, z.box)), m, 1)
    return correlate(ctx.ops, z, idx, f"{ctx.name}:corr")


def _corr_maxk(ctx: RuleContext, z: Zonotope) -> Zonotope:
    m = _count(ctx, z)
    if z.box is None or m <= 0:
        return z
    _, idx = ctx.ops.topk(_flat(ctx.ops, z.upper(ctx.ops)), m, 1)
    return correlate(ctx.ops, z, idx, f"{ctx.name}:corr")


@transformer("CorrRand", "box", out="zonotope")
def corrrand_box(ctx: RuleContext, x: Box) -> Zonotope:
    """Correlate min(num_correlate, n) distinct random elements per example (top-k of uniform noise):
    their radii become generators, an exact re-representation."""
    return _corr_rand(ctx, _hybrid(ctx, x))


@transformer("CorrRand", "zonotope")
def corrrand_zonotope(ctx: RuleContext, x: Zonotope) -> Zonotope:
    """Correlate min(num_correlate, n) distinct random elements per example (exact)."""
    return _corr_rand(ctx, as_zonotope(x))


@transformer("CorrMaxK", "box", out="zonotope")
def corrmaxk_box(ctx: RuleContext, x: Box) -> Zonotope:
    """Correlate the min(num_correlate, n) elements with the largest upper bound (exact)."""
    return _corr_maxk(ctx, _hybrid(ctx, x))


@transformer("CorrMaxK", "zonotope")
def corrmaxk_zonotope(ctx: RuleContext, x: Zonotope) -> Zonotope:
    """Correlate the min(num_correlate, n) elements with the largest upper bound (exact)."""
    return _corr_maxk(ctx, as_zonotope(x))


def _score(ops: TensorOps, z: Zonotope, max_type: str) -> T:
    """DiffAI's MaxTypes: ub = c + total radius, only_beta = b, head_beta = c + b."""
    b = z.box if z.box is not None else ops.zeros_like(z.center)
    if max_type == "ub":
        return z.upper(ops)
    return b if max_type == "only_beta" else ops.add(z.center, b)


def _block_view(ops: TensorOps, t: T, blk: tuple[int, int, int]) -> T:
    """(N, C, H, W) → (N, M, bc·bh·bw): the non-overlapping blocks (remainders dropped)."""
    (c, h, w), (bc, bh, bw) = elem_shape(ops, t), blk
    ck, hk, wk = c // bc, h // bh, w // bw
    for axis, keep, size in ((1, ck * bc, c), (2, hk * bh, h), (3, wk * bw, w)):
        if keep != size:
            t = ops.slice(t, axis, 0, keep)
    t = ops.transpose(ops.reshape(t, (-1, ck, bc, hk, bh, wk, bw)), (0, 1, 3, 5, 2, 4, 6))
    return ops.reshape(t, (-1, ck * hk * wk, bc * bh * bw))


def _block_table(shape: tuple[int, ...], blk: tuple[int, int, int]) -> np.ndarray:
    """The flat C·H·W index of every member of every block, laid out like ``_block_view``."""
    (c, h, w), (bc, bh, bw) = shape, blk
    ck, hk, wk = c // bc, h // bh, w // bw
    t = np.arange(c * h * w, dtype=np.int64).reshape(c, h, w)[: ck * bc, : hk * bh, : wk * bw]
    t = t.reshape(ck, bc, hk, bh, wk, bw).transpose(0, 2, 4, 1, 3, 5)
    return t.reshape(ck * hk * wk, bc * bh * bw)


def _corr_blocks(ctx: RuleContext, z: Zonotope, blk: tuple[int, int, int]) -> Zonotope:
    """Correlate the top-scoring element of each block; indices are global C·H·W positions, so each
    channel gets its own picks (fixes DiffAI's first-channel indices, §9.4)."""
    ops = ctx.ops
    if z.box is None:
        return z
    shape = elem_shape(ops, z.center)
    view = _block_view(ops, _score(ops, z, ctx.attrs["max_type"]), blk)
    _, loc = ops.topk(view, 1, 2)
    table = _block_table(shape, blk)
    tab = ops.add(ops.mul(loc, const(ops, 0, loc)), const(ops, table, loc))
    idx = ops.reshape(ops.gather(tab, loc, 2), (-1, table.shape[0]))
    return correlate(ops, z, idx, f"{ctx.name}:corr")


def _blk2d(ctx: RuleContext) -> tuple[int, int, int]:
    kh, kw = ctx.attrs["kernel_size"]
    return (1, kh, kw)


def _blk3d(ctx: RuleContext) -> tuple[int, int, int]:
    k = int(ctx.attrs["kernel_size"])
    return (k, k, k)


@transformer("CorrMaxPool2D", "box", out="zonotope")
def corrmaxpool2d_box(ctx: RuleContext, x: Box) -> Zonotope:
    """Correlate the arg-max (by max_type) of each k×k window of each channel (exact)."""
    return _corr_blocks(ctx, _hybrid(ctx, x), _blk2d(ctx))


@transformer("CorrMaxPool2D", "zonotope")
def corrmaxpool2d_zonotope(ctx: RuleContext, x: Zonotope) -> Zonotope:
    """Correlate the arg-max (by max_type) of each k×k window of each channel (exact)."""
    return _corr_blocks(ctx, as_zonotope(x), _blk2d(ctx))


@transformer("CorrMaxPool3D", "box", out="zonotope")
def corrmaxpool3d_box(ctx: RuleContext, x: Box) -> Zonotope:
    """Correlate the arg-max (by max_type) of each k×k×k (channel, height, width) block (exact)."""
    return _corr_blocks(ctx, _hybrid(ctx, x), _blk3d(ctx))


@transformer("CorrMaxPool3D", "zonotope")
def corrmaxpool3d_zonotope(ctx: RuleContext, x: Zonotope) -> Zonotope:
    """Correlate the arg-max (by max_type) of each k×k×k block (exact)."""
    return _corr_blocks(ctx, as_zonotope(x), _blk3d(ctx))


def _corr_fix(ctx: RuleContext, z: Zonotope) -> Zonotope:
    n, k = numel(elem_shape(ctx.ops, z.center)), int(ctx.attrs["k"])
    if k <= 0:
        return z
    return correlate_fixed(ctx.ops, z, range(0, n, math.ceil(n / k)), f"{ctx.name}:corr")


@transformer("CorrFix", "box", out="zonotope")
def corrfix_box(ctx: RuleContext, x: Box) -> Zonotope:
    """Correlate the fixed flat positions 0, s, 2s, … with s = ⌈n/k⌉ (exact)."""
    return _corr_fix(ctx, _hybrid(ctx, x))


@transformer("CorrFix", "zonotope")
def corrfix_zonotope(ctx: RuleContext, x: Zonotope) -> Zonotope:
    """Correlate the fixed flat positions 0, s, 2s, … with s = ⌈n/k⌉ (exact)."""
    return _corr_fix(ctx, as_zonotope(x))


# --------------------------------------------------------------------------- decorrelation


def _mass(ops: TensorOps, z: Zonotope) -> T:
    """Per-generator L1 mass Σ_j |e_{i,j}| (N, k)."""
    return ops.sum(ops.abs(z.gens), list(range(2, 2 + len(elem_shape(ops, z.center)))))


@transformer("DecorrRand", "box")
def decorrrand_box(ctx: RuleContext, x: Box) -> Box:
    """Identity: a Box has no generators to drop."""
    return x


@transformer("DecorrRand", "zonotope")
def decorrrand_zonotope(ctx: RuleContext, x: Zonotope) -> Zonotope:
    """Keep a uniformly random k − num_decorrelate generators per example; fold the others into the
    box, b' = b + Σ_dropped|e_i| (sound: |Σ ε_i e_i| ≤ Σ|e_i|)."""
    z = as_zonotope(x)
    if z.gens is None:
        return z
    keep = z.k - int(ctx.attrs["num_decorrelate"])
    return decorrelate(ctx.ops, z, ctx.ops.rand_like(_mass(ctx.ops, z)), keep, f"{ctx.name}:keep")


@transformer("DecorrMin", "box")
def decorrmin_box(ctx: RuleContext, x: Box) -> Box:
    """Identity: a Box has no generators to drop."""
    return x


@transformer("DecorrMin", "zonotope")
def decorrmin_zonotope(ctx: RuleContext, x: Zonotope) -> Zonotope:
    """Keep the k − num_decorrelate generators of largest L1 mass per example (num_to_keep: the
    num_decorrelate largest, all of them if there are fewer — fixes §9.4); fold the rest into the
    box, b' = b + Σ_dropped|e_i| (sound)."""
    z = as_zonotope(x)
    if z.gens is None:
        return z
    nd = int(ctx.attrs["num_decorrelate"])
    keep = min(nd, z.k) if ctx.attrs.get("num_to_keep") else z.k - nd
    return decorrelate(ctx.ops, z, _mass(ctx.ops, z), keep, f"{ctx.name}:keep")


# --------------------------------------------------------------------------- losses


def _deep_loss(ctx: RuleContext, x: Value) -> Value:
    lo, up = bounds(ctx.ops, x)
    ctx.aux_losses.append((ctx.attrs["bw"], deep_loss(ctx.ops, lo, up)))
    return x


@transformer("DeepLoss", "box")
def deeploss_box(ctx: RuleContext, x: Box) -> Box:
    """Identity on the value; records (bw, deep_loss(l, u)) (diffai.md §1.7) in ctx.aux_losses."""
    return _deep_loss(ctx, x)


@transformer("DeepLoss", "zonotope")
def deeploss_zonotope(ctx: RuleContext, x: Zonotope) -> Zonotope:
    """Identity on the value; records (bw, deep_loss(l, u)) (diffai.md §1.7) in ctx.aux_losses."""
    return _deep_loss(ctx, x)


@transformer("IdentLoss", "box")
def identloss_box(ctx: RuleContext, x: Box) -> Box:
    """Identity (a removed DeepLoss)."""
    return x


@transformer("IdentLoss", "zonotope")
def identloss_zonotope(ctx: RuleContext, x: Zonotope) -> Zonotope:
    """Identity (a removed DeepLoss)."""
    return x
