"""The training loss of a goal (DeepLoss blend, diffai.md §2, §3.7) and test outcomes (§3.8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import absnet
from absnet.backends.torch.ops import TorchOps
from absnet.diagnostics import AbsnetError
from absnet.goals.catalog import parse_goal
from absnet.goals.loss import goal_loss, test_outcome
from absnet.goals.losses import cross_loss
from absnet.transformers.margins import bounds

OPS = TorchOps()
DEEP = "network D { input [4] range [0, 1]  Linear(8) ReLU() DeepLoss(bw=0.5) Linear(3) }"
# the hand check puts DeepLoss before the ReLU: after it, dead neurons tie at l = 0, and deep_loss
# depends on the order of tied lower bounds (a property of DiffAI's definition)
DEEP_AFFINE = "network D { input [4] range [0, 1]  Linear(8) DeepLoss(bw=0.5) ReLU() Linear(3) }"
HIDDEN = "network H { input [4] range [0, 1]  Linear(8) }"


def data(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return torch.rand(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def reference_deep_loss(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """diffai.md §1.7 written out with loops: (D(l, u) + D(−u, −l)) / (2n) per example."""

    def overlap(lo: list[float], up: list[float]) -> float:
        order = sorted(range(len(lo)), key=lambda i: lo[i])
        total, prefix = 0.0, float("-inf")
        for i in order:
            total += max(0.0, max(min(up), prefix) - lo[i])
            prefix = max(prefix, up[i])
        return total

    out = []
    for lo, up in zip(lower.tolist(), upper.tolist()):
        neg_up, neg_lo = [-v for v in up], [-v for v in lo]
        out.append((overlap(lo, up) + overlap(neg_up, neg_lo)) / (2 * len(lo)))
    return torch.tensor(out, dtype=lower.dtype)


def test_deep_loss_blend_matches_the_hand_formula(make_ctx) -> None:
    net = absnet.compile_source(DEEP_AFFINE).double().train()
    hidden = absnet.compile_source(HIDDEN).double()
    hidden.load_state_dict({k: v for k, v in net.state_dict().items() if k.startswith("layers.0.")})
    x, y = data()
    ctx = make_ctx(net, eps=0.1)
    loss, stats = goal_loss(parse_goal("Mix(a=Point(), b=HBox(), aw=1, bw=3)"), ctx, x, y)
    with torch.no_grad():
        ce = F.cross_entropy(net(x), y, reduction="none")
        out = net.propagate(net.input_value(x, 0.1, "HBox"), "HBox")
        onehot = F.one_hot(y, 3).double()
        hbox = cross_loss(OPS, out, onehot)
        lo, hi = bounds(OPS, hidden.propagate(hidden.input_value(x, 0.1, "HBox"), "HBox"))
        deep = reference_deep_loss(lo, hi)
    inner = 0.25 * ce + 0.75 * hbox
    want = (0.5 * inner + 0.5 * deep).mean()
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-9)
    assert stats["terms"] == 2 and stats["deep"] == 1
    assert stats["term0/Point"] == pytest.approx(float(ce.mean()))


def test_nested_deep_losses_blend_in_network_order_and_sum_over_abstract_terms(make_ctx) -> None:
    text = ("network D2 { input [4] range [0, 1]  Linear(6) ReLU() DeepLoss(bw=0.5) Linear(5) ReLU() "
            "DeepLoss(bw=Lin(0, 1, 10)) Linear(3) }")
    net = absnet.compile_source(text).double().train()
    x, y = data()
    ctx = make_ctx(net, eps=0.1, time=2.5)  # second bw = 0.25
    loss, _ = goal_loss(parse_goal("DList((Box(), 1), (HBox(), 3), (Point(), 4))"), ctx, x, y)
    parts, deep1, deep2 = [], 0.0, 0.0
    onehot = F.one_hot(y, 3).double()
    with torch.no_grad():
        for name in ("Box", "HBox"):
            out = net.propagate(net.input_value(x, 0.1, name), name)
            (_, d1), (_, d2) = net.aux_losses
            deep1, deep2 = deep1 + d1, deep2 + d2
            parts.append(cross_loss(OPS, out, onehot))
        parts.append(F.cross_entropy(net(x), y, reduction="none"))
    inner = 0.125 * parts[0] + 0.375 * parts[1] + 0.5 * parts[2]
    want = 0.75 * (0.5 * inner + 0.5 * deep1) + 0.25 * deep2
    assert float(loss.detach()) == pytest.approx(float(want.mean()), rel=1e-9)


def test_no_blend_with_zero_weight_in_eval_mode_or_for_points(make_ctx) -> None:
    x, y = data()
    net = absnet.compile_source(DEEP.replace("bw=0.5", "bw=0")).double().train()
    loss, stats = goal_loss(parse_goal("Box()"), make_ctx(net), x, y)
    with torch.no_grad():
        want = cross_loss(OPS, net.propagate(net.input_value(x, 0.1, "Box"), "Box"), F.one_hot(y, 3).double())
    assert float(loss.detach()) == pytest.approx(float(want.mean())) and stats["deep"] == 0
    net = absnet.compile_source(DEEP).double().eval()
    loss, _ = goal_loss(parse_goal("Box()"), make_ctx(net), x, y)
    assert float(loss.detach()) == pytest.approx(float(want.mean()))
    net.train()
    loss, _ = goal_loss(parse_goal("Point()"), make_ctx(net), x, y)
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(net(x), y).detach()))


def test_loss_gradients_reach_every_parameter(make_ctx) -> None:
    net = absnet.compile_source(DEEP).double().train()
    x, y = data()
    loss, _ = goal_loss(parse_goal("LinMix(a=IFGSM(k=2), b=InSamp(0.5), bw=0.5)"), make_ctx(net), x, y)
    loss.backward()
    for p in net.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_a_batch_without_terms_gives_a_zero_loss_that_can_be_backpropagated(make_ctx) -> None:
    net = absnet.compile_source(DEEP).double().train()
    loss, stats = goal_loss(parse_goal("DList((Box(), Lin(0, 1, 10)))"), make_ctx(net, time=0.0), *data())
    loss.backward()
    assert float(loss.detach()) == 0.0 and stats["terms"] == 0


# --------------------------------------------------------------------------- test outcomes


def test_abstract_outcome_is_the_margin_certificate(tiny_net, make_ctx) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=g)
    pred = tiny_net(x).argmax(dim=1)
    for name in ("Box", "HBox", "ZNIPS"):
        out = test_outcome(parse_goal(f"{name}()"), make_ctx(tiny_net, eps=0.02), x, y, pred)
        assert out.analysis == name
        assert torch.equal(out.proved, tiny_net.certify(x, pred, 0.02, f"{name}()"))
        assert torch.equal(out.safe, tiny_net.certify(x, y, 0.02, f"{name}()"))
        lo, hi = tiny_net.bounds(x, 0.02, f"{name}()")
        assert torch.allclose(out.width, (hi - lo).sum(dim=1) / 2)
    out = test_outcome(parse_goal("Box()"), make_ctx(tiny_net, eps=0.0), x, y, pred)
    assert out.proved.all() and torch.equal(out.safe, pred == y)


def test_attack_and_point_outcomes(tiny_net, make_ctx) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=g)
    pred = tiny_net(x).argmax(dim=1)
    with torch.no_grad():  # the attack switches gradients back on for itself
        out = test_outcome(parse_goal("PGD(k=3)"), make_ctx(tiny_net, eps=0.3), x, y, pred)
    assert out.analysis == "attack" and (out.width == 0).all()
    assert out.safe.sum() <= (pred == y).sum()  # the attack only removes correct answers
    out = test_outcome(parse_goal("Point()"), make_ctx(tiny_net), x, y, pred)
    assert out.analysis == "point" and out.proved.all() and torch.equal(out.safe, pred == y)
    out = test_outcome(parse_goal("AdvDom()"), make_ctx(tiny_net), x, y, pred)
    assert out.analysis == "Box"


def test_combinators_are_rejected_as_test_goals(tiny_net, make_ctx) -> None:
    x, y = data(2)
    with pytest.raises(AbsnetError, match=r"E206.*cannot be a test goal"):
        test_outcome(parse_goal("Mix()"), make_ctx(tiny_net), x[:, :3], y, y)
