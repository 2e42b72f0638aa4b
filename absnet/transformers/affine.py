"""Affine and shape layers: Linear, Conv2d, Normalize, BatchNorm1d/2d, Dropout, Identity, Flatten,
Reshape — for points, boxes and (hybrid) zonotopes.

All of them are affine maps, so the abstract rules are exact (DiffAI, ICML 2018, §1.2 of
reference/diffai.md): the centre takes the map with its bias, generators take the linear part, and
box radii take the linear part with |weights| (interval arithmetic, sound because
|Σ w_j b_j η_j| ≤ Σ |w_j| b_j). All generators of an example go through one batched matmul/conv.
"""

from __future__ import annotations

from typing import Any

from absnet.domains.box import Box
from absnet.ir.ops import reshape_shape
from absnet.transformers._zono import (
    Map,
    Value,
    center_of,
    const,
    elem_shape,
    map_affine,
    numel,
    reshape_value,
    scale_shift,
)
from absnet.transformers.registry import RuleContext, transformer

T = Any


# --------------------------------------------------------------------------- Linear


def _linear_maps(ctx: RuleContext) -> tuple[Map, Map, Map | None]:
    ops = ctx.ops
    w = ctx.params["weight"]
    wt = ops.transpose(w, (1, 0))
    bias = ctx.params.get("bias")
    wt_abs = ops.abs(wt)
    return (
        lambda t: ops.matmul(t, wt),
        lambda t: ops.matmul(t, wt_abs),
        None if bias is None else (lambda t: ops.add(t, bias)),
    )


@transformer("Linear", "point")
def linear_point(ctx: RuleContext, x: T) -> T:
    """The concrete dense layer y = x·Wᵀ + b."""
    lin, _, bias = _linear_maps(ctx)
    y = lin(x)
    return y if bias is None else bias(y)


@transformer("Linear", "box")
def linear_box(ctx: RuleContext, x: Box) -> Box:
    """c' = c·Wᵀ + b, r' = r·|W|ᵀ: interval arithmetic, exact per output (DiffAI 2018 / IBP)."""
    return map_affine(ctx.ops, x, *_linear_maps(ctx))


@transformer("Linear", "zonotope")
def linear_zonotope(ctx: RuleContext, x: Value) -> Value:
    """Centre and all generators through W (exact, affine maps preserve zonotopes); box radii
    through |W| (sound by the triangle inequality). DiffAI 2018 §1.2."""
    return map_affine(ctx.ops, x, *_linear_maps(ctx))


# --------------------------------------------------------------------------- Conv2d


def _conv_maps(ctx: RuleContext) -> tuple[Map, Map, Map | None]:
    ops, a = ctx.ops, ctx.attrs
    w = ctx.params["weight"]
    w_abs = ops.abs(w)
    bias = ctx.params.get("bias")
    geo = (a["stride"], a["padding"], a["dilation"], a["groups"])

    def conv(wt: T) -> Map:
        return lambda t: ops.conv(t, wt, None, *geo)

    def add_bias(t: T) -> T:
        return ops.add(t, ops.reshape(bias, (-1, 1, 1)))

    return conv(w), conv(w_abs), None if bias is None else add_bias


@transformer("Conv2d", "point")
def conv2d_point(ctx: RuleContext, x: T) -> T:
    """The concrete 2-D convolution (zero padding)."""
    a = ctx.attrs
    return ctx.ops.conv(x, ctx.params["weight"], ctx.params.get("bias"), a["stride"], a["padding"],
                        a["dilation"], a["groups"])


@transformer("Conv2d", "box")
def conv2d_box(ctx: RuleContext, x: Box) -> Box:
    """c' = conv(c, W) + b, r' = conv(r, |W|): interval arithmetic (DiffAI 2018 §1.2)."""
    return map_affine(ctx.ops, x, *_conv_maps(ctx))


@transformer("Conv2d", "zonotope")
def conv2d_zonotope(ctx: RuleContext, x: Value) -> Value:
    """Centre and generators folded into one batch through conv(·, W) (exact); box radii through
    conv(·, |W|) (sound). DiffAI 2018 §1.2."""
    return map_affine(ctx.ops, x, *_conv_maps(ctx))


# --------------------------------------------------------------------------- Normalize


def normalize_coeffs(ctx: RuleContext, c: T) -> tuple[T, T]:
    """(scale, shift) of Normalize as x·scale + shift, shaped to broadcast against (N, *s)."""
    ops, a = ctx.ops, ctx.attrs
    shape = (len(a["mean"]),) + (1,) * (len(elem_shape(ops, c)) - 1)
    std = [float(s) for s in a["std"]]
    scale = const(ops, [1.0 / s for s in std], c)
    shift = const(ops, [-m / s for m, s in zip(a["mean"], std, strict=True)], c)
    return ops.reshape(scale, shape), ops.reshape(shift, shape)


def _normalize(ctx: RuleContext, x: Value) -> Value:
    return scale_shift(ctx.ops, x, *normalize_coeffs(ctx, center_of(x)))


@transformer("Normalize", "point")
def normalize_point(ctx: RuleContext, x: T) -> T:
    """(x − mean) / std per channel, computed as x·(1/std) − mean/std."""
    return _normalize(ctx, x)


@transformer("Normalize", "box")
def normalize_box(ctx: RuleContext, x: Box) -> Box:
    """Elementwise affine map: c' = c/std − mean/std, r' = r/|std| (exact)."""
    return _normalize(ctx, x)


@transformer("Normalize", "zonotope")
def normalize_zonotope(ctx: RuleContext, x: Value) -> Value:
    """Elementwise affine map on centre, generators and |scale| on box radii (exact, DiffAI §1.2)."""
    return _normalize(ctx, x)


# --------------------------------------------------------------------------- BatchNorm


def batchnorm_coeffs(ctx: RuleContext, c: T, concrete: bool) -> tuple[T, T]:
    """(scale, shift) of BatchNorm as x·scale + shift, shaped to broadcast against (N, *s). Eval:
    running statistics. Training: biased per-channel batch statistics of ``c`` (a point, or the
    centre of an abstract value, detached unless ``concrete``, as in DiffAI), and the running
    statistics move by ``momentum`` (unbiased variance, as torch). With ``ctx.reduce_stats``
    (synchronised BatchNorm) the counts and sums are over every process's part of the batch."""
    ops, a, p = ctx.ops, ctx.attrs, ctx.params
    shape = elem_shape(ops, c)
    cshape = (shape[0],) + (1,) * (len(shape) - 1)
    eps = const(ops, a["eps"], c)
    if ctx.training:
        conc = c if concrete else ops.detach(c)
        axes = [0, *range(2, len(shape) + 1)]
        total = ctx.reduce_stats or (lambda t: t)
        count = total(ops.sum(ops.add(ops.zeros_like(conc), const(ops, 1.0, conc)), axes))
        mean = ops.div(total(ops.sum(conc, axes)), count)
        dev = ops.sub(conc, ops.reshape(mean, cshape))
        var = ops.div(total(ops.sum(ops.mul(dev, dev), axes)), count)
        if ctx.set_buffer is not None:
            mom = const(ops, a["momentum"], c)
            keep = const(ops, 1.0 - a["momentum"], c)
            one = const(ops, 1.0, c)
            unbiased = ops.div(ops.mul(var, count), ops.maximum(ops.sub(count, one), one))
            for name, stat in (("running_mean", mean), ("running_var", unbiased)):
                new = ops.add(ops.mul(p[name], keep), ops.mul(ops.detach(stat), mom))
                ctx.set_buffer(name, ops.detach(new))
    else:
        mean, var = p["running_mean"], p["running_var"]
    scale = ops.div(const(ops, 1.0, c), ops.sqrt(ops.add(var, eps)))
    if p.get("weight") is not None:
        scale = ops.mul(scale, p["weight"])
    shift = ops.neg(ops.mul(mean, scale))
    if p.get("bias") is not None:
        shift = ops.add(shift, p["bias"])
    return ops.reshape(scale, cshape), ops.reshape(shift, cshape)


def _batchnorm(ctx: RuleContext, x: Value) -> Value:
    """Shared BatchNorm rule: the affine map of :func:`batchnorm_coeffs`."""
    c = center_of(x)
    return scale_shift(ctx.ops, x, *batchnorm_coeffs(ctx, c, concrete=c is x))


@transformer("BatchNorm1d", "point")
def batchnorm1d_point(ctx: RuleContext, x: T) -> T:
    """Concrete batch normalisation of features (batch statistics in training mode)."""
    return _batchnorm(ctx, x)


@transformer("BatchNorm1d", "box")
def batchnorm1d_box(ctx: RuleContext, x: Box) -> Box:
    """Per-feature affine map with fixed statistics (running, or the centre's batch statistics in
    training as DiffAI): exact on the centre, |scale| on radii."""
    return _batchnorm(ctx, x)


@transformer("BatchNorm1d", "zonotope")
def batchnorm1d_zonotope(ctx: RuleContext, x: Value) -> Value:
    """Per-feature affine map with fixed statistics: exact on centre and generators, |scale| on
    box radii (DiffAI 2018 §1.2; statistics per channel, not per element, fixing §9.4)."""
    return _batchnorm(ctx, x)


@transformer("BatchNorm2d", "point")
def batchnorm2d_point(ctx: RuleContext, x: T) -> T:
    """Concrete batch normalisation of images per channel."""
    return _batchnorm(ctx, x)


@transformer("BatchNorm2d", "box")
def batchnorm2d_box(ctx: RuleContext, x: Box) -> Box:
    """Per-channel affine map with fixed statistics: exact centre, |scale| on radii."""
    return _batchnorm(ctx, x)


@transformer("BatchNorm2d", "zonotope")
def batchnorm2d_zonotope(ctx: RuleContext, x: Value) -> Value:
    """Per-channel affine map with fixed statistics: exact on centre and generators, |scale| on
    box radii (DiffAI 2018 §1.2)."""
    return _batchnorm(ctx, x)


# --------------------------------------------------------------------------- Dropout


def dropout_mask(ctx: RuleContext, c: T) -> T | None:
    """Training: the mask [u ≥ p]/(1 − p) with u = rand_like(c) (one draw per example element);
    None when nothing is dropped (eval mode, or p ≤ 0). p ≥ 1 drops everything."""
    p = float(ctx.attrs["p"])
    if not ctx.training or p <= 0.0:
        return None
    ops = ctx.ops
    keep_scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    noise = ops.rand_like(c)
    return ops.where(ops.greater(const(ops, p, c), noise), ops.zeros_like(noise),
                     ops.add(ops.zeros_like(noise), const(ops, keep_scale, c)))


def _dropout(ctx: RuleContext, x: Value) -> Value:
    """Multiply by :func:`dropout_mask` (shared by centre, radii and generators)."""
    mask = dropout_mask(ctx, center_of(x))
    return x if mask is None else scale_shift(ctx.ops, x, mask, per_ex=True)


@transformer("Dropout", "point")
def dropout_point(ctx: RuleContext, x: T) -> T:
    """Concrete (inverted) dropout in training mode, identity in eval mode."""
    return _dropout(ctx, x)


@transformer("Dropout", "box")
def dropout_box(ctx: RuleContext, x: Box) -> Box:
    """Multiplication by a fixed non-negative mask: exact on centre and radii (DiffAI §1.2)."""
    return _dropout(ctx, x)


@transformer("Dropout", "zonotope")
def dropout_zonotope(ctx: RuleContext, x: Value) -> Value:
    """Multiplication by a fixed non-negative per-example mask: exact on centre, generators and
    box radii (DiffAI §1.2)."""
    return _dropout(ctx, x)


# --------------------------------------------------------------------------- Identity, Flatten, Reshape


@transformer("Identity", "point")
def identity_point(ctx: RuleContext, x: T) -> T:
    """No-op."""
    return x


@transformer("Identity", "box")
def identity_box(ctx: RuleContext, x: Box) -> Box:
    """No-op (exact)."""
    return x


@transformer("Identity", "zonotope")
def identity_zonotope(ctx: RuleContext, x: Value) -> Value:
    """No-op (exact)."""
    return x


def _flatten(ctx: RuleContext, x: Value) -> Value:
    return reshape_value(ctx.ops, x, (numel(elem_shape(ctx.ops, center_of(x))),))


@transformer("Flatten", "point")
def flatten_point(ctx: RuleContext, x: T) -> T:
    """Flatten every example to [features]."""
    return _flatten(ctx, x)


@transformer("Flatten", "box")
def flatten_box(ctx: RuleContext, x: Box) -> Box:
    """Flatten centre and radii alike (exact)."""
    return _flatten(ctx, x)


@transformer("Flatten", "zonotope")
def flatten_zonotope(ctx: RuleContext, x: Value) -> Value:
    """Flatten centre, radii and each generator alike (exact, DiffAI §1.2)."""
    return _flatten(ctx, x)


def _reshape(ctx: RuleContext, x: Value) -> Value:
    in_shape = elem_shape(ctx.ops, center_of(x))
    return reshape_value(ctx.ops, x, reshape_shape([in_shape], ctx.attrs))


@transformer("Reshape", "point")
def reshape_point(ctx: RuleContext, x: T) -> T:
    """Reshape every example (the -1 is resolved statically; only the batch axis stays -1)."""
    return _reshape(ctx, x)


@transformer("Reshape", "box")
def reshape_box(ctx: RuleContext, x: Box) -> Box:
    """Reshape centre and radii alike (exact)."""
    return _reshape(ctx, x)


@transformer("Reshape", "zonotope")
def reshape_zonotope(ctx: RuleContext, x: Value) -> Value:
    """Reshape centre, radii and each generator alike (exact, DiffAI §1.2)."""
    return _reshape(ctx, x)
