"""Activations: ReLU (DiffAI's five zonotope variants), LeakyReLU, Sigmoid, Tanh, Softplus, ELU.

Boxes use interval arithmetic on monotone functions: [f(l), f(u)]. Zonotopes use the ReLU variant
the value carries (Boxy, BoxySound, Switch, Smooth, NIPS; reference/diffai.md §1.4) and, for the
smooth activations, the DeepZ transformer of Singh et al. (NeurIPS 2018): with λ the least slope
of f on [l, u], g(x) = f(x) − λx is non-decreasing there, so f(x) ∈ λx + [g(l), g(u)].
A pure zonotope then turns every box radius into a fresh generator (``_zono.finish``).
The smooth functions are composed from exp/log in forms that never overflow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from absnet.domains.box import Box
from absnet.domains.zonotope import Zonotope
from absnet.transformers._zono import as_zonotope, const, finish, per_example
from absnet.transformers.registry import RuleContext, transformer
from absnet.transformers.tensor_ops import TensorOps

T = Any
Fn = Callable[[T], T]
SOUND_EPS = 2e-6  # BoxySound's float-error allowance (diffai.md §1.4)


# --------------------------------------------------------------------------- ReLU


def _relu_interval(ops: TensorOps, c: T, b: T, sound: bool) -> tuple[T, T]:
    """Interval ReLU: centre (relu(u) + relu(l))/2, radius (relu(u) − relu(l))/2."""
    rl, ru = ops.relu(ops.sub(c, b)), ops.relu(ops.add(c, b))
    half = const(ops, 0.5, c)
    rad = ops.mul(ops.sub(ru, rl), half)
    if sound:
        rad = ops.add(rad, const(ops, SOUND_EPS, c))
    return ops.mul(ops.add(ru, rl), half), rad


def _relu_terms(ops: TensorOps, z: Zonotope) -> tuple[T, T | None, T | None]:
    """The hybrid-form ReLU of ``z``: (centre, box radii, per-element generator factor)."""
    c, variant = z.center, z.relu
    if z.gens is None:  # the pure-box case of every variant
        if z.box is None:
            return ops.relu(c), None, None
        center, rad = _relu_interval(ops, c, z.box, variant == "BoxySound")
        return center, rad, None
    zero = ops.zeros_like(c)
    one = const(ops, 1.0, c)
    half = const(ops, 0.5, c)
    b = zero if z.box is None else z.box
    r = z.total_radius(ops)
    lo, up = ops.sub(c, r), ops.add(c, r)
    alive = ops.greater(up, zero)  # u > 0
    cross = ops.greater(zero, lo)  # l < 0 (crossing where alive)
    if variant in ("Boxy", "BoxySound", "Switch"):
        cross_c = cross_b = ops.mul(up, half)
        if variant == "BoxySound":
            cross_b = ops.add(cross_b, const(ops, SOUND_EPS, c))
        cross_g = zero
        if variant == "Switch":  # keep slope 1 with slack [0, −l] unless −l > u
            to_box = ops.greater(ops.neg(lo), up)
            slack = ops.mul(ops.neg(lo), half)
            cross_c = ops.where(to_box, cross_c, ops.add(c, slack))
            cross_b = ops.where(to_box, cross_b, ops.add(b, slack))
            cross_g = ops.where(to_box, zero, ops.add(zero, one))
        center = ops.where(alive, ops.where(cross, cross_c, c), zero)
        box = ops.where(alive, ops.where(cross, cross_b, b), zero)
        gfac = ops.where(alive, ops.where(cross, cross_g, one), zero)
    elif variant == "Smooth":
        n, p = ops.relu(ops.neg(lo)), ops.relu(up)
        t = ops.div(n, ops.add(ops.add(p, n), const(ops, 1e-4, c)))
        keep = ops.sub(one, t)
        boxed = ops.mul(ops.mul(p, half), t)
        nh = ops.mul(n, half)
        center = ops.where(alive, ops.add(ops.mul(ops.add(c, nh), keep), boxed), zero)
        box = ops.where(alive, ops.add(ops.mul(ops.add(b, nh), keep), boxed), zero)
        gfac = ops.where(alive, keep, zero)
    elif variant == "NIPS":
        den = ops.where(ops.greater(up, lo), ops.sub(up, lo), ops.add(zero, one))
        lam = ops.where(cross, ops.where(alive, ops.div(up, den), zero), ops.add(zero, one))
        mu = ops.where(cross, ops.mul(ops.mul(lam, ops.neg(lo)), half), zero)
        center = ops.add(ops.mul(lam, c), mu)
        box = ops.add(ops.mul(lam, b), mu)
        gfac = lam
    else:
        raise ValueError(f"unknown ReLU variant {variant!r}")
    return center, box, gfac


def _scaled_gens(ops: TensorOps, z: Zonotope, gfac: T | None) -> T | None:
    if z.gens is None or gfac is None:
        return z.gens
    return ops.mul(z.gens, per_example(ops, gfac))


@transformer("ReLU", "point")
def relu_point(ctx: RuleContext, x: T) -> T:
    """max(x, 0)."""
    return ctx.ops.relu(x)


@transformer("ReLU", "box")
def relu_box(ctx: RuleContext, x: Box) -> Box:
    """Interval ReLU [relu(l), relu(u)] (exact for a monotone function; DiffAI 2018 §1.4 pure-box
    case). Under BoxySound the radius grows by 2e-6 to absorb float error."""
    c, r = _relu_interval(ctx.ops, x.center, x.radius, ctx.analysis.relu == "BoxySound")
    return Box(c, r)


@transformer("ReLU", "zonotope")
def relu_zonotope(ctx: RuleContext, x: Any) -> Zonotope:
    """DiffAI's ReLU variant carried by the value (diffai.md §1.4), each a sound relaxation:
    Boxy/BoxySound box crossing neurons to [0, u]; Switch keeps relu(x) ∈ x + [0, −l] when −l ≤ u;
    Smooth is a convex blend of those two; NIPS is DeepZ's λx + μ ± μ with λ = u/(u − l)
    (Singh et al. NeurIPS 2018). Stable neurons are exact. Without generators: interval ReLU."""
    z = as_zonotope(x)
    center, box, gfac = _relu_terms(ctx.ops, z)
    return finish(ctx.ops, z.with_(center=center, box=box, gens=_scaled_gens(ctx.ops, z, gfac)), ctx.name)


# --------------------------------------------------------------------------- LeakyReLU


def _leaky(ops: TensorOps, x: T, alpha: float) -> T:
    return ops.where(ops.greater(x, ops.zeros_like(x)), x, ops.mul(x, const(ops, alpha, x)))


@transformer("LeakyReLU", "point")
def leakyrelu_point(ctx: RuleContext, x: T) -> T:
    """x if x > 0 else negative_slope·x."""
    return _leaky(ctx.ops, x, ctx.attrs["negative_slope"])


@transformer("LeakyReLU", "box")
def leakyrelu_box(ctx: RuleContext, x: Box) -> Box:
    """[f(l), f(u)] for negative_slope ≥ 0 (f monotone); otherwise the interval of
    α·x + (1 − α)·relu(x) with |coefficients| on radii. Sound by monotonicity / interval arithmetic."""
    ops, alpha = ctx.ops, float(ctx.attrs["negative_slope"])
    if alpha >= 0.0:
        return _monotone_box(ops, x, lambda t: _leaky(ops, t, alpha))
    rc, rr = _relu_interval(ops, x.center, x.radius, False)
    a, ra = const(ops, alpha, rc), const(ops, abs(alpha), rc)
    b, rb = const(ops, 1.0 - alpha, rc), const(ops, abs(1.0 - alpha), rc)
    return Box(ops.add(ops.mul(x.center, a), ops.mul(rc, b)), ops.add(ops.mul(x.radius, ra), ops.mul(rr, rb)))


@transformer("LeakyReLU", "zonotope")
def leakyrelu_zonotope(ctx: RuleContext, x: Any) -> Zonotope:
    """α·x + (1 − α)·R(x) with R the value's ReLU relaxation, sharing the generators of x (valid for
    all five variants): relu(x) = c_R + E_R·ε + b_R·η' for the same ε as x, so the affine blend is
    sound with |α|·b + |1 − α|·b_R as box radius (DiffAI 2018 §1.4)."""
    ops, alpha = ctx.ops, float(ctx.attrs["negative_slope"])
    z = as_zonotope(x)
    rc, rb, gfac = _relu_terms(ops, z)
    a, b = const(ops, alpha, rc), const(ops, 1.0 - alpha, rc)
    center = ops.add(ops.mul(z.center, a), ops.mul(rc, b))
    box = None
    for part, coef in ((z.box, abs(alpha)), (rb, abs(1.0 - alpha))):
        if part is not None:
            term = ops.mul(part, const(ops, coef, rc))
            box = term if box is None else ops.add(box, term)
    gens = z.gens  # gfac is None only without generators
    if gens is not None and gfac is not None:
        gens = ops.mul(gens, per_example(ops, ops.add(a, ops.mul(gfac, b))))
    return finish(ops, z.with_(center=center, box=box, gens=gens), ctx.name)


# --------------------------------------------------------------------------- smooth activations


def _monotone_box(ops: TensorOps, x: Box, f: Fn) -> Box:
    fl, fu = f(ops.sub(x.center, x.radius)), f(ops.add(x.center, x.radius))
    half = const(ops, 0.5, fl)
    return Box(ops.mul(ops.add(fu, fl), half), ops.mul(ops.sub(fu, fl), half))


def _deepz(ctx: RuleContext, x: Any, f: Fn, slope: Callable[[T, T], T]) -> Zonotope:
    """f(x) ∈ λx + [g(l), g(u)] with λ = slope(l, u) = min f' on [l, u] and g = f − λ·id."""
    ops = ctx.ops
    z = as_zonotope(x)
    r = z.total_radius(ops)
    lo, up = ops.sub(z.center, r), ops.add(z.center, r)
    lam = slope(lo, up)
    gl = ops.sub(f(lo), ops.mul(lam, lo))
    gu = ops.sub(f(up), ops.mul(lam, up))
    half = const(ops, 0.5, lam)
    center = ops.add(ops.mul(lam, z.center), ops.mul(ops.add(gl, gu), half))
    rad = ops.mul(ops.abs(ops.sub(gu, gl)), half)
    box = rad if z.box is None else ops.add(ops.mul(lam, z.box), rad)
    return finish(ops, z.with_(center=center, box=box, gens=_scaled_gens(ops, z, lam)), ctx.name)


def _sigmoid_parts(ops: TensorOps, x: T) -> tuple[T, T]:
    """(σ(|x|), σ(−|x|)) from e = exp(−|x|) ≤ 1, never overflowing."""
    e = ops.exp(ops.neg(ops.abs(x)))
    big = ops.div(const(ops, 1.0, x), ops.add(const(ops, 1.0, x), e))
    return big, ops.mul(e, big)


def sigmoid(ops: TensorOps, x: T) -> T:
    big, small = _sigmoid_parts(ops, x)
    return ops.where(ops.greater(ops.zeros_like(x), x), small, big)


def _dsigmoid(ops: TensorOps, x: T) -> T:
    big, small = _sigmoid_parts(ops, x)
    return ops.mul(big, small)


def tanh(ops: TensorOps, x: T) -> T:
    e = ops.exp(ops.mul(ops.abs(x), const(ops, -2.0, x)))
    one = const(ops, 1.0, x)
    t = ops.div(ops.sub(one, e), ops.add(one, e))
    return ops.where(ops.greater(ops.zeros_like(x), x), ops.neg(t), t)


def _dtanh(ops: TensorOps, x: T) -> T:
    e = ops.exp(ops.mul(ops.abs(x), const(ops, -2.0, x)))
    d = ops.add(const(ops, 1.0, x), e)
    return ops.div(ops.mul(e, const(ops, 4.0, x)), ops.mul(d, d))


def softplus(ops: TensorOps, x: T) -> T:
    e = ops.exp(ops.neg(ops.abs(x)))
    return ops.add(ops.relu(x), ops.log(ops.add(const(ops, 1.0, x), e)))


def elu(ops: TensorOps, x: T, alpha: float) -> T:
    zero = ops.zeros_like(x)
    neg = ops.mul(ops.sub(ops.exp(ops.minimum(x, zero)), const(ops, 1.0, x)), const(ops, alpha, x))
    return ops.where(ops.greater(x, zero), x, neg)


def _elu_slope(ops: TensorOps, lo: T, up: T, alpha: float) -> T:
    """min ELU' on [l, u] for α ≥ 0: 1 on the positive part, α·e^x (increasing) on the negative."""
    zero = ops.zeros_like(lo)
    one = ops.add(zero, const(ops, 1.0, lo))
    neg = ops.mul(ops.exp(ops.minimum(lo, zero)), const(ops, alpha, lo))
    return ops.where(ops.greater(lo, zero), one, ops.where(ops.greater(up, zero), ops.minimum(neg, one), neg))


def _alpha(ctx: RuleContext) -> float:
    alpha = float(ctx.attrs["alpha"])
    if alpha < 0.0:
        raise ValueError("ELU with alpha < 0 is not monotone; abstract analysis needs alpha >= 0")
    return alpha


@transformer("Sigmoid", "point")
def sigmoid_point(ctx: RuleContext, x: T) -> T:
    """1 / (1 + exp(−x)), computed from exp(−|x|)."""
    return sigmoid(ctx.ops, x)


@transformer("Sigmoid", "box")
def sigmoid_box(ctx: RuleContext, x: Box) -> Box:
    """[σ(l), σ(u)]: exact since σ is increasing (interval arithmetic)."""
    return _monotone_box(ctx.ops, x, lambda t: sigmoid(ctx.ops, t))


@transformer("Sigmoid", "zonotope")
def sigmoid_zonotope(ctx: RuleContext, x: Any) -> Zonotope:
    """DeepZ (Singh et al. NeurIPS 2018): λ = min(σ'(l), σ'(u)) is the least slope on [l, u]
    because σ' is unimodal with its peak at 0; σ − λ·id is then non-decreasing on [l, u]."""
    ops = ctx.ops
    return _deepz(ctx, x, lambda t: sigmoid(ops, t),
                  lambda lo, up: ops.minimum(_dsigmoid(ops, lo), _dsigmoid(ops, up)))


@transformer("Tanh", "point")
def tanh_point(ctx: RuleContext, x: T) -> T:
    """tanh(x), computed from exp(−2|x|)."""
    return tanh(ctx.ops, x)


@transformer("Tanh", "box")
def tanh_box(ctx: RuleContext, x: Box) -> Box:
    """[tanh(l), tanh(u)]: exact since tanh is increasing."""
    return _monotone_box(ctx.ops, x, lambda t: tanh(ctx.ops, t))


@transformer("Tanh", "zonotope")
def tanh_zonotope(ctx: RuleContext, x: Any) -> Zonotope:
    """DeepZ (Singh et al. NeurIPS 2018): λ = min(tanh'(l), tanh'(u)) (tanh' unimodal, peak at 0),
    so tanh − λ·id is non-decreasing on [l, u]."""
    ops = ctx.ops
    return _deepz(ctx, x, lambda t: tanh(ops, t),
                  lambda lo, up: ops.minimum(_dtanh(ops, lo), _dtanh(ops, up)))


@transformer("Softplus", "point")
def softplus_point(ctx: RuleContext, x: T) -> T:
    """log(1 + exp(x)) = relu(x) + log(1 + exp(−|x|))."""
    return softplus(ctx.ops, x)


@transformer("Softplus", "box")
def softplus_box(ctx: RuleContext, x: Box) -> Box:
    """[softplus(l), softplus(u)]: exact since softplus is increasing."""
    return _monotone_box(ctx.ops, x, lambda t: softplus(ctx.ops, t))


@transformer("Softplus", "zonotope")
def softplus_zonotope(ctx: RuleContext, x: Any) -> Zonotope:
    """DeepZ-style (Singh et al. NeurIPS 2018): softplus' = σ is increasing, so λ = σ(l) is the least
    slope on [l, u]. Replaces DiffAI's sampled Taylor remainder, which is not a proof (§9.4)."""
    ops = ctx.ops
    return _deepz(ctx, x, lambda t: softplus(ops, t), lambda lo, up: sigmoid(ops, lo))


@transformer("ELU", "point")
def elu_point(ctx: RuleContext, x: T) -> T:
    """x if x > 0 else alpha·(exp(x) − 1)."""
    return elu(ctx.ops, x, float(ctx.attrs["alpha"]))


@transformer("ELU", "box")
def elu_box(ctx: RuleContext, x: Box) -> Box:
    """[elu(l), elu(u)]: exact since ELU is non-decreasing for alpha ≥ 0 (DiffAI 2018 §1.6)."""
    alpha = _alpha(ctx)
    return _monotone_box(ctx.ops, x, lambda t: elu(ctx.ops, t, alpha))


@transformer("ELU", "zonotope")
def elu_zonotope(ctx: RuleContext, x: Any) -> Zonotope:
    """DeepZ-style: λ = min ELU' on [l, u] (1 for x > 0, α·e^l on the negative part), so
    elu − λ·id is non-decreasing on [l, u] (Singh et al. NeurIPS 2018)."""
    ops, alpha = ctx.ops, _alpha(ctx)
    return _deepz(ctx, x, lambda t: elu(ops, t, alpha), lambda lo, up: _elu_slope(ops, lo, up, alpha))
