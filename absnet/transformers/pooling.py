"""Pooling: AvgPool2d, AdaptiveAvgPool2d (linear, exact) and MaxPool2d (sound relaxation).

Average pooling is a linear map with non-negative weights, so centre, box radii and generators
all go through the same op (DiffAI 2018, reference/diffai.md §1.2). Max pooling had no abstract
transformer in DiffAI (§1.6); ours takes, per window, the interval [max_j l_j, max_j u_j], except
where one element provably dominates its window (l_j ≥ u_i for every other i), in which case the
output *is* that element, generators included (as in DeepZ, Singh et al. NeurIPS 2018).
Windows are extracted with strided slices of the padded input (padding counts as −∞ for max).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from absnet.domains.box import Box
from absnet.domains.zonotope import Zonotope
from absnet.transformers._zono import (
    Map,
    Value,
    as_zonotope,
    center_of,
    const,
    elem_shape,
    finish,
    fold,
    map_affine,
    per_example,
    unfold,
)
from absnet.transformers.registry import RuleContext, transformer
from absnet.transformers.tensor_ops import TensorOps

T = Any
NEG_INF = float("-inf")


def _stride(a: Any) -> tuple[int, int]:
    return a["stride"] if a.get("stride") is not None else a["kernel_size"]


# --------------------------------------------------------------------------- AvgPool2d


def _avg_map(ctx: RuleContext, x: Value) -> Map:
    ops, a = ctx.ops, ctx.attrs
    c = center_of(x)
    ch = elem_shape(ops, c)[0]
    kh, kw = a["kernel_size"]
    w = const(ops, np.full((ch, 1, kh, kw), 1.0 / (kh * kw)), c)
    stride, padding = _stride(a), a["padding"]
    return lambda t: ops.conv(t, w, None, stride, padding, (1, 1), ch)


@transformer("AvgPool2d", "point")
def avgpool2d_point(ctx: RuleContext, x: T) -> T:
    """Average pooling as a depthwise conv with weights 1/(kh·kw) (padding zeros count)."""
    return _avg_map(ctx, x)(x)


@transformer("AvgPool2d", "box")
def avgpool2d_box(ctx: RuleContext, x: Box) -> Box:
    """Pool centre and radii alike: exact, the weights are non-negative (DiffAI §1.2)."""
    return map_affine(ctx.ops, x, _avg_map(ctx, x))


@transformer("AvgPool2d", "zonotope")
def avgpool2d_zonotope(ctx: RuleContext, x: Value) -> Value:
    """Pool centre, radii and generators alike (generators as one batch): exact, weights are non-negative."""
    return map_affine(ctx.ops, x, _avg_map(ctx, x))


# --------------------------------------------------------------------------- AdaptiveAvgPool2d


def _adaptive_matrix(size: int, out: int) -> np.ndarray:
    """torch's adaptive windows: output i averages [floor(i·n/o), ceil((i+1)·n/o))."""
    m = np.zeros((out, size))
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def _adaptive_map(ctx: RuleContext, x: Value) -> Map:
    ops = ctx.ops
    c = center_of(x)
    ch, h, w = elem_shape(ops, c)
    oh, ow = ctx.attrs["output_size"]
    mat = const(ops, np.kron(_adaptive_matrix(h, oh), _adaptive_matrix(w, ow)).T, c)
    return lambda t: ops.reshape(ops.matmul(ops.reshape(t, (-1, ch, h * w)), mat), (-1, ch, oh, ow))


@transformer("AdaptiveAvgPool2d", "point")
def adaptiveavgpool2d_point(ctx: RuleContext, x: T) -> T:
    """Adaptive average pooling as one matmul with a constant (H·W, oh·ow) averaging matrix."""
    return _adaptive_map(ctx, x)(x)


@transformer("AdaptiveAvgPool2d", "box")
def adaptiveavgpool2d_box(ctx: RuleContext, x: Box) -> Box:
    """Linear with non-negative weights: pool centre and radii alike (exact)."""
    return map_affine(ctx.ops, x, _adaptive_map(ctx, x))


@transformer("AdaptiveAvgPool2d", "zonotope")
def adaptiveavgpool2d_zonotope(ctx: RuleContext, x: Value) -> Value:
    """Linear with non-negative weights: centre, radii and generators through the same matmul (exact)."""
    return map_affine(ctx.ops, x, _adaptive_map(ctx, x))


# --------------------------------------------------------------------------- MaxPool2d


def _windows(ops: TensorOps, t: T, a: Any, value: float) -> list[T]:
    """The kh·kw strided views (M, C, oh, ow) of ``t`` (M, C, H, W), one per kernel offset."""
    (kh, kw), (sh, sw), (ph, pw) = a["kernel_size"], _stride(a), a["padding"]
    if ph or pw:
        t = ops.pad(t, [(0, 0), (0, 0), (ph, ph), (pw, pw)], value)
    hp, wp = ops.shape(t)[2:]
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    out = []
    for di in range(kh):
        rows = ops.slice(t, 2, di, di + sh * (oh - 1) + 1, sh)
        for dj in range(kw):
            out.append(ops.slice(rows, 3, dj, dj + sw * (ow - 1) + 1, sw))
    return out


def _max_all(ops: TensorOps, ts: list[T]) -> T:
    m = ts[0]
    for t in ts[1:]:
        m = ops.maximum(m, t)
    return m


@transformer("MaxPool2d", "point")
def maxpool2d_point(ctx: RuleContext, x: T) -> T:
    """Max over each window (padding never wins: it is −∞)."""
    return _max_all(ctx.ops, _windows(ctx.ops, x, ctx.attrs, NEG_INF))


@transformer("MaxPool2d", "box")
def maxpool2d_box(ctx: RuleContext, x: Box) -> Box:
    """[max_j l_j, max_j u_j] per window: max is monotone in every argument, so this is the exact
    interval image of a box (padding ≤ kernel/2 keeps every window non-empty)."""
    ops = ctx.ops
    lo = _max_all(ops, _windows(ops, x.lower(ops), ctx.attrs, NEG_INF))
    up = _max_all(ops, _windows(ops, x.upper(ops), ctx.attrs, NEG_INF))
    half = const(ops, 0.5, lo)
    return Box(ops.mul(ops.add(up, lo), half), ops.mul(ops.sub(up, lo), half))


@transformer("MaxPool2d", "zonotope")
def maxpool2d_zonotope(ctx: RuleContext, x: Any) -> Zonotope:
    """A window whose element j satisfies l_j ≥ max_{i≠j} u_i outputs x_j exactly (centre, box and
    generators); any other window becomes the box [max l, max u] with no generators (sound by
    monotonicity of max). A pure zonotope then turns those radii into fresh generators."""
    ops, a = ctx.ops, ctx.attrs
    z = as_zonotope(x)
    r = z.total_radius(ops)
    lows = _windows(ops, ops.sub(z.center, r), a, NEG_INF)
    ups = _windows(ops, ops.add(z.center, r), a, NEG_INF)
    cs = _windows(ops, z.center, a, 0.0)
    bs = None if z.box is None else _windows(ops, z.box, a, 0.0)
    gs = None if z.gens is None else [unfold(ops, g, z.k) for g in _windows(ops, fold(ops, z.gens), a, 0.0)]
    n = len(cs)
    if n == 1:
        return z.with_(center=cs[0], box=None if bs is None else bs[0], gens=None if gs is None else gs[0])
    lo, up = _max_all(ops, lows), _max_all(ops, ups)
    half = const(ops, 0.5, lo)
    center = ops.mul(ops.add(up, lo), half)
    box = ops.mul(ops.sub(up, lo), half)
    gens = None if gs is None else ops.zeros_like(gs[0])
    pre: list[T | None] = [None]
    for j in range(1, n):
        pre.append(ups[0] if j == 1 else ops.maximum(pre[j - 1], ups[j - 1]))
    suf: list[T | None] = [None] * n
    for j in range(n - 2, -1, -1):
        suf[j] = ups[n - 1] if j == n - 2 else ops.maximum(suf[j + 1], ups[j + 1])
    for j in range(n):
        p, s = pre[j], suf[j]
        others = s if p is None else p if s is None else ops.maximum(p, s)
        boxed = ops.greater(others, lows[j])  # element j does not dominate its window
        center = ops.where(boxed, center, cs[j])
        box = ops.where(boxed, box, ops.zeros_like(box) if bs is None else bs[j])
        if gens is not None and gs is not None:
            gens = ops.where(per_example(ops, boxed), gens, gs[j])
    return finish(ops, z.with_(center=center, box=box, gens=gens), ctx.name)
