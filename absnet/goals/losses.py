"""Output-side losses, written against the tensor-ops facade so they can be staged out (ONNX).

Every function takes the facade ``ops``, the network's output value (a point tensor, a
:class:`~absnet.domains.Box` or a :class:`~absnet.domains.Zonotope`, shaped (N, C)) and the labels
as an (N, C) one-hot tensor in the value's dtype, and returns one loss per example (N,)
(reference/diffai.md §1.7 and §3.6).

>>> import torch
>>> from absnet.backends.torch.ops import TorchOps
>>> from absnet.domains import Box
>>> out = Box(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]))
>>> onehot = torch.tensor([[1.0, 0.0]])
>>> round(float(cross_loss(TorchOps(), out, onehot)[0]), 4)  # CE of the worst logits (0.5, 0.5)
0.6931
"""

from __future__ import annotations

from typing import Any

from absnet.domains import Box, Zonotope
from absnet.transformers.margins import bounds, margin_lower
from absnet.transformers.tensor_ops import TensorOps

T = Any


def _const(ops: TensorOps, value: float, like: T) -> T:
    return ops.constant(value, like)


def _logsumexp(ops: TensorOps, z: T) -> T:
    """log Σ_j exp(z_j) over axis 1, shifted by the (constant) row maximum so exp never overflows."""
    m = ops.detach(ops.max(z, [1], keepdims=True))
    s = ops.sum(ops.exp(ops.sub(z, m)), [1])
    return ops.add(ops.log(s), ops.reshape(m, [-1]))


def point_cross_entropy(ops: TensorOps, logits: T, onehot: T) -> T:
    """Per-example cross-entropy −log softmax(z)_y of logits (N, C): logsumexp(z) − z_y."""
    zy = ops.sum(ops.mul(logits, onehot), [1])
    return ops.sub(_logsumexp(ops, logits), zy)


def cross_loss(ops: TensorOps, value: T, onehot: T) -> T:
    """Gowal et al.'s worst-case cross-entropy: CE(ẑ, y) with ẑ_j = ub(z_j) (j ≠ y), ẑ_y = lb(z_y).

    On a point this is the ordinary cross-entropy.
    """
    lower, upper = bounds(ops, value)
    is_y = ops.greater(onehot, _const(ops, 0.5, onehot))
    worst = ops.where(is_y, lower, upper)
    return point_cross_entropy(ops, worst, onehot)


def softplus(ops: TensorOps, v: T) -> T:
    """log(1 + eᵛ) computed as relu(v) + log(1 + e^{−|v|}), which never overflows."""
    return ops.add(ops.relu(v), ops.log(ops.add(_const(ops, 1.0, v), ops.exp(ops.neg(ops.abs(v))))))


def margin_loss(ops: TensorOps, value: T, onehot: T) -> T:
    """softplus(max(−1, max_{j≠y} −lb(z_y − z_j))): DiffAI's HybridZonotope loss (§1.7).

    The margins are bounded inside the domain (:func:`margin_lower`), so shared generators cancel.
    """
    ml = margin_lower(ops, value, onehot)  # 0 at j = y
    not_y = ops.sub(_const(ops, 1.0, onehot), onehot)
    # −lb(d_j) for j ≠ y and the constant −1 at j = y (DiffAI's d_y = 1)
    neg = ops.sub(ops.mul(ops.neg(ml), not_y), onehot)
    return softplus(ops, ops.max(neg, [1]))


def diameter(ops: TensorOps, value: T) -> T:
    """Per example, the sum over output elements of the total radius b + Σ|eᵢ| (0 for a point)."""
    r = value.total_radius(ops) if isinstance(value, Box | Zonotope) else ops.zeros_like(value)
    axes = list(range(1, len(ops.shape(r))))
    return ops.sum(r, axes) if axes else r


def abstract_loss(
    ops: TensorOps, value: T, onehot: T, *, cross: bool = True, log_loss: bool = False,
    pow_loss: float | None = None, tot_weight: float = 1.0, width_weight: float = 0.0,
) -> T:
    """The HBox family's loss (diffai.md §3.6), per example.

    base = cross or margin loss; log(base + 1) if ``log_loss``; base^pow_loss if ``pow_loss`` is set,
    positive and not 1; then (tot_weight·base + width_weight·diameter) / (tot_weight + width_weight),
    the width term only when ``width_weight`` > 0.
    """
    base = cross_loss(ops, value, onehot) if cross else margin_loss(ops, value, onehot)
    if log_loss:
        base = ops.log(ops.add(base, _const(ops, 1.0, base)))
    if pow_loss is not None and pow_loss > 0 and pow_loss != 1:
        # base > 0 up to rounding; the floor keeps log (and its gradient) finite at an exact 0
        safe = ops.maximum(base, _const(ops, 1e-30, base))
        base = ops.exp(ops.mul(ops.log(safe), _const(ops, float(pow_loss), base)))
    if width_weight > 0:
        total = tot_weight + width_weight
        weighted = ops.add(ops.mul(base, _const(ops, tot_weight, base)),
                           ops.mul(diameter(ops, value), _const(ops, width_weight, base)))
        return ops.div(weighted, _const(ops, total, base))
    return base
