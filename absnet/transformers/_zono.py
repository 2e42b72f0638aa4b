"""Helpers shared by the rules: shapes, linear maps over whole abstract values, generator blocks.

Everything here calls only the tensor-ops facade, so it stages to ONNX like the rules themselves.
A *value* is a plain tensor (point), a :class:`Box` or a :class:`Zonotope`. Generators are laid out
(N, k, *s); ``fold`` merges the generator axis into the batch axis so that one op maps centre and
generators together, and ``unfold`` splits it again (the batch axis is always the ``-1``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from absnet.domains.box import Box
from absnet.domains.zonotope import GenBlock, Zonotope
from absnet.transformers.tensor_ops import TensorOps

T = Any
Value = Any  # tensor | Box | Zonotope
Map = Callable[[T], T]


def elem_shape(ops: TensorOps, x: T) -> tuple[int, ...]:
    """The per-example shape of a batched tensor (everything but axis 0)."""
    return tuple(ops.shape(x)[1:])


def numel(shape: Sequence[int]) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def fold(ops: TensorOps, t: T) -> T:
    """(N, k, *s) → (N·k, *s)."""
    return ops.reshape(t, (-1, *ops.shape(t)[2:]))


def unfold(ops: TensorOps, t: T, k: int) -> T:
    """(N·k, *s) → (N, k, *s)."""
    return ops.reshape(t, (-1, k, *ops.shape(t)[1:]))


def per_example(ops: TensorOps, t: T) -> T:
    """(N, *s) → (N, 1, *s): broadcasts a per-example tensor over the generator axis."""
    return ops.reshape(t, (-1, 1, *elem_shape(ops, t)))


def const(ops: TensorOps, value: Any, like: T) -> T:
    return ops.constant(value, like)


def bounds(ops: TensorOps, v: Value) -> tuple[T, T]:
    """Elementwise lower and upper bounds of a point, Box or Zonotope."""
    if isinstance(v, Box | Zonotope):
        return v.lower(ops), v.upper(ops)
    return v, v


def center_of(v: Value) -> T:
    return v.center if isinstance(v, Box | Zonotope) else v


def as_zonotope(v: Value, pure: bool = False, relu: str = "Boxy") -> Zonotope:
    """View a point or Box as a Zonotope without generators (a Box is a hybrid zonotope)."""
    if isinstance(v, Zonotope):
        return v
    if isinstance(v, Box):
        return Zonotope(v.center, v.radius, None, (), pure, relu)
    return Zonotope(v, None, None, (), pure, relu)


# --------------------------------------------------------------------------- linear maps


def map_affine(
    ops: TensorOps, v: Value, lin: Map, lin_abs: Map | None = None, bias: Map | None = None
) -> Value:
    """Apply the affine map x ↦ lin(x) + bias to a Box or Zonotope (diffai.md §1.2, exact).

    ``lin`` is the linear part applied to a batch (M, *s) → (M, *s'); ``lin_abs`` the same map with
    |weights| for box radii, or None when the weights are non-negative (``lin`` serves for both).
    """
    add_bias = bias if bias is not None else (lambda t: t)
    if isinstance(v, Box):
        return Box(add_bias(lin(v.center)), (lin_abs or lin)(v.radius))
    z = v
    center = add_bias(lin(z.center))
    box = None if z.box is None else (lin_abs or lin)(z.box)
    # Generators go through the map as one batch (N·k, *s). Mapping them apart from the centre
    # avoids concatenating (and copying) the whole generator tensor: measured faster on the CPU.
    gens = None if z.gens is None else unfold(ops, lin(fold(ops, z.gens)), z.k)
    return z.with_(center=center, box=box, gens=gens)


def scale_shift(ops: TensorOps, v: Value, scale: T, shift: T | None = None, per_ex: bool = False) -> Value:
    """x ↦ x·scale + shift elementwise (exact). ``scale`` broadcasts against (N, *s); with
    ``per_ex`` it is a per-example tensor (N, *s) and is reshaped to broadcast over generators."""
    def center(c: T) -> T:
        y = ops.mul(c, scale)
        return y if shift is None else ops.add(y, shift)

    if not isinstance(v, Box | Zonotope):
        return center(v)
    a = ops.abs(scale)
    if isinstance(v, Box):
        return Box(center(v.center), ops.mul(v.radius, a))
    gscale = per_example(ops, scale) if per_ex else scale
    return v.with_(
        center=center(v.center),
        box=None if v.box is None else ops.mul(v.box, a),
        gens=None if v.gens is None else ops.mul(v.gens, gscale),
    )


def reshape_value(ops: TensorOps, v: Value, shape: Sequence[int]) -> Value:
    """Reshape every component to the per-example ``shape`` (exact)."""
    def r(t: T) -> T:
        return ops.reshape(t, (-1, *shape))

    if isinstance(v, Box):
        return Box(r(v.center), r(v.radius))
    if isinstance(v, Zonotope):
        gens = None if v.gens is None else ops.reshape(v.gens, (-1, v.k, *shape))
        return v.with_(center=r(v.center), box=None if v.box is None else r(v.box), gens=gens)
    return r(v)


# --------------------------------------------------------------------------- generator blocks


def box_to_gens(ops: TensorOps, box: T, name: str) -> tuple[T, GenBlock]:
    """One fresh generator per element, b_j·δ_j (N, n, *s), named ``name``."""
    s = elem_shape(ops, box)
    n = numel(s)
    flat = ops.reshape(box, (-1, 1, n))
    gens = ops.mul(flat, const(ops, np.eye(n), flat))
    return ops.reshape(gens, (-1, n, *s)), (name, n)


def append_gens(ops: TensorOps, z: Zonotope, new: T, block: GenBlock) -> Zonotope:
    """Append a block of generators after the existing ones."""
    gens = new if z.gens is None else ops.concat([z.gens, new], 1)
    return z.with_(gens=gens, blocks=(*z.blocks, block))


def box_into_gens(ops: TensorOps, z: Zonotope, name: str) -> Zonotope:
    """Turn every box radius into its own generator (a new block); exact re-representation."""
    if z.box is None:
        return z
    new, block = box_to_gens(ops, z.box, name)
    return append_gens(ops, z.with_(box=None), new, block)


def finish(ops: TensorOps, z: Zonotope, name: str) -> Zonotope:
    """After a nonlinearity: a pure zonotope turns its box radii into fresh generators
    (diffai.md §1.5), even when it had no generators before (fixes §9.4); a hybrid keeps them."""
    return box_into_gens(ops, z, f"{name}:box") if z.pure else z


def split_blocks(ops: TensorOps, z: Zonotope) -> dict[str, T]:
    """The generators of each block, by block identity."""
    out: dict[str, T] = {}
    off = 0
    for name, n in z.blocks:
        out[name] = z.gens if len(z.blocks) == 1 else ops.slice(z.gens, 1, off, off + n)
        off += n
    return out


def union_blocks(zs: Sequence[Zonotope]) -> tuple[GenBlock, ...]:
    """The blocks of all values, in order of first appearance; a block must keep its size."""
    seen: dict[str, int] = {}
    for z in zs:
        for name, n in z.blocks:
            if seen.setdefault(name, n) != n:
                raise ValueError(f"generator block {name!r} has {seen[name]} generators in one input "
                                 f"and {n} in another")
    return tuple(seen.items())


def zero_gens(ops: TensorOps, like: T, n: int) -> T:
    """Zeros shaped (N, n, *s) for a per-example tensor ``like`` (N, *s)."""
    z = per_example(ops, ops.zeros_like(like))
    return z if n == 1 else ops.pad(z, [(0, 0), (0, n - 1)] + [(0, 0)] * len(elem_shape(ops, like)))


# --------------------------------------------------------------------------- (de)correlation


def correlate(ops: TensorOps, z: Zonotope, idx: T, name: str) -> Zonotope:
    """Correlate the flat elements ``idx`` (N, m) of each example (diffai.md §2, *correlate*).

    Generator t of example β is b_β[j_t]·δ_{j_t}; those radii become zero. The set is unchanged
    (exact re-representation). Written with gather/scatter, never in place (fixes §9.4).
    """
    if z.box is None:
        return z
    s = elem_shape(ops, z.center)
    n = numel(s)
    m = ops.shape(idx)[1]
    b = ops.reshape(z.box, (-1, n))
    vals = ops.gather(b, idx, 1)
    idx3 = ops.reshape(idx, (-1, m, 1))
    gens = ops.scatter(zero_gens(ops, b, m), idx3, ops.reshape(vals, (-1, m, 1)), 2)
    box = ops.reshape(ops.scatter(b, idx, ops.zeros_like(vals), 1), (-1, *s))
    return append_gens(ops, z.with_(box=box), ops.reshape(gens, (-1, m, *s)), (name, m))


def correlate_fixed(ops: TensorOps, z: Zonotope, positions: Sequence[int], name: str) -> Zonotope:
    """Correlate the same flat ``positions`` in every example, with constant one-hot masks."""
    if z.box is None or not positions:
        return z
    s = elem_shape(ops, z.center)
    n, m = numel(s), len(positions)
    onehot = np.zeros((m, n))
    onehot[np.arange(m), list(positions)] = 1.0
    b = ops.reshape(z.box, (-1, n))
    gens = ops.mul(ops.reshape(b, (-1, 1, n)), const(ops, onehot, b))
    keep = const(ops, 1.0 - onehot.sum(0), b)
    box = ops.reshape(ops.mul(b, keep), (-1, *s))
    return append_gens(ops, z.with_(box=box), ops.reshape(gens, (-1, m, *s)), (name, m))


def concretize(ops: TensorOps, z: Zonotope) -> Zonotope:
    """Fold every generator into the box radii: b' = b + Σ|e_i| (sound, drops correlation)."""
    if z.gens is None:
        return z
    return z.with_(box=z.total_radius(ops), gens=None, blocks=())


def decorrelate(ops: TensorOps, z: Zonotope, scores: T, keep: int, name: str) -> Zonotope:
    """Keep the ``keep`` generators with the highest ``scores`` (N, k) per example and fold the
    others into the box: b' = b + Σ(1 − mask_i)|e_i| (diffai.md §2, *decorrelate*).

    Which generators survive differs per example, so the kept ones form a fresh block ``name``.
    """
    k = z.k
    if z.gens is None or keep >= k:
        return z
    if keep <= 0:
        return concretize(ops, z)
    s = elem_shape(ops, z.center)
    n = numel(s)
    vals, idx = ops.topk(scores, keep, 1)
    mask = ops.scatter(ops.zeros_like(scores), idx, ops.add(ops.zeros_like(vals), const(ops, 1.0, vals)), 1)
    drop = ops.reshape(ops.sub(const(ops, 1.0, mask), mask), (-1, k, *([1] * len(s))))
    folded = ops.sum(ops.mul(ops.abs(z.gens), drop), [1])
    box = folded if z.box is None else ops.add(z.box, folded)
    flat = ops.reshape(z.gens, (-1, k, n))
    gidx = ops.add(ops.reshape(idx, (-1, keep, 1)), const(ops, np.zeros((1, 1, n), dtype=np.int64), idx))
    kept = ops.reshape(ops.gather(flat, gidx, 1), (-1, keep, *s))
    return z.with_(box=box, gens=kept, blocks=((name, keep),))


# --------------------------------------------------------------------------- deep loss


def deep_loss(ops: TensorOps, lower: T, upper: T) -> T:
    """DiffAI's deep_loss with act = relu (diffai.md §1.7), per example (N,).

    Elements are sorted by lower bound (topk over all n: n is static); M_i = max(min_j u_j,
    max_{j<i} u_(j)) uses a log-step prefix maximum; D = Σ_i relu(M_i − l_(i)).
    Result (D(l, u) + D(−u, −l)) / (2n).
    """
    n = numel(elem_shape(ops, lower))
    lo = ops.reshape(lower, (-1, n))
    up = ops.reshape(upper, (-1, n))
    both = ops.add(_overlap(ops, lo, up, n), _overlap(ops, ops.neg(up), ops.neg(lo), n))
    return ops.div(both, const(ops, 2.0 * n, both))


def _overlap(ops: TensorOps, lo: T, up: T, n: int) -> T:
    neg_l, idx = ops.topk(ops.neg(lo), n, 1)
    u_sorted = ops.gather(up, idx, 1)
    pref = u_sorted
    shift = 1
    while shift < n:
        moved = ops.pad(ops.slice(pref, 1, 0, n - shift), [(0, 0), (shift, 0)], float("-inf"))
        pref = ops.maximum(pref, moved)
        shift *= 2
    excl = ops.pad(ops.slice(pref, 1, 0, n - 1), [(0, 0), (1, 0)], float("-inf")) if n > 1 else None
    umin = ops.neg(ops.max(ops.neg(up), [1], keepdims=True))
    m = umin if excl is None else ops.maximum(excl, umin)
    return ops.sum(ops.relu(ops.add(m, neg_l)), [1])
