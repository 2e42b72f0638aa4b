"""Linear-bounds rules for the affine and structural ops, and the directives that enter and leave
linear segments (reference/crown_ibp.md §1.4, DESIGN §4).

A rule on a ``linear`` value returns a new :class:`LinearValue` holding its inputs, its interval box
(the op's registered box rule applied to the input boxes: IBP) and a backward rule Λ ↦ (Λ_in, c):
- Linear: Λ_in = Λ·W, c = Λ·b. Conv2d: Λ_in = conv_transpose(Λ, W) (the adjoint of the
  convolution; output_padding recovers the input size), c = Σ Λ ⊙ b.
- Normalize, BatchNorm (eval: running statistics; training: the IBP centre's batch statistics, as
  the box rule): elementwise x·s + t, so Λ_in = Λ ⊙ s, c = Σ Λ ⊙ t.
- AvgPool2d: the adjoint of the averaging convolution; AdaptiveAvgPool2d: Λ·Mᵀ.
- Flatten, Reshape: Λ reshaped. Add: Λ goes to every branch. Concat: Λ sliced per branch.
All are exact (Λ_in·x + c = Λ·op(x)). Inputs of Add/Concat that are not linear values (a branch
analysed with boxes or zonotopes) start a segment of their own from their box hull.
Directives: ``ToLinear`` turns a box (or a zonotope's box hull) into a source; ``Concretize``
turns a linear value into the box of its back-substituted bounds; DiffAI's (de)correlation
directives are identities (linear bounds keep every correlation already). ``DeepLoss`` is the identity
and records DiffAI's regulariser on the value's intermediate bounds (IBP's box under CROWN-IBP,
back-substituted bounds under CROWN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from absnet.domains.box import Box
from absnet.domains.linear import Backward, InputSet, LinearValue, interval
from absnet.domains.zonotope import Zonotope
from absnet.ir.domains import ANALYSES, Analysis
from absnet.transformers._zono import bounds as value_bounds
from absnet.transformers._zono import deep_loss
from absnet.transformers.affine import batchnorm_coeffs, dropout_mask, normalize_coeffs
from absnet.transformers.pooling import _adaptive_matrix, _stride
from absnet.transformers.registry import RuleContext, lookup, transformer
from absnet.transformers.tensor_ops import TensorOps

T = Any


# --------------------------------------------------------------------------- helpers


def derive(ctx: RuleContext, inputs: Sequence[LinearValue], back: Any, box: Box | None = None) -> LinearValue:
    """A new value of the segment: ``box`` (default: the op's box rule on the input boxes)."""
    if box is None:
        rule = lookup(ctx.node.op, "box")
        assert rule is not None, ctx.node.op
        box = rule.fn(ctx, *(i.box for i in inputs))
    return LinearValue(tuple(ctx.out_shape), box, inputs[0].analysis, tuple(inputs), back, node=ctx.node.id,
                       op=ctx.node.op)


def as_linear(ops: TensorOps, v: Any, analysis: Analysis, node: str) -> LinearValue:
    """A linear value as it is; a point, Box or Zonotope as a new source (its box hull)."""
    if isinstance(v, LinearValue):
        return v
    lo, hi = value_bounds(ops, v)
    return LinearValue.from_set(InputSet(lo, hi), analysis, ops, node)


def sum_rest(ops: TensorOps, t: T) -> T:
    """Σ over every axis after (B, S): (B, S, *s) → (B, S)."""
    rank = len(ops.shape(t))
    return ops.sum(t, list(range(2, rank))) if rank > 2 else t


def dot_rest(ops: TensorOps, lam: T, t: T) -> T:
    """Σ over every axis after (B, S) of Λ ⊙ t for a per-example t (N, *s): one batched matmul
    instead of a product and a sum."""
    n = math.prod(ops.shape(lam)[2:])
    flat = ops.reshape(lam, (ops.shape(lam)[0], -1, n))
    return ops.reshape(ops.matmul(flat, ops.reshape(t, (-1, n, 1))), (-1, ops.shape(lam)[1]))


def bias_dot(ops: TensorOps, lam: T, b: T, shape: Sequence[int]) -> T:
    """Σ over every axis after (B, S) of Λ ⊙ b for a constant b of per-channel shape (C,) that
    broadcasts as (C, 1, …) against the value shape: spatial sums first, then one matmul."""
    rank = len(shape)
    t = lam if rank == 1 else ops.sum(lam, list(range(3, rank + 2)))
    c = ops.shape(b)[0] if ops.shape(b) else 1
    if c == 1 and shape[0] != 1:
        return ops.mul(ops.sum(t, [2]), ops.reshape(b, (1,)))
    return ops.matmul(t, ops.reshape(b, (c,)))


def _rows(ops: TensorOps, lam: T) -> int:
    return ops.shape(lam)[1]


def _elementwise(ctx: RuleContext, x: LinearValue, scale: T, shift: T | None,
                 per_example: bool = False) -> LinearValue:
    """x·scale + shift; ``scale`` is per example (N, *s) with ``per_example`` (Dropout's mask),
    else a constant that broadcasts against one example."""
    ops = ctx.ops
    shape = tuple(ctx.in_shapes[0])
    lam_scale = ops.reshape(scale, (-1, 1, *shape)) if per_example else scale

    def back(ops_: TensorOps, lam: T, bw: Backward) -> tuple[list[T | None], T | None]:
        # shift is (k, 1, …, 1) with k = 1 or the channel count (Normalize, BatchNorm)
        c = None if shift is None else bias_dot(ops, lam, ops.reshape(shift, (-1,)), shape)
        return [ops.mul(lam, lam_scale)], c

    c, r = x.box.center, x.box.radius
    box = Box(ops.add(ops.mul(c, scale), shift) if shift is not None else ops.mul(c, scale),
              ops.mul(r, ops.abs(scale)))
    return derive(ctx, [x], back, box)


def _reshaped(ctx: RuleContext, x: LinearValue) -> LinearValue:
    ops = ctx.ops
    in_shape = tuple(ctx.in_shapes[0])

    def back(ops_: TensorOps, lam: T, bw: Backward) -> tuple[list[T | None], T | None]:
        return [ops.reshape(lam, (-1, _rows(ops, lam), *in_shape))], None

    return derive(ctx, [x], back)


# --------------------------------------------------------------------------- affine layers


@transformer("Linear", "linear")
def linear_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Λ_in = Λ·W, c = Λ·b (exact); the box by interval arithmetic (IBP)."""
    ops, w, b = ctx.ops, ctx.params["weight"], ctx.params.get("bias")

    def back(ops_: TensorOps, lam: T, bw: Backward) -> tuple[list[T | None], T | None]:
        return [ops.matmul(lam, w)], None if b is None else ops.matmul(lam, b)

    return derive(ctx, [x], back)


@transformer("Conv2d", "linear")
def conv2d_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Λ_in = conv_transpose(Λ, W) over the (B·S) objective maps, c = Σ Λ ⊙ b (exact)."""
    ops, a = ctx.ops, ctx.attrs
    w, b = ctx.params["weight"], ctx.params.get("bias")
    in_shape, out_shape = tuple(ctx.in_shapes[0]), tuple(ctx.out_shape)
    kh, kw = a["kernel_size"]
    extra = [
        in_shape[1 + i] - ((out_shape[1 + i] - 1) * a["stride"][i] - 2 * a["padding"][i]
                           + a["dilation"][i] * (k - 1) + 1)
        for i, k in enumerate((kh, kw))
    ]

    def back(ops_: TensorOps, lam: T, bw: Backward) -> tuple[list[T | None], T | None]:
        s = _rows(ops, lam)
        flat = ops.reshape(lam, (-1, *out_shape))
        t = ops.conv_transpose(flat, w, a["stride"], a["padding"], extra, a["dilation"], a["groups"])
        c = None if b is None else bias_dot(ops, lam, b, out_shape)
        return [ops.reshape(t, (-1, s, *in_shape))], c

    return derive(ctx, [x], back)


@transformer("Normalize", "linear")
def normalize_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Elementwise x·(1/std) − mean/std: Λ_in = Λ/std, c = −Σ Λ·mean/std (exact)."""
    return _elementwise(ctx, x, *normalize_coeffs(ctx, x.box.center))


def _batchnorm_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    return _elementwise(ctx, x, *batchnorm_coeffs(ctx, x.box.center, concrete=False))


@transformer("BatchNorm1d", "linear")
def batchnorm1d_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Per-feature affine map with fixed statistics (running; in training the IBP centre's batch
    statistics, as the box rule): Λ_in = Λ ⊙ scale, c = Σ Λ ⊙ shift (exact)."""
    return _batchnorm_linear(ctx, x)


@transformer("BatchNorm2d", "linear")
def batchnorm2d_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Per-channel affine map with fixed statistics: Λ_in = Λ ⊙ scale, c = Σ Λ ⊙ shift (exact)."""
    return _batchnorm_linear(ctx, x)


@transformer("AvgPool2d", "linear")
def avgpool2d_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Average pooling is a depthwise convolution with weights 1/(kh·kw): Λ_in is its adjoint
    (conv_transpose with the same weights), no constant (exact)."""
    ops, a = ctx.ops, ctx.attrs
    in_shape, out_shape = tuple(ctx.in_shapes[0]), tuple(ctx.out_shape)
    ch = in_shape[0]
    (kh, kw), stride, pad = a["kernel_size"], _stride(a), a["padding"]
    extra = [in_shape[1 + i] - ((out_shape[1 + i] - 1) * stride[i] - 2 * pad[i] + k)
             for i, k in enumerate((kh, kw))]
    w = ops.constant(np.full((ch, 1, kh, kw), 1.0 / (kh * kw)), x.box.center)

    def back(ops_: TensorOps, lam: T, bw: Backward) -> tuple[list[T | None], T | None]:
        s = _rows(ops, lam)
        t = ops.conv_transpose(ops.reshape(lam, (-1, *out_shape)), w, stride, pad, extra, (1, 1), ch)
        return [ops.reshape(t, (-1, s, *in_shape))], None

    return derive(ctx, [x], back)


@transformer("AdaptiveAvgPool2d", "linear")
def adaptiveavgpool2d_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """y = x·M with a constant averaging matrix M (H·W, oh·ow): Λ_in = Λ·Mᵀ (exact)."""
    ops = ctx.ops
    ch, h, w = ctx.in_shapes[0]
    oh, ow = ctx.attrs["output_size"]
    mat_t = ops.constant(np.kron(_adaptive_matrix(h, oh), _adaptive_matrix(w, ow)), x.box.center)

    def back(ops_: TensorOps, lam: T, bw: Backward) -> tuple[list[T | None], T | None]:
        s = _rows(ops, lam)
        t = ops.matmul(ops.reshape(lam, (-1, s, ch, oh * ow)), mat_t)
        return [ops.reshape(t, (-1, s, ch, h, w))], None

    return derive(ctx, [x], back)


@transformer("Flatten", "linear")
def flatten_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Λ reshaped back to the input shape (exact)."""
    return _reshaped(ctx, x)


@transformer("Reshape", "linear")
def reshape_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Λ reshaped back to the input shape (exact)."""
    return _reshaped(ctx, x)


@transformer("Dropout", "linear")
def dropout_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Training: multiplication by a fixed random non-negative mask, Λ_in = Λ ⊙ mask (exact);
    eval: identity."""
    mask = dropout_mask(ctx, x.box.center)
    return x if mask is None else _elementwise(ctx, x, mask, None, per_example=True)


@transformer("Identity", "linear")
def identity_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """No-op (exact)."""
    return x


# --------------------------------------------------------------------------- branches


def _inputs(ctx: RuleContext, xs: Sequence[Any]) -> list[LinearValue]:
    first = next(x for x in xs if isinstance(x, LinearValue))
    return [as_linear(ctx.ops, x, first.analysis, f"{ctx.node.id}/in{i}") for i, x in enumerate(xs)]


@transformer("Add", "linear")
def add_linear(ctx: RuleContext, *xs: Any) -> LinearValue:
    """Λ reaches every branch unchanged; branches that share ancestors add their coefficients there,
    so correlations through the residual are kept (exact). Non-linear inputs become sources."""
    ins = _inputs(ctx, xs)

    def back(ops: TensorOps, lam: T, bw: Backward) -> tuple[list[T | None], T | None]:
        return [lam] * len(ins), None

    return derive(ctx, ins, back)


@transformer("Concat", "linear")
def concat_linear(ctx: RuleContext, *xs: Any) -> LinearValue:
    """Λ is sliced along the concatenation axis, one slice per branch (exact)."""
    ops = ctx.ops
    ins = _inputs(ctx, xs)
    axis = int(ctx.attrs["axis"])  # counts the batch axis; in Λ the objective axis comes first
    sizes = [s[axis - 1] for s in ctx.in_shapes]
    starts = np.cumsum([0, *sizes])

    def back(ops_: TensorOps, lam: T, bw: Backward) -> tuple[list[T | None], T | None]:
        return [ops.slice(lam, axis + 1, int(starts[i]), int(starts[i + 1])) for i in range(len(ins))], None

    return derive(ctx, ins, back)


# --------------------------------------------------------------------------- directives


def _segment_analysis(ctx: RuleContext) -> Analysis:
    base = ctx.analysis if ctx.analysis.kind == "linear" else ANALYSES["CROWN"]
    a = ctx.attrs
    if a.get("slope") is not None:
        base = replace(base, slope=a["slope"])
    if a.get("intermediate") is not None:
        base = replace(base, intermediate=a["intermediate"])
    return base


def _to_linear(ctx: RuleContext, x: Box | Zonotope) -> LinearValue:
    return as_linear(ctx.ops, x, _segment_analysis(ctx), ctx.node.id)


@transformer("ToLinear", "box", out="linear")
def tolinear_box(ctx: RuleContext, x: Box) -> LinearValue:
    """Start a linear segment whose input set is this box (sound: the same set)."""
    return _to_linear(ctx, x)


@transformer("ToLinear", "zonotope", out="linear")
def tolinear_zonotope(ctx: RuleContext, x: Zonotope) -> LinearValue:
    """Start a linear segment from the zonotope's box hull (a superset: sound)."""
    return _to_linear(ctx, x)


@transformer("ToLinear", "linear")
def tolinear_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Already linear: identity."""
    return x


def directive_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Identity: back-substitution already keeps every correlation a zonotope directive would add,
    and dropping correlations (decorrelating) is never required for soundness."""
    return x


for _name in ("ToZono", "CorrelateAll", "ToHZono", "CorrRand", "CorrMaxK", "CorrMaxPool2D", "CorrMaxPool3D",
              "CorrFix", "DecorrRand", "DecorrMin", "IdentLoss"):
    transformer(_name, "linear")(directive_linear)


@transformer("DeepLoss", "linear")
def deeploss_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Identity on the value; records (bw, deep_loss(l, u)) (diffai.md §1.7) on the value's intermediate
    bounds as its analysis defines them (the bounds later ReLUs are relaxed with)."""
    lo, hi = interval(ctx.ops, x)
    ctx.aux_losses.append((ctx.attrs["bw"], deep_loss(ctx.ops, lo, hi)))
    return x


@transformer("Concretize", "linear", out="box")
def concretize_linear(ctx: RuleContext, x: LinearValue) -> Box:
    """The box of the value's back-substituted bounds (intersected with IBP's): a superset (sound)."""
    lo, hi = interval(ctx.ops, x, force=True)
    return Box.from_bounds(ctx.ops, lo, hi)
