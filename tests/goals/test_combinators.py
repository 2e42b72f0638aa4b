"""Combinators (reference/diffai.md §3.2): normalised weights, skipped members, DProb sampling."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from absnet.goals.base import POINT, Goal, Term
from absnet.goals.catalog import parse_goal
from absnet.goals.combinators import DList, DProb, lin_mix, mix
from absnet.goals.schedules import Lin


class Counting(Goal):
    """A point goal that counts how often its terms are built."""

    produces_point = True

    def __init__(self, name: str = "Counting") -> None:
        self.name = name
        self.calls = 0
        self.between_calls = 0

    def terms(self, ctx, x, y, w=None):
        self.calls += 1
        return [Term(1.0, x, POINT, self)]

    def between(self, ctx, o1, o2, y):
        self.between_calls += 1
        return [Term(1.0, o1, POINT, self)]


def xy() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.long)


def test_dlist_weights_are_normalised_by_their_sum(tiny_net, make_ctx) -> None:
    a, b, c = Counting("a"), Counting("b"), Counting("c")
    terms = DList(((a, 3.0), (b, 1.0), (c, 4.0))).terms(make_ctx(tiny_net), *xy())
    assert [(t.goal.name, t.weight) for t in terms] == [("a", 0.375), ("b", 0.125), ("c", 0.5)]


def test_mix_normalises_and_linmix_uses_one_minus_bw(tiny_net, make_ctx) -> None:
    ctx = make_ctx(tiny_net)
    terms = mix(Counting("a"), Counting("b"), aw=1.0, bw=0.25).terms(ctx, *xy())
    assert [t.weight for t in terms] == pytest.approx([0.8, 0.2])
    terms = lin_mix(Counting("a"), Counting("b"), bw=0.3).terms(ctx, *xy())
    assert [t.weight for t in terms] == pytest.approx([0.7, 0.3])


def test_zero_weight_members_are_not_built(tiny_net, make_ctx) -> None:
    a, b = Counting("a"), Counting("b")
    goal = lin_mix(a, b, bw=Lin(0.0, 1.0, 10.0))
    terms = goal.terms(make_ctx(tiny_net, time=0.0), *xy())
    assert [(t.goal.name, t.weight) for t in terms] == [("a", 1.0)] and b.calls == 0
    terms = goal.terms(make_ctx(tiny_net, time=10.0), *xy())
    assert [(t.goal.name, t.weight) for t in terms] == [("b", 1.0)] and a.calls == 1
    terms = goal.terms(make_ctx(tiny_net, time=2.5), *xy())
    assert [t.weight for t in terms] == pytest.approx([0.75, 0.25]) and (a.calls, b.calls) == (2, 2)


def test_nested_weights_multiply(tiny_net, make_ctx) -> None:
    a, b, c = Counting("a"), Counting("b"), Counting("c")
    goal = mix(a, mix(b, c, 1.0, 1.0), 1.0, 1.0)
    terms = goal.terms(make_ctx(tiny_net), *xy())
    assert [t.weight for t in terms] == pytest.approx([0.5, 0.25, 0.25])


def test_dlist_between_combines_the_members_between(tiny_net, make_ctx) -> None:
    a, b, c = Counting("a"), Counting("b"), Counting("c")
    x, y = xy()
    terms = DList(((a, 1.0), (b, 0.0), (c, 3.0))).between(make_ctx(tiny_net), x, x, y)
    assert [(t.goal.name, t.weight) for t in terms] == [("a", 0.25), ("c", 0.75)]
    assert (a.between_calls, b.between_calls, c.between_calls) == (1, 0, 1)


def test_dprob_draws_members_with_their_probabilities(tiny_net, make_ctx) -> None:
    a, b, c = Counting("a"), Counting("b"), Counting("c")
    goal = DProb(((a, 1.0), (b, 3.0), (c, 0.0)))
    ctx = make_ctx(tiny_net, seed=7)
    x, y = xy()
    picks = Counter(goal.terms(ctx, x, y)[0].goal.name for _ in range(4000))
    assert picks["c"] == 0 and picks["a"] + picks["b"] == 4000
    assert picks["b"] / 4000 == pytest.approx(0.75, abs=0.03)
    assert (a.calls, b.calls, c.calls) == (picks["a"], picks["b"], 0)  # only the drawn member is built
    # reproducible from the seed
    r1, r2 = random.Random(11), random.Random(11)
    assert [goal.choose(r1).name for _ in range(20)] == [goal.choose(r2).name for _ in range(20)]


def test_coin_is_dprob_of_two(tiny_net, make_ctx) -> None:
    goal = parse_goal("Coin(a=PointA(), b=PointB(), ap=0.25, bp=0.75)")
    ctx = make_ctx(tiny_net, seed=3)
    x, y = xy()
    names = Counter(goal.terms(ctx, x, y)[0].goal.name for _ in range(2000))
    assert names["PointB"] / 2000 == pytest.approx(0.75, abs=0.04)


def test_combinators_are_not_single_valued() -> None:
    for text in ("DList()", "Mix()", "LinMix()", "DProb()", "Coin()", "AdvDom(b=DList((Box(), 1), (Point(), 1)))",
                 "InSamp(0.5, a=Mix())"):
        assert not parse_goal(text).single, text
    for text in ("Box()", "PGD()", "InSamp(0.5)", "AdvDom()", "NormalAdv()"):
        assert parse_goal(text).single, text
