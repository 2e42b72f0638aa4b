"""The abstract goals: Box, HBox, HSwitch, HSmooth, HNIPS, ZBox, ZSwitch, ZNIPS, ZSmooth.

Each maps to the analysis of the same name (:data:`absnet.ir.domains.ANALYSES`) and scores the
network's abstract output with the HBox family's loss (reference/diffai.md §1.8, §3.6).

>>> g = AbstractGoal("HBox", width_weight=0.5)
>>> g.analysis.name, g.analysis.kind
('HBox', 'zonotope')
"""

from __future__ import annotations

from typing import Any

import torch

from absnet.backends.torch.ops import TorchOps
from absnet.domains import Box, Zonotope
from absnet.goals.base import Goal, GoalContext, Term, Width, onehot, resolve_width, value_of, width_tensor
from absnet.goals.losses import abstract_loss
from absnet.goals.schedules import Schedule, as_schedule
from absnet.ir.domains import ANALYSES
from absnet.transformers.margins import abstract_input

ABSTRACT_GOALS = ("Box", "HBox", "HSwitch", "HSmooth", "HNIPS", "ZBox", "ZSwitch", "ZNIPS", "ZSmooth")


def _sched(v: Schedule | float | None) -> Schedule | None:
    return None if v is None else as_schedule(v)


class AbstractGoal(Goal):
    """A region pushed through the network with one of DiffAI's analyses, scored by the HBox loss.

    Regions: ``box(x, w)`` is the ε-ball of radius w (own ``w`` first) around x intersected with the
    input range; ``between(o₁, o₂)`` is the box [min(o₁, o₂), max(o₁, o₂)] encoded by the analysis,
    which the ``Box`` goal widens by its own ``w`` (default 0); both are intersected with the range.
    """

    produces_point = False
    single = True
    supports_between = True

    def __init__(
        self, name: str = "HBox", w: Schedule | float | None = None, tot_weight: Schedule | float = 1.0,
        width_weight: Schedule | float = 0.0, pow_loss: float | None = None, log_loss: bool = False,
        cross_loss: bool = True,
    ):
        if name not in ABSTRACT_GOALS:
            raise ValueError(f"not an abstract goal: {name}")
        self.name = name
        self.analysis = ANALYSES[name]
        self.w = _sched(w)
        self.tot_weight = as_schedule(tot_weight)
        self.width_weight = as_schedule(width_weight)
        self.pow_loss = pow_loss
        self.log_loss = log_loss
        self.cross_loss = cross_loss

    def terms(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> list[Term]:
        width = resolve_width(self.w, ctx, w)
        return [Term(1.0, ctx.net.input_value(x, width, self.analysis), self.analysis, self)]

    def between(self, ctx: GoalContext, o1: torch.Tensor, o2: torch.Tensor, y: torch.Tensor) -> list[Term]:
        lower, upper = torch.minimum(o1, o2), torch.maximum(o1, o2)
        if self.name == "Box" and self.w is not None:
            grow = width_tensor(value_of(self.w, ctx), o1)  # type: ignore[arg-type]
            lower, upper = lower - grow, upper + grow
        lo, hi = ctx.net.input_range
        lower, upper = lower.clamp(lo, hi), upper.clamp(lo, hi)
        value = abstract_input(TorchOps(ctx.generator), lower, upper, self.analysis)
        return [Term(1.0, value, self.analysis, self)]

    def output_loss(self, ctx: GoalContext, out: Any, y: torch.Tensor) -> torch.Tensor:
        center = out.center if isinstance(out, Box | Zonotope) else out
        return abstract_loss(
            TorchOps(), out, onehot(y, center), cross=self.cross_loss, log_loss=self.log_loss,
            pow_loss=self.pow_loss, tot_weight=value_of(self.tot_weight, ctx),  # type: ignore[arg-type]
            width_weight=value_of(self.width_weight, ctx),  # type: ignore[arg-type]
        )
