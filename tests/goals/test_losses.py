"""Output-side losses (reference/diffai.md §1.7, §3.6) checked by hand on tiny values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from absnet.backends.torch.ops import TorchOps
from absnet.domains import Box, Zonotope
from absnet.goals.losses import abstract_loss, cross_loss, diameter, margin_loss, point_cross_entropy, softplus

OPS = TorchOps()
ONEHOT0 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)


def box() -> Box:
    c = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    r = torch.tensor([[0.5, 0.2, 0.1]], dtype=torch.float64)
    return Box(c, r)


def test_cross_loss_uses_lower_bound_of_the_label_and_upper_bounds_of_the_rest() -> None:
    # worst-case logits: lb(z0) = 0.5, ub(z1) = 0.2, ub(z2) = 0.1
    want = math.log(math.exp(0.5) + math.exp(0.2) + math.exp(0.1)) - 0.5
    assert float(cross_loss(OPS, box(), ONEHOT0)[0]) == pytest.approx(want)


def test_cross_loss_on_a_point_is_the_cross_entropy() -> None:
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    oh = F.one_hot(y, 3).double()
    want = F.cross_entropy(z, y, reduction="none")
    assert torch.allclose(cross_loss(OPS, z, oh), want)
    assert torch.allclose(point_cross_entropy(OPS, z, oh), want)


def test_point_cross_entropy_is_stable_for_huge_logits() -> None:
    z = torch.tensor([[1e4, -1e4, 0.0]])
    oh = torch.tensor([[0.0, 1.0, 0.0]])
    got = point_cross_entropy(OPS, z, oh)
    assert torch.isfinite(got).all() and float(got[0]) == pytest.approx(2e4)


def test_margin_loss_by_hand() -> None:
    # lb(z0 - z1) = 1 - 0.7 = 0.3, lb(z0 - z2) = 1 - 0.6 = 0.4 → softplus(max(-1, -0.3, -0.4))
    assert float(margin_loss(OPS, box(), ONEHOT0)[0]) == pytest.approx(math.log1p(math.exp(-0.3)))


def test_margin_loss_floors_at_minus_one() -> None:
    b = Box(torch.tensor([[10.0, 0.0, 0.0]], dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64))
    assert float(margin_loss(OPS, b, ONEHOT0)[0]) == pytest.approx(math.log1p(math.exp(-1.0)))


def test_margin_loss_is_correlation_aware() -> None:
    # z = (1, 0) + ε·(1, 1): z0 − z1 = 1 exactly, but the per-logit boxes overlap
    c = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    z = Zonotope(c, None, torch.tensor([[[1.0, 1.0]]], dtype=torch.float64), (("g", 1),))
    oh = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert float(margin_loss(OPS, z, oh)[0]) == pytest.approx(math.log1p(math.exp(-1.0)))
    # the cross loss only sees per-logit bounds: lb(z0) = 0, ub(z1) = 1
    assert float(cross_loss(OPS, z, oh)[0]) == pytest.approx(math.log(1 + math.e))


def test_diameter_sums_total_radii_and_is_zero_on_points() -> None:
    assert float(diameter(OPS, box())[0]) == pytest.approx(0.8)
    c = torch.zeros(2, 2, dtype=torch.float64)
    gens = torch.tensor([[[1.0, -2.0]], [[0.5, 0.0]]], dtype=torch.float64)
    z = Zonotope(c, torch.tensor([[0.1, 0.1], [0.0, 0.0]], dtype=torch.float64), gens, (("g", 1),))
    assert diameter(OPS, z).tolist() == pytest.approx([3.2, 0.5])
    assert diameter(OPS, torch.ones(4, 3)).tolist() == [0.0] * 4


def test_softplus_is_stable() -> None:
    v = torch.tensor([-1000.0, 0.0, 1000.0])
    assert softplus(OPS, v).tolist() == pytest.approx([0.0, math.log(2), 1000.0])


def test_abstract_loss_options() -> None:
    b, oh = box(), ONEHOT0
    base = float(cross_loss(OPS, b, oh)[0])
    margin = float(margin_loss(OPS, b, oh)[0])
    diam = 0.8

    def loss(**kw) -> float:
        return float(abstract_loss(OPS, b, oh, **kw)[0])

    assert loss() == pytest.approx(base)
    assert loss(cross=False) == pytest.approx(margin)
    assert loss(log_loss=True) == pytest.approx(math.log(base + 1))
    assert loss(pow_loss=2.0) == pytest.approx(base**2)
    assert loss(log_loss=True, pow_loss=3.0) == pytest.approx(math.log(base + 1) ** 3)
    assert loss(pow_loss=1.0) == pytest.approx(base)
    assert loss(pow_loss=-2.0) == pytest.approx(base)  # only a positive pow_loss applies
    assert loss(tot_weight=2.0, width_weight=0.5) == pytest.approx((2 * base + 0.5 * diam) / 2.5)
    assert loss(tot_weight=3.0, width_weight=0.0) == pytest.approx(base)  # no width term: weights cancel


def test_losses_pass_gradients_to_centre_and_radius() -> None:
    c = torch.tensor([[1.0, 0.0, 0.5]], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([[0.5, 0.2, 0.1]], dtype=torch.float64, requires_grad=True)
    for kw in ({}, {"cross": False}, {"log_loss": True, "pow_loss": 2.0, "width_weight": 1.0}):
        c.grad = r.grad = None
        abstract_loss(OPS, Box(c, r), ONEHOT0, **kw).sum().backward()
        assert c.grad is not None and r.grad is not None
        assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()
        assert r.grad.abs().sum() > 0  # a wider box costs more
        assert (r.grad >= 0).all()
