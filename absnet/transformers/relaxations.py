"""Linear relaxations of the activations for the linear-bounds domain (reference/crown_ibp.md §1.4).

Each rule takes the intermediate bounds [l, u] of its input (``domains.linear.interval``: IBP's
box under CROWN-IBP, back-substitution under CROWN/DeepPoly/FastLin), chooses per neuron a lower
line a_L·x + b_L ≤ f(x) and an upper line f(x) ≤ a_U·x + b_U on [l, u], and substitutes them
backwards: Λ_in = Λ⁺·a_L + Λ⁻·a_U, c = Σ Λ⁺·b_L + Λ⁻·b_U (Λ⁺, Λ⁻: the positive and negative
parts of the objective coefficients).

ReLU (the classic triangle): a_U = u⁺/(u⁺ − l⁻), b_U = −l⁻·a_U (the chord); b_L = 0 and the lower
slope a_L ∈ [0, 1] of an unstable neuron is the analysis's ``slope``: ``adaptive`` (1 if u > −l
else 0: CROWN's and DeepPoly's area-minimising choice), ``same_slope`` (a_U: Fast-Lin and
Wong–Kolter), ``zero_lb``, ``one_lb``, or α-CROWN's optimised α. Stable neurons are exact.

The other activations use one sound construction: any slope a gives a valid line once its
intercept is the exact extremum of f(x) − a·x over [l, u], which lies at l, u, or a point where
f'(x) = a (or a kink). Those points are known in closed form for every activation here, so the
intercepts are exact for the chosen slopes, whatever the slopes are. Slopes: the chord on the side
where f is convex/concave over [l, u], the tangent at the midpoint on the other side, and the chord
for both lines where an S-shaped function changes curvature inside [l, u].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from absnet.domains.box import Box
from absnet.domains.linear import Backward, LinearValue, interval
from absnet.transformers.activations import _dsigmoid, _dtanh, elu, sigmoid, softplus, tanh
from absnet.transformers.backward import derive, dot_rest, sum_rest
from absnet.transformers.pooling import NEG_INF, _max_all, _stride, _windows
from absnet.transformers.registry import RuleContext, lookup, transformer
from absnet.transformers.tensor_ops import TensorOps

T = Any
Fn = Callable[[T], T]
TINY = 1e-12


def _c(ops: TensorOps, v: float, like: T) -> T:
    return ops.constant(v, like)


def _expand(ops: TensorOps, t: T) -> T:
    """(N, *s) → (N, 1, *s): broadcasts over the objective rows."""
    return ops.reshape(t, (-1, 1, *ops.shape(t)[1:]))


def _lines_back(ctx: RuleContext, x: LinearValue, a_lo: T, b_lo: T, a_up: T, b_up: T,
                box: Box) -> LinearValue:
    ops = ctx.ops
    al, bl, au, bu = (_expand(ops, t) for t in (a_lo, b_lo, a_up, b_up))

    def back(ops_: TensorOps, lam: T, bw: Backward) -> tuple[list[T | None], T | None]:
        pos = ops.relu(lam)
        neg = ops.sub(lam, pos)
        new = ops.add(ops.mul(pos, al), ops.mul(neg, au))
        return [new], sum_rest(ops, ops.add(ops.mul(pos, bl), ops.mul(neg, bu)))

    return derive(ctx, [x], back, box)


def _box_of(ctx: RuleContext, lo: T, hi: T) -> Box:
    rule = lookup(ctx.node.op, "box")
    assert rule is not None
    return rule.fn(ctx, Box.from_bounds(ctx.ops, lo, hi))


# --------------------------------------------------------------------------- ReLU


def relu_lines(ops: TensorOps, lo: T, hi: T, slope: str) -> tuple[T, T, T, T]:
    """(lower slope, upper slope, upper intercept, unstable mask) of the ReLU triangle on [lo, hi]."""
    zero = ops.zeros_like(lo)
    one = ops.add(zero, _c(ops, 1.0, lo))
    lm, up = ops.minimum(lo, zero), ops.maximum(hi, zero)
    unstable = ops.greater(ops.minimum(ops.neg(lo), hi), zero)
    chord = ops.div(up, ops.maximum(ops.sub(up, lm), _c(ops, TINY, lo)))
    a_up = ops.where(unstable, chord, ops.where(ops.greater(hi, zero), one, zero))  # stable: exact
    b_up = ops.neg(ops.mul(lm, a_up))
    if slope == "same_slope":
        a_lo = a_up
    else:
        choice = {"adaptive": ops.where(ops.greater(hi, ops.neg(lo)), one, zero),
                  "zero_lb": zero, "one_lb": one}[slope]
        a_lo = ops.where(unstable, choice, a_up)
    return a_lo, a_up, b_up, unstable


@transformer("ReLU", "linear")
def relu_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """The triangle relaxation with the analysis's lower slope (or α-CROWN's optimised one):
    Λ_in = Λ⁺·a_L + Λ⁻·a_U, c = Σ Λ⁻·b_U. Sound: a_L·x ≤ relu(x) ≤ a_U·x + b_U on [l, u]."""
    ops = ctx.ops
    lo, hi = interval(ops, x)
    a_lo, a_up, b_up, unstable = relu_lines(ops, lo, hi, x.analysis.slope)
    al, au, un = (_expand(ops, t) for t in (a_lo, a_up, unstable))
    same = x.analysis.slope == "same_slope"
    node = ctx.node.id

    def back(ops_: TensorOps, lam: T, bw: Backward) -> tuple[list[T | None], T | None]:
        if bw.collect is not None:
            bw.collect[node] = (a_lo, unstable)
        lower = au if same else al
        if bw.alpha is not None and node in bw.alpha:
            alpha = ops.minimum(ops.maximum(bw.alpha[node], _c(ops, 0.0, lam)), _c(ops, 1.0, lam))
            lower = ops.where(un, alpha, al)
        neg = ops.minimum(lam, _c(ops, 0.0, lam))
        if lower is au:  # same slope above and below: one product
            new = ops.mul(lam, au)
        else:  # Λ⁺·a_L + Λ⁻·a_U = Λ·a_L + Λ⁻·(a_U − a_L): no select over the objective rows
            new = ops.add(ops.mul(lam, lower), ops.mul(neg, ops.sub(au, lower)))
        return [new], dot_rest(ops, neg, b_up)

    box = Box.from_bounds(ops, ops.relu(lo), ops.relu(hi))
    return derive(ctx, [x], back, box)


# --------------------------------------------------------------------------- exact-intercept lines


def _intercepts(ops: TensorOps, f: Fn, lo: T, hi: T, slope: T, stationary: list[T], lowest: bool) -> T:
    """min (or max) of f(p) − slope·p over p ∈ {l, u} ∪ stationary points clipped into [l, u]."""
    best = None
    for p in [lo, hi, *stationary]:
        p = ops.minimum(ops.maximum(p, lo), hi)
        v = ops.sub(f(p), ops.mul(slope, p))
        best = v if best is None else (ops.minimum(best, v) if lowest else ops.maximum(best, v))
    return best


def _chord(ops: TensorOps, f: Fn, df: Fn, lo: T, hi: T) -> T:
    width = ops.sub(hi, lo)
    mid = ops.mul(ops.add(lo, hi), _c(ops, 0.5, lo))
    wide = ops.greater(width, _c(ops, 1e-6, lo))
    safe = ops.where(wide, width, ops.add(ops.zeros_like(lo), _c(ops, 1.0, lo)))
    return ops.where(wide, ops.div(ops.sub(f(hi), f(lo)), safe), df(mid))


def _smooth(ctx: RuleContext, x: LinearValue, f: Fn, df: Fn, points: Callable[[T], list[T]],
            shape: str) -> LinearValue:
    """Lines for f with the closed-form stationary points ``points(slope)``; ``shape`` is
    ``convex``, ``concave`` or ``s`` (convex below 0, concave above)."""
    ops = ctx.ops
    lo, hi = interval(ops, x)
    chord = _chord(ops, f, df, lo, hi)
    tangent = df(ops.mul(ops.add(lo, hi), _c(ops, 0.5, lo)))
    zero = ops.zeros_like(lo)
    if shape == "convex":
        a_lo, a_up = tangent, chord
    elif shape == "concave":
        a_lo, a_up = chord, tangent
    else:
        a_lo = ops.where(ops.greater(hi, zero), chord, tangent)
        a_up = ops.where(ops.greater(zero, lo), chord, tangent)
    b_lo = _intercepts(ops, f, lo, hi, a_lo, points(a_lo), lowest=True)
    b_up = _intercepts(ops, f, lo, hi, a_up, points(a_up), lowest=False)
    return _lines_back(ctx, x, a_lo, b_lo, a_up, b_up, _box_of(ctx, lo, hi))


def _logit(ops: TensorOps, p: T) -> T:
    return ops.log(ops.div(p, ops.sub(_c(ops, 1.0, p), p)))


@transformer("Sigmoid", "linear")
def sigmoid_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Tangent/chord lines with exact intercepts; σ'(p) = a at σ(p) = (1 ± √(1 − 4a))/2."""
    ops = ctx.ops

    def points(a: T) -> list[T]:
        a = ops.minimum(ops.maximum(a, _c(ops, TINY, a)), _c(ops, 0.25, a))
        # the floor keeps the gradient finite at a = 1/4 (the tangent at 0)
        root = ops.sqrt(ops.maximum(ops.sub(_c(ops, 1.0, a), ops.mul(a, _c(ops, 4.0, a))), _c(ops, 1e-30, a)))
        half = _c(ops, 0.5, a)
        return [_logit(ops, ops.mul(ops.add(_c(ops, 1.0, a), root), half)),
                _logit(ops, ops.mul(ops.sub(_c(ops, 1.0, a), root), half))]

    return _smooth(ctx, x, lambda t: sigmoid(ops, t), lambda t: _dsigmoid(ops, t), points, "s")


@transformer("Tanh", "linear")
def tanh_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Tangent/chord lines with exact intercepts; tanh'(p) = a at tanh(p) = ±√(1 − a)."""
    ops = ctx.ops

    def points(a: T) -> list[T]:
        a = ops.minimum(ops.maximum(a, _c(ops, TINY, a)), _c(ops, 1.0, a))
        t = ops.sqrt(ops.maximum(ops.sub(_c(ops, 1.0, a), a), _c(ops, 1e-30, a)))  # finite gradient at a = 1
        one = _c(ops, 1.0, a)
        p = ops.mul(ops.log(ops.div(ops.add(one, t), ops.sub(one, t))), _c(ops, 0.5, a))
        return [p, ops.neg(p)]

    return _smooth(ctx, x, lambda t: tanh(ops, t), lambda t: _dtanh(ops, t), points, "s")


@transformer("Softplus", "linear")
def softplus_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Convex: tangent at the midpoint below, chord above, exact intercepts (softplus' = σ)."""
    ops = ctx.ops

    def points(a: T) -> list[T]:
        # a steep tangent (l ≫ 0) has its stationary point far right: clip a only at 1 − 1e-15
        return [_logit(ops, ops.minimum(ops.maximum(a, _c(ops, TINY, a)), _c(ops, 1.0 - 1e-15, a)))]

    return _smooth(ctx, x, lambda t: softplus(ops, t), lambda t: sigmoid(ops, t), points, "convex")


@transformer("ELU", "linear")
def elu_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Tangent at the midpoint below, chord above; intercepts exact over {l, u, 0, log(a/α)}
    (ELU' = α·eˣ below 0, 1 above), so the lines are sound for any α ≥ 0, convex or not."""
    ops = ctx.ops
    alpha = float(ctx.attrs["alpha"])

    def f(t: T) -> T:
        return elu(ops, t, alpha)

    def df(t: T) -> T:
        zero = ops.zeros_like(t)
        neg = ops.mul(ops.exp(ops.minimum(t, zero)), _c(ops, alpha, t))
        return ops.where(ops.greater(t, zero), ops.add(zero, _c(ops, 1.0, t)), neg)

    def points(a: T) -> list[T]:
        zero = ops.zeros_like(a)
        if alpha == 0.0:
            return [zero]
        ratio = ops.maximum(ops.div(a, _c(ops, alpha, a)), _c(ops, TINY, a))
        return [zero, ops.minimum(ops.log(ratio), zero)]

    return _smooth(ctx, x, f, df, points, "convex")


@transformer("LeakyReLU", "linear")
def leakyrelu_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """Chord above (below when the negative slope exceeds 1), the adaptive slope (1 if u > −l else
    the negative slope) on the other side; intercepts exact over {l, u, 0}."""
    ops = ctx.ops
    k = float(ctx.attrs["negative_slope"])
    lo, hi = interval(ops, x)
    zero = ops.zeros_like(lo)

    def f(t: T) -> T:
        return ops.where(ops.greater(t, zero), t, ops.mul(t, _c(ops, k, t)))

    def df(t: T) -> T:
        return ops.where(ops.greater(t, zero), ops.add(zero, _c(ops, 1.0, t)), ops.add(zero, _c(ops, k, t)))

    chord = _chord(ops, f, df, lo, hi)
    if x.analysis.slope == "same_slope":
        other = chord
    else:
        other = ops.where(ops.greater(hi, ops.neg(lo)), ops.add(zero, _c(ops, 1.0, lo)), ops.add(zero, _c(ops, k, lo)))
    a_lo, a_up = (other, chord) if k <= 1.0 else (chord, other)
    b_lo = _intercepts(ops, f, lo, hi, a_lo, [zero], lowest=True)
    b_up = _intercepts(ops, f, lo, hi, a_up, [zero], lowest=False)
    return _lines_back(ctx, x, a_lo, b_lo, a_up, b_up, _box_of(ctx, lo, hi))


# --------------------------------------------------------------------------- MaxPool2d

# (imports of this section; they belong with the others at the top of the module)



def _maxpool_selection(ops: TensorOps, lows: list[T], ups: list[T]) -> tuple[list[T], T]:
    """Per kernel offset p the float mask [j* = p] (j*: the first element with the largest lower
    bound) and the boolean mask of decided windows (l_{j*} ≥ u_i for every other i). Padding holds
    −∞ lower and upper bounds, so it is never selected and never blocks a decision."""
    n = len(lows)
    one = ops.add(ops.zeros_like(lows[0]), _c(ops, 1.0, lows[0]))
    zero = ops.zeros_like(lows[0])
    pre_l: list[T | None] = [None] * n  # max_{q<p} l_q
    pre_u: list[T | None] = [None] * n  # max_{q<p} u_q
    for p in range(1, n):
        pre_l[p] = lows[0] if p == 1 else ops.maximum(pre_l[p - 1], lows[p - 1])
        pre_u[p] = ups[0] if p == 1 else ops.maximum(pre_u[p - 1], ups[p - 1])
    suf_l: list[T | None] = [None] * n  # max_{q>p} l_q
    suf_u: list[T | None] = [None] * n  # max_{q>p} u_q
    for p in range(n - 2, -1, -1):
        suf_l[p] = lows[n - 1] if p == n - 2 else ops.maximum(suf_l[p + 1], lows[p + 1])
        suf_u[p] = ups[n - 1] if p == n - 2 else ops.maximum(suf_u[p + 1], ups[p + 1])
    masks, decided = [], zero
    for p in range(n):
        m = one
        if suf_l[p] is not None:  # a later element with a strictly larger lower bound wins
            m = ops.where(ops.greater(suf_l[p], lows[p]), zero, m)
        if pre_l[p] is not None:  # an earlier element with an equal or larger one wins (ties: first)
            m = ops.where(ops.greater(lows[p], pre_l[p]), m, zero)
        masks.append(m)
        pu, su = pre_u[p], suf_u[p]
        others = su if pu is None else pu if su is None else ops.maximum(pu, su)
        dec = m if others is None else ops.where(ops.greater(others, lows[p]), zero, m)
        decided = ops.add(decided, dec)
    return masks, ops.greater(decided, _c(ops, 0.5, decided))


@transformer("MaxPool2d", "linear")
def maxpool2d_linear(ctx: RuleContext, x: LinearValue) -> LinearValue:
    """DeepPoly's max relaxation per window (Singh et al., POPL 2019): with j* the element of
    largest lower bound, y ≥ x_{j*} (the max is at least any element), and y ≤ x_{j*} where
    l_{j*} ≥ u_i for every other i (then x_{j*} ≥ x_i everywhere, so y = x_{j*} exactly), else the
    constant y ≤ max_i u_i (every element is at most its upper bound). Backward: Λ⁺ goes to x_{j*},
    Λ⁻ to x_{j*} on decided windows and otherwise adds Λ⁻·max u; the routing is one depthwise
    conv_transpose of the k² masked maps with one-hot kernels, the adjoint of the k² window
    selections (overlaps add, padding is cropped and never selected). The box: the box rule on [l, u].
    """
    ops, a = ctx.ops, ctx.attrs
    in_shape, out_shape = tuple(ctx.in_shapes[0]), tuple(ctx.out_shape)
    ch, oh, ow = out_shape
    (kh, kw), stride, pad = a["kernel_size"], _stride(a), a["padding"]
    k = kh * kw
    lo, hi = interval(ops, x)
    lows = _windows(ops, lo, a, NEG_INF)
    ups = _windows(ops, hi, a, NEG_INF)
    masks, decided = _maxpool_selection(ops, lows, ups)
    # (N, 1, C, k, oh, ow): the masks stacked channel-major, as the grouped kernel below expects
    stacked = ops.reshape(ops.concat([ops.reshape(m, (-1, ch, 1, oh, ow)) for m in masks], 2),
                          (-1, 1, ch, k, oh, ow))
    dec = ops.reshape(decided, (-1, 1, ch, oh, ow))
    free = ops.where(decided, ops.zeros_like(masks[0]), _max_all(ops, ups))  # the constant upper line's max u
    onehot = np.zeros((ch * k, 1, kh, kw))
    for p in range(k):
        onehot[p::k, 0, p // kw, p % kw] = 1.0
    w = ops.constant(onehot, lo)
    extra = [in_shape[1 + i] - ((out_shape[1 + i] - 1) * stride[i] - 2 * pad[i] + kk)
             for i, kk in enumerate((kh, kw))]

    def back(ops_: TensorOps, lam: T, bw: Backward) -> tuple[list[T | None], T | None]:
        s = ops.shape(lam)[1]
        pos = ops.relu(lam)
        neg = ops.sub(lam, pos)
        routed = ops.where(dec, lam, pos)  # (N, S, C, oh, ow)
        per_offset = ops.mul(ops.reshape(routed, (-1, s, ch, 1, oh, ow)), stacked)
        t = ops.conv_transpose(ops.reshape(per_offset, (-1, ch * k, oh, ow)), w, stride, pad, extra, (1, 1), ch)
        return [ops.reshape(t, (-1, s, *in_shape))], dot_rest(ops, neg, free)

    return derive(ctx, [x], back, _box_of(ctx, lo, hi))
