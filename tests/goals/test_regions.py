"""Regions built by goals are sound: inside the ε-ball ∩ input range where promised, and the
network outputs of points sampled in them lie inside the propagated bounds."""

from __future__ import annotations

import pytest
import torch

from absnet.backends.torch.ops import TorchOps
from absnet.goals.base import POINT, Goal, Term
from absnet.goals.catalog import parse_goal
from absnet.goals.regions import InSamp, NormalAdv
from absnet.transformers.margins import bounds

OPS = TorchOps()
EPS = 0.15


def batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, generator=g, dtype=torch.float64)
    x[0] = 0.02  # near the edges of the input range [0, 1]
    x[1] = 0.97
    return x, torch.randint(0, 3, (n,), generator=g)


def samples(lower: torch.Tensor, upper: torch.Tensor, n: int = 64) -> torch.Tensor:
    """(n, N, *s) points in [lower, upper]: the two extreme corners, then uniform draws."""
    g = torch.Generator().manual_seed(2)
    t = torch.rand((n, *lower.shape), generator=g, dtype=lower.dtype)
    t[0], t[1] = 0.0, 1.0
    return lower + t * (upper - lower)


def check_region(net, term: Term, x: torch.Tensor, inside_ball: bool) -> None:
    lower, upper = bounds(OPS, term.value)
    assert (lower <= upper).all()
    lo, hi = net.input_range
    assert (lower >= lo - 1e-12).all() and (upper <= hi + 1e-12).all()
    if inside_ball:
        assert (lower >= x - EPS - 1e-12).all() and (upper <= x + EPS + 1e-12).all()
    out_lo, out_hi = bounds(OPS, net.propagate(term.value, term.analysis))
    for p in samples(lower, upper):
        z = net(p)
        assert (z >= out_lo - 1e-9).all() and (z <= out_hi + 1e-9).all()


@pytest.mark.parametrize("text", [
    "Box()", "HBox()", "ZNIPS()", "HSwitch()", "InSamp(0.3)", "InSamp(0.5, a=HBox())",
    "AdvInclusion(0.4)", "AdvInclusion(0.3, a=PGD(k=3), b=ZNIPS())", "BiAdv()", "BiAdv(b=HBox())",
    "AdvDom()", "AdvDom(a=PGD(k=2), b=ZNIPS())",
])
def test_region_is_inside_the_ball_and_its_outputs_are_bounded(tiny_net, make_ctx, text: str) -> None:
    x, y = batch()
    (term,) = parse_goal(text).terms(make_ctx(tiny_net, eps=EPS), x, y)
    assert term.analysis.kind != "point"
    check_region(tiny_net, term, x, inside_ball=True)


def test_insamp_with_normal_noise_stays_in_the_range(tiny_net, make_ctx) -> None:
    x, y = batch()
    (term,) = parse_goal("InSamp(0.2, normal=true)").terms(make_ctx(tiny_net, eps=EPS), x, y)
    check_region(tiny_net, term, x, inside_ball=False)


def test_insamp_sub_one_is_the_whole_ball_and_sub_zero_a_random_point(tiny_net, make_ctx) -> None:
    x, y = batch()
    ctx = make_ctx(tiny_net, eps=EPS)
    (whole,) = parse_goal("InSamp(1)").terms(ctx, x, y)
    (full,) = parse_goal("Box()").terms(ctx, x, y)
    assert torch.allclose(whole.value.center, full.value.center) and torch.allclose(whole.value.radius,
                                                                                     full.value.radius)
    (point,) = parse_goal("InSamp(0)").terms(ctx, x, y)
    assert float(point.value.radius.abs().max()) == 0.0
    assert not torch.allclose(point.value.center, x)


def test_between_covers_exactly_the_box_between_the_images(tiny_net, make_ctx) -> None:
    ctx = make_ctx(tiny_net)
    o1 = torch.tensor([[0.2, 0.8, 0.5]], dtype=torch.float64)
    o2 = torch.tensor([[0.4, 0.6, 0.5]], dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.long)
    want_lo, want_hi = torch.minimum(o1, o2), torch.maximum(o1, o2)
    for text in ("Box()", "HBox()", "ZNIPS()", "InSamp(0.3)"):
        (t,) = parse_goal(text).between(ctx, o1, o2, y)
        lo, hi = bounds(OPS, t.value)
        assert torch.allclose(lo, want_lo) and torch.allclose(hi, want_hi), text
    # Box widens by its own w (then meets the input range); the H* family ignores w here
    (t,) = parse_goal("Box(w=0.25)").between(ctx, o1, o2, y)
    lo, hi = bounds(OPS, t.value)
    assert torch.allclose(lo, torch.tensor([[0.0, 0.35, 0.25]], dtype=torch.float64))
    assert torch.allclose(hi, torch.tensor([[0.65, 1.0, 0.75]], dtype=torch.float64))
    (t,) = parse_goal("HBox(w=0.25)").between(ctx, o1, o2, y)
    assert torch.allclose(bounds(OPS, t.value)[0], want_lo)


def test_point_goals_between(tiny_net, make_ctx) -> None:
    ctx = make_ctx(tiny_net)
    o1 = torch.zeros(2, 3, dtype=torch.float64)
    o2 = torch.ones(2, 3, dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    for text, want in (("Point()", 0.5), ("PointA()", 0.0), ("PointB()", 1.0), ("NormalPoint(w=0.3)", 0.5)):
        (t,) = parse_goal(text).between(ctx, o1, o2, y)
        assert t.analysis is POINT and torch.equal(t.value, torch.full_like(o1, want)), text


def test_normal_point_adds_noise_of_width_w_clipped_to_the_range(tiny_net, make_ctx) -> None:
    x = torch.full((400, 3), 0.5, dtype=torch.float64)
    x[:50] = 0.0
    y = torch.zeros(400, dtype=torch.long)
    (t,) = parse_goal("NormalPoint(w=0.1)").terms(make_ctx(tiny_net, eps=0.3), x, y)
    assert (t.value >= 0).all() and (t.value <= 1).all()
    assert float((t.value[50:] - 0.5).std()) == pytest.approx(0.1, rel=0.15)


class RecordingPoint(Goal):
    """A point goal that records the widths it is asked for."""

    name = "Recording"
    produces_point = True

    def __init__(self) -> None:
        self.widths: list = []

    def terms(self, ctx, x, y, w=None):
        self.widths.append(w)
        return [Term(1.0, x, POINT, self)]


def test_normal_adv_draws_a_nonnegative_width_per_example(tiny_net, make_ctx) -> None:
    x, y = batch(50)
    rec = RecordingPoint()
    NormalAdv(rec, w=0.2).terms(make_ctx(tiny_net), x, y)
    (w,) = rec.widths
    assert w.shape == (50, 1) and (w >= 0).all() and w.std() > 0
    assert float(w.mean()) == pytest.approx(0.2 * (2 / torch.pi) ** 0.5, rel=0.35)  # E|ζ|·w


def test_insamp_passes_the_smaller_width_to_its_sub_goal(tiny_net, make_ctx) -> None:
    x, y = batch()
    rec = RecordingPoint()
    (t,) = InSamp(0.25, rec).terms(make_ctx(tiny_net, eps=0.2), x, y)
    assert rec.widths == [pytest.approx(0.05)]
    assert ((t.value - x).abs() <= 0.15 + 1e-12).all()  # centre within w·(1 − sub)
