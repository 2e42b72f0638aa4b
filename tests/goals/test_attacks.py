"""Attacks (reference/diffai.md §3.4 with the fixes of §9.4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import absnet
from absnet.goals.attacks import attack
from absnet.goals.catalog import parse_goal


def batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("text", ["MI_FGSM(k=12, restart=3)", "PGD(k=6, r=3, restart=2)", "IFGSM(k=4)", "FGSM()"])
def test_attack_stays_in_the_ball_and_the_input_range(tiny_net, make_ctx, text: str) -> None:
    x, y = batch()
    x[:4] = 0.0  # on the range's edge: the ball sticks out of [0, 1]
    x[4:8] = 1.0
    ctx = make_ctx(tiny_net, eps=0.3)
    m = parse_goal(text).point(ctx, x, y)
    assert not m.requires_grad
    assert ((m - x).abs() <= 0.3 + 1e-12).all()
    assert (m >= 0).all() and (m <= 1).all()
    assert (m != x).any()


def test_restarts_are_uniform_in_the_whole_ball(tiny_net) -> None:
    x = torch.full((64, 3), 0.5, dtype=torch.float64)
    y = torch.zeros(64, dtype=torch.long)
    gen = torch.Generator().manual_seed(3)
    # a negligible step: what is left is the random start
    m = attack(tiny_net, x, y, 0.2, r=1e-9, k=1, mu=0.0, should_end=False, restart=1, generator=gen)
    d = m - x
    assert (d.abs() <= 0.2 + 1e-6).all()
    assert (d > 0.01).sum() > 40 and (d < -0.01).sum() > 40  # both directions
    assert (d.abs() < 0.15).sum() > 40  # spread inside the ball, not only on its corners


def test_restarts_are_reproducible_from_the_generator(tiny_net, make_ctx) -> None:
    x, y = batch()
    goal = parse_goal("PGD(k=4, r=1, restart=2, should_end=false)")
    a = goal.point(make_ctx(tiny_net, eps=0.2, seed=5), x, y)
    b = goal.point(make_ctx(tiny_net, eps=0.2, seed=5), x, y)
    c = goal.point(make_ctx(tiny_net, eps=0.2, seed=6), x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)


def linear_net() -> absnet.AbstractNetwork:
    net = absnet.compile_source("network L { input [3] range [0, 1]  Linear(2) }").double().eval()
    net.load_state_dict({
        "layers.0.weight": torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.0, -0.5]], dtype=torch.float64),
        "layers.0.bias": torch.zeros(2, dtype=torch.float64),
    })
    return net


def test_pgd_finds_the_worst_case_of_a_linear_network(make_ctx) -> None:
    net = linear_net()
    # z1 − z0 = (−2, 3, −1)·x: the worst case is x + w·(−1, +1, −1), clipped to [0, 1]
    x = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.9, 0.5]], dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    m = parse_goal("PGD(should_end=false)").point(make_ctx(net, eps=0.2), x, y)
    want = torch.tensor([[0.3, 0.7, 0.3], [0.0, 1.0, 0.3]], dtype=torch.float64)
    assert torch.allclose(m, want)
    # and it meets the exact (correlation-aware) lower bound of the margin z0 − z1
    margin = net.margin_lower(x, y, eps=0.2, domain="HBox()")[:, 1]
    z = net(m)
    assert torch.allclose(z[:, 0] - z[:, 1], margin)


def _global_norm_mi_fgsm(net, x, y, w: float, r: float, k: int, mu: float) -> torch.Tensor:
    """DiffAI's MI_FGSM normalisation (one L1 norm for the whole batch), for comparison."""
    x0, xa, g = x.clone(), x.clone(), torch.zeros_like(x)
    for _ in range(k):
        xv = xa.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(net(xv), y, reduction="sum"), xv)
        g = mu * g + grad / grad.abs().sum().clamp_min(1e-300)
        xa = xa + (r * w / k) * torch.where(g >= 0, 1.0, -1.0)
        xa = torch.minimum(torch.maximum(xa, x0 - w), x0 + w).clamp(0, 1)
    return xa


def test_each_example_is_attacked_independently_of_the_batch(tiny_net) -> None:
    y = torch.tensor([0, 1])
    global_norm_interacts = False
    for seed in range(12):
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in tiny_net.parameters():
                p.copy_(2 * torch.randn_like(p))
        x = torch.rand(2, 3, dtype=torch.float64)
        kw = {"r": 4.0, "k": 20, "mu": 0.8, "should_end": False}
        alone = attack(tiny_net, x[:1], y[:1], 0.3, **kw)
        together = attack(tiny_net, x, y, 0.3, **kw)[:1]
        assert torch.equal(alone, together)
        ref_alone = _global_norm_mi_fgsm(tiny_net, x[:1], y[:1], 0.3, 4.0, 20, 0.8)
        ref_together = _global_norm_mi_fgsm(tiny_net, x, y, 0.3, 4.0, 20, 0.8)[:1]
        global_norm_interacts |= not torch.allclose(ref_alone, ref_together)
    # the test is meaningful: with DiffAI's batch-wide norm the second example does change the first
    assert global_norm_interacts


def test_should_end_freezes_misclassified_examples(tiny_net, make_ctx) -> None:
    x, _ = batch(8)
    with torch.no_grad():
        pred = tiny_net(x).argmax(dim=1)
    wrong = (pred + 1) % 3
    m = parse_goal("IFGSM(k=3)").point(make_ctx(tiny_net, eps=0.2), x, wrong)
    assert torch.equal(m, x)
    m = parse_goal("IFGSM(k=3, should_end=false)").point(make_ctx(tiny_net, eps=0.2), x, wrong)
    assert not torch.equal(m, x)


def test_fgsm_is_ifgsm_with_one_step(tiny_net, make_ctx) -> None:
    x, y = batch()
    a = parse_goal("FGSM(w=0.1)").point(make_ctx(tiny_net), x, y)
    b = parse_goal("IFGSM(k=1, w=0.1)").point(make_ctx(tiny_net), x, y)
    assert torch.equal(a, b)
    # a single step of size w along the gradient's sign (sgn⁺(0) = +1), clipped to the range
    xv = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(tiny_net(xv), y, reduction="sum"), xv)
    with torch.no_grad():
        correct = (tiny_net(x).argmax(dim=1) == y).unsqueeze(1)
    want = torch.where(correct, (x + 0.1 * torch.where(grad >= 0, 1.0, -1.0)).clamp(0, 1), x)
    assert torch.allclose(a, want)


def test_attack_leaves_parameter_gradients_alone_and_works_under_no_grad(tiny_net, make_ctx) -> None:
    x, y = batch()
    tiny_net.train()
    with torch.no_grad():
        m = parse_goal("PGD(k=2, should_end=false)").point(make_ctx(tiny_net), x, y)
    assert not torch.equal(m, x)
    assert all(p.grad is None for p in tiny_net.parameters())


def test_own_width_overrides_and_schedules_follow_time(tiny_net, make_ctx) -> None:
    x = torch.full((4, 3), 0.5, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    goal = parse_goal("PGD(w=Lin(0, 0.2, 10), should_end=false)")
    assert torch.equal(goal.point(make_ctx(tiny_net, eps=0.4, time=0.0), x, y), x)
    d = (goal.point(make_ctx(tiny_net, eps=0.4, time=5.0), x, y) - x).abs()
    assert torch.allclose(d, torch.full_like(d, 0.1))
    d = (parse_goal("PGD(should_end=false)").point(make_ctx(tiny_net, eps=0.05), x, y) - x).abs()
    assert torch.allclose(d, torch.full_like(d, 0.05))
