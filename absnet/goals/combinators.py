"""Combinators: weighted sums of goals (DList, Mix, LinMix) and random choices (DProb, Coin).

reference/diffai.md §3.2, with two changes: weights are evaluated at the current training time
(DiffAI froze them when the spec was built), and a member whose weight is ≤ 0 now is skipped
instead of being propagated for nothing (§9.5).

>>> from absnet.goals.regions import PointGoal
>>> d = DList(((PointGoal("Point"), 3.0), (PointGoal("PointA"), 1.0)))
>>> d.weights(None)
[0.75, 0.25]
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from absnet.goals.base import Goal, GoalContext, Term, Width
from absnet.goals.schedules import Complement, Schedule, as_schedule


class DList(Goal):
    """``DList((goal, weight), ...)``: every member with weight w_i > 0 now, its terms weighted by
    w_i / Σ_j w_j. ``Mix`` and ``LinMix`` are DLists with two members."""

    name = "DList"
    single = False
    produces_point = False

    def __init__(self, pairs: Sequence[tuple[Goal, Schedule | float]], name: str = "DList"):
        self.name = name
        self.pairs = tuple((g, as_schedule(w)) for g, w in pairs)

    @property
    def supports_between(self) -> bool:  # type: ignore[override]
        return all(g.supports_between for g, _ in self.pairs)

    def children(self) -> tuple[Goal, ...]:
        return tuple(g for g, _ in self.pairs)

    def weights(self, ctx: GoalContext | None) -> list[float]:
        """The normalised weights at the context's time (0 for members skipped now)."""
        raw = [w.value(ctx.time, ctx.rng) if ctx is not None else w.value(0.0) for _, w in self.pairs]
        total = sum(v for v in raw if v > 0)
        return [v / total if v > 0 and total > 0 else 0.0 for v in raw]

    def _combine(self, ctx: GoalContext, build: Callable[[Goal], list[Term]]) -> list[Term]:
        out: list[Term] = []
        for (goal, _), weight in zip(self.pairs, self.weights(ctx)):
            if weight <= 0:
                continue  # not propagated at all
            out.extend(Term(weight * t.weight, t.value, t.analysis, t.goal) for t in build(goal))
        return out

    def terms(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> list[Term]:
        return self._combine(ctx, lambda g: g.terms(ctx, x, y, w))

    def between(self, ctx: GoalContext, o1: torch.Tensor, o2: torch.Tensor, y: torch.Tensor) -> list[Term]:
        return self._combine(ctx, lambda g: g.between(ctx, o1, o2, y))


def mix(a: Goal, b: Goal, aw: Schedule | float = 1.0, bw: Schedule | float = 0.1) -> DList:
    """``Mix(a, b, aw, bw)`` = DList((a, aw), (b, bw))."""
    return DList(((a, aw), (b, bw)), name="Mix")


def lin_mix(a: Goal, b: Goal, bw: Schedule | float = 0.1) -> DList:
    """``LinMix(a, b, bw)`` = DList((a, 1 − bw), (b, bw)); bw must stay in [0, 1]."""
    bw = as_schedule(bw)
    return DList(((a, Complement(bw)), (b, bw)), name="LinMix")


class DProb(Goal):
    """``DProb((goal, p), ...)``: per batch, one member drawn with probability p_i / Σ p (ctx.rng)."""

    name = "DProb"
    single = False
    produces_point = False
    supports_between = False

    def __init__(self, pairs: Sequence[tuple[Goal, float]], name: str = "DProb"):
        self.name = name
        self.pairs = tuple((g, float(p)) for g, p in pairs)
        if sum(p for _, p in self.pairs) <= 0 or any(p < 0 for _, p in self.pairs):
            raise ValueError("DProb needs non-negative probabilities with a positive sum")

    def children(self) -> tuple[Goal, ...]:
        return tuple(g for g, _ in self.pairs)

    def choose(self, rng: random.Random) -> Goal:
        """Draw a member with probability proportional to its weight."""
        total = sum(p for _, p in self.pairs)
        u = rng.random() * total
        acc = 0.0
        for goal, p in self.pairs:
            acc += p
            if u < acc:
                return goal
        return next(g for g, p in reversed(self.pairs) if p > 0)

    def terms(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> list[Term]:
        return self.choose(ctx.rng).terms(ctx, x, y, w)


def coin(a: Goal, b: Goal, ap: float = 0.8, bp: float = 0.2) -> DProb:
    """``Coin(a, b, ap, bp)`` = DProb((a, ap), (b, bp))."""
    return DProb(((a, ap), (b, bp)), name="Coin")


__all__ = ["DList", "DProb", "coin", "lin_mix", "mix"]
