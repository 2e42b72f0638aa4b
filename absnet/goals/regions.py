"""Point-like goals and specification builders (reference/diffai.md §3.3, §3.5, fixes of §9.4).

Point-like goals train on concrete images: ``Point`` (x itself), ``PointA``/``PointB`` (which of
two images ``between`` keeps), ``NormalPoint`` (Gaussian noise). The builders compose a region
with a sub-goal: ``NormalAdv`` (an attack at a random half-normal width), ``InSamp`` (a smaller
ball at a random centre inside the original one), ``AdvInclusion`` (a ball around an attack point),
``AdvDom`` (the box between x and an attack point) and ``BiAdv`` (the symmetric box whose radius is
the attack's displacement). Every region is intersected with the network's input range.
"""

from __future__ import annotations

import torch

from absnet.goals.base import (
    POINT,
    Goal,
    GoalContext,
    Term,
    Width,
    clip_to_range,
    is_nonpositive,
    rand_sym,
    randn,
    resolve_width,
    value_of,
    width_tensor,
)
from absnet.goals.schedules import Schedule, as_schedule

POINT_GOALS = ("Point", "PointA", "PointB")


class PointGoal(Goal):
    """``Point``, ``PointA``, ``PointB``: the image itself. ``between`` gives the midpoint, the first
    or the second image respectively."""

    produces_point = True

    def __init__(self, name: str = "Point"):
        if name not in POINT_GOALS:
            raise ValueError(f"not a point goal: {name}")
        self.name = name

    def terms(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> list[Term]:
        return [Term(1.0, x, POINT, self)]

    def between(self, ctx: GoalContext, o1: torch.Tensor, o2: torch.Tensor, y: torch.Tensor) -> list[Term]:
        value = o1 if self.name == "PointA" else o2 if self.name == "PointB" else (o1 + o2) / 2
        return [Term(1.0, value, POINT, self)]


class NormalPoint(Goal):
    """``NormalPoint(w)``: x + w·N(0, I) clipped to the input range (w is a standard deviation)."""

    name = "NormalPoint"
    produces_point = True

    def __init__(self, w: float | None = None):
        self.w = w

    def terms(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> list[Term]:
        sd = width_tensor(resolve_width(self.w, ctx, w), x)
        return [Term(1.0, clip_to_range(ctx, x + sd * randn(ctx, x.shape, x)), POINT, self)]

    def between(self, ctx: GoalContext, o1: torch.Tensor, o2: torch.Tensor, y: torch.Tensor) -> list[Term]:
        return [Term(1.0, (o1 + o2) / 2, POINT, self)]


class _Builder(Goal):
    """A builder whose value comes from the sub-goal ``inner`` (what it reports)."""

    inner: Goal

    @property
    def single(self) -> bool:  # type: ignore[override]
        return self.inner.single

    @property
    def produces_point(self) -> bool:  # type: ignore[override]
        return self.inner.produces_point

    @property
    def analysis(self):  # type: ignore[override]
        return self.inner.analysis


class NormalAdv(_Builder):
    """``NormalAdv(a, w)``: run the point goal ``a`` at width |ζ|·w with ζ ~ N(0, 1) drawn per example
    (DiffAI drew one signed ζ per batch, giving negative widths)."""

    name = "NormalAdv"

    def __init__(self, a: Goal, w: Schedule | float | None = None):
        self.a = self.inner = a
        self.w = None if w is None else as_schedule(w)

    @property
    def supports_between(self) -> bool:  # type: ignore[override]
        return self.a.supports_between

    def children(self) -> tuple[Goal, ...]:
        return (self.a,)

    def terms(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> list[Term]:
        width = width_tensor(resolve_width(self.w, ctx, w), x)
        zeta = randn(ctx, (x.shape[0],), x).abs().reshape(-1, *([1] * (x.dim() - 1)))
        return self.a.terms(ctx, x, y, width * zeta)

    def between(self, ctx: GoalContext, o1: torch.Tensor, o2: torch.Tensor, y: torch.Tensor) -> list[Term]:
        return self.a.between(ctx, o1, o2, y)


class InSamp(_Builder):
    """``InSamp(sub, a, normal, w)``: x̃ = clip(x + ν·w·(1 − sub)) with ν ~ U[−1, 1]ⁿ (or N(0, I) when
    ``normal``), then ``a`` at x̃ with width w·sub. With uniform ν the region lies inside the w-ball.
    ``between(o₁, o₂)``: ``a`` around the midpoint with radius |o₂ − o₁|/2 (DiffAI used twice that)."""

    supports_between = True

    def __init__(self, sub: Schedule | float, a: Goal, normal: bool = False, w: Schedule | float | None = None,
                 name: str = "InSamp"):
        self.name = name
        self.sub = as_schedule(sub)
        self.a = self.inner = a
        self.normal = normal
        self.w = None if w is None else as_schedule(w)

    def children(self) -> tuple[Goal, ...]:
        return (self.a,)

    def terms(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> list[Term]:
        width = resolve_width(self.w, ctx, w)
        s = value_of(self.sub, ctx)
        assert s is not None
        nu = randn(ctx, x.shape, x) if self.normal else rand_sym(ctx, x.shape, x)
        centre = clip_to_range(ctx, x + nu * width_tensor(width * (1 - s), x))
        return self.a.terms(ctx, centre, y, width * s)

    def between(self, ctx: GoalContext, o1: torch.Tensor, o2: torch.Tensor, y: torch.Tensor) -> list[Term]:
        return self.a.terms(ctx, (o1 + o2) / 2, y, (o2 - o1).abs() / 2)


class AdvInclusion(_Builder):
    """``AdvInclusion(sub, a, b, w)``: x̃ = the point of ``a`` at width w·(1 − sub) (x itself when
    w ≤ 0), then ``b`` at x̃ with width w·sub — a small region around an adversarial point that
    stays inside the w-ball."""

    name = "AdvInclusion"
    supports_between = False

    def __init__(self, sub: Schedule | float, a: Goal, b: Goal, w: Schedule | float | None = None):
        self.sub = as_schedule(sub)
        self.a = a
        self.b = self.inner = b
        self.w = None if w is None else as_schedule(w)

    def children(self) -> tuple[Goal, ...]:
        return (self.a, self.b)

    def terms(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> list[Term]:
        width = resolve_width(self.w, ctx, w)
        s = value_of(self.sub, ctx)
        assert s is not None
        centre = x if is_nonpositive(width) else self.a.point(ctx, x, y, width * (1 - s))
        return self.b.terms(ctx, centre, y, width * s)


class AdvDom(_Builder):
    """``AdvDom(a, b)``: m = the point of ``a``; ``b`` between x and m (the region spanned by the clean
    and the adversarial image). ``between`` uses ``a``'s."""

    name = "AdvDom"

    def __init__(self, a: Goal, b: Goal):
        self.a = a
        self.b = self.inner = b

    @property
    def supports_between(self) -> bool:  # type: ignore[override]
        return self.a.supports_between

    def children(self) -> tuple[Goal, ...]:
        return (self.a, self.b)

    def terms(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> list[Term]:
        return self.b.between(ctx, x, self.a.point(ctx, x, y, w), y)

    def between(self, ctx: GoalContext, o1: torch.Tensor, o2: torch.Tensor, y: torch.Tensor) -> list[Term]:
        return self.a.between(ctx, o1, o2, y)


class BiAdv(_Builder):
    """``BiAdv(a, b)``: m = the point of ``a``, δ = |m − x|; ``b`` between clip(x − δ) and clip(x + δ)."""

    name = "BiAdv"
    supports_between = False

    def __init__(self, a: Goal, b: Goal):
        self.a = a
        self.b = self.inner = b

    def children(self) -> tuple[Goal, ...]:
        return (self.a, self.b)

    def terms(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> list[Term]:
        delta = (self.a.point(ctx, x, y, w) - x).abs()
        return self.b.between(ctx, clip_to_range(ctx, x - delta), clip_to_range(ctx, x + delta), y)
