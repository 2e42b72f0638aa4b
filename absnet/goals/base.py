"""The goal protocol: what a training or test goal builds for a batch, and the loss it applies.

A goal turns a batch ``(x, y)`` into one or more :class:`Term` s: a network input (a point tensor,
a Box or a Zonotope), the analysis that pushes it through the network, a weight, and the goal
whose loss applies to the network's output (reference/diffai.md §3.1). Combinators (DList, Mix,
…) give several terms; every other goal gives exactly one.

Widths: a goal's own ``w`` (evaluated at ``ctx.time``) overrides the width passed in, which
defaults to the ambient ``ctx.epsilon``. A width is a number or a tensor that broadcasts against
the batch (per example (N,) or per element).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from absnet.backends.torch.ops import TorchOps
from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.goals.schedules import Schedule
from absnet.ir.domains import ANALYSES, Analysis

Width = float | torch.Tensor


@dataclass
class GoalContext:
    """What a goal may read besides the batch."""

    net: Any  # AbstractNetwork
    time: float  # fractional epochs (0 at test time unless told otherwise)
    epsilon: float  # the ambient width now (already evaluated from its schedule)
    rng: random.Random  # python RNG for schedules (Normal) and DProb
    generator: torch.Generator  # CPU torch generator for all tensor randomness of goals
    #: reduced precision (torch.bfloat16 or torch.float16) for the concrete forwards of attacks, or None;
    #: abstract passes, whose bounds decide certificates, never use it
    amp: torch.dtype | None = None


@dataclass
class Term:
    """One network input built by a goal, and how its output is scored."""

    weight: float
    value: Any  # tensor (point) | Box | Zonotope: the network input
    analysis: Analysis
    goal: Goal  # whose loss applies to the network output of this term


POINT = ANALYSES["Point"]


class Goal:
    """Base class of every goal. Subclasses set :attr:`name` and override :meth:`terms`."""

    name: str = "Goal"
    #: its terms are network inputs that are points (so it can serve as an attack/point sub-goal)
    produces_point: bool = False
    #: it always builds exactly one term (required of test goals)
    single: bool = True
    #: :meth:`between` works
    supports_between: bool = True
    #: the analysis of its (single) abstract term, None for points and combinators
    analysis: Analysis | None = None

    #: the arguments shown by ``str()``: (keyword or None for a positional one, value)
    shown: tuple[tuple[str | None, Any], ...] = ()

    def terms(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> list[Term]:
        """The network inputs for the batch ``x`` (N, *s) with labels ``y`` (N,)."""
        raise NotImplementedError

    def between(self, ctx: GoalContext, o1: torch.Tensor, o2: torch.Tensor, y: torch.Tensor) -> list[Term]:
        """The network inputs for the region spanned by two batches of images."""
        raise AbsnetError(Diagnostic("E206", f"{self} cannot build a region between two images"))

    def point(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> torch.Tensor:
        """The single point this goal produces (only when :attr:`produces_point`)."""
        (term,) = self.terms(ctx, x, y, w)
        assert term.analysis.kind == "point", f"{self} does not produce a point"
        return term.value

    def output_loss(self, ctx: GoalContext, out: Any, y: torch.Tensor) -> torch.Tensor:
        """Per-example loss (N,) of the network output for this goal's term: cross-entropy on points."""
        from absnet.goals.losses import point_cross_entropy

        return point_cross_entropy(TorchOps(), out, onehot(y, out))

    def children(self) -> tuple[Goal, ...]:
        """The sub-goals (for traversals)."""
        return ()

    def walk(self) -> Iterator[Goal]:
        """This goal and all its sub-goals, depth first."""
        yield self
        for c in self.children():
            yield from c.walk()

    @property
    def uses_attack(self) -> bool:
        """True if an attack produces (part of) its value."""
        from absnet.goals.attacks import Attack

        return any(isinstance(g, Attack) for g in self.walk())

    def display(self, shown: Sequence[tuple[str | None, Any]]) -> Goal:
        """Set the arguments ``str()`` shows (the ones the user wrote, resolved); returns self."""
        self.shown = tuple(shown)
        return self

    def __str__(self) -> str:
        args = ", ".join(fmt_value(v) if k is None else f"{k}={fmt_value(v)}" for k, v in self.shown)
        return f"{self.name}({args})"

    def __repr__(self) -> str:
        return f"<goal {self}>"


# --------------------------------------------------------------------------- helpers


def fmt_number(x: float) -> str:
    """A number as the DSL writes it: ``2``, ``0.1``."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def fmt_value(v: Any) -> str:
    """A resolved argument in DSL syntax."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, Goal | Schedule):
        return str(v)
    if isinstance(v, int | float):
        return fmt_number(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(fmt_value(e) for e in v) + ")"
    return str(v)


def onehot(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Labels (N,) as an (N, C) one-hot tensor in ``like``'s dtype, C from ``like``'s last axis."""
    return torch.nn.functional.one_hot(y.long(), like.shape[-1]).to(like.dtype)


def value_of(s: Schedule | float | None, ctx: GoalContext) -> float | None:
    """A schedule (or number) at the context's time."""
    if s is None:
        return None
    if isinstance(s, Schedule):
        return s.value(ctx.time, ctx.rng)
    return float(s)


def resolve_width(own: Schedule | float | None, ctx: GoalContext, w: Width | None) -> Width:
    """The width a goal uses: its own ``w`` if set, else the one passed in, else ``ctx.epsilon``."""
    if own is not None:
        return value_of(own, ctx)  # type: ignore[return-value]
    return ctx.epsilon if w is None else w


def width_tensor(w: Width, x: torch.Tensor) -> torch.Tensor:
    """A width as a tensor that broadcasts against ``x``: a per-example (N,) width gets unit axes."""
    t = torch.as_tensor(w, dtype=x.dtype, device=x.device)
    if t.dim() == 1 and t.shape[0] == x.shape[0] and x.dim() > 1:
        t = t.reshape(-1, *([1] * (x.dim() - 1)))
    return t


def is_nonpositive(w: Width) -> bool:
    """True if every entry of the width is ≤ 0."""
    if isinstance(w, torch.Tensor):
        return bool((w <= 0).all())
    return w <= 0 or math.isnan(w)


def clip_to_range(ctx: GoalContext, x: torch.Tensor) -> torch.Tensor:
    """Clamp to the network's declared input range."""
    lo, hi = ctx.net.input_range
    return x.clamp(lo, hi)


def randn(ctx: GoalContext, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Standard normal samples from the context's CPU generator, moved to ``like``'s device."""
    return torch.randn(tuple(shape), generator=ctx.generator, dtype=like.dtype).to(like.device)


def rand_sym(ctx: GoalContext, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Uniform samples in [−1, 1] from the context's CPU generator, moved to ``like``'s device."""
    u = torch.rand(tuple(shape), generator=ctx.generator, dtype=like.dtype)
    return (2 * u - 1).to(like.device)
