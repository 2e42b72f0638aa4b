"""The training loss of a goal and its test-time outcome (reference/diffai.md §2, §3.7, §3.8).

Training: the goal builds its terms; each is pushed through the network with its analysis and
scored by its goal's loss (cross-entropy on points, the HBox-family loss on abstract outputs);
the weighted sum over terms is then blended with the DeepLoss regularisers met on the way, one
position at a time in network order: L ← (1 − bw)·L + bw·Σ_{abstract terms} deep_loss.

Testing: a single-valued goal's output is checked against the clean prediction (``proved``) and
the label (``safe``): the correlation-aware margin test for abstract outputs (boxes, zonotopes and
linear bounds; a linear-bound goal certifies with its own margin bounds, e.g. CROWN_IBP's β mix),
"argmax unchanged" for points (attacks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from absnet.backends.torch.ops import TorchOps
from absnet.domains import Box, Zonotope
from absnet.domains.linear import LinearValue
from absnet.goals.base import Goal, GoalContext, onehot, value_of
from absnet.goals.catalog import check_test_goal
from absnet.goals.linear import LinearGoal
from absnet.goals.losses import diameter
from absnet.transformers.margins import bounds, margin_lower

ABSTRACT_OUTPUTS = (Box, Zonotope, LinearValue)


def goal_loss(goal: Goal, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The batch-mean training loss of ``goal`` on ``(x, y)``, and a few floats for logging.

    Returns:
        ``(loss, stats)``: the scalar loss (differentiable in the network's parameters) and
        ``{"loss": …, "terms": …, "term<i>/<goal>": mean loss of term i, "deep": blended in or not}``.
    """
    net = ctx.net
    net.time = ctx.time  # DeepLoss weights may be schedules
    terms = goal.terms(ctx, x, y)
    stats: dict[str, float] = {"terms": float(len(terms))}
    total: torch.Tensor | None = None
    weights: list[Any] = []
    deep: list[torch.Tensor] = []
    for i, t in enumerate(terms):
        out = net.propagate(t.value, t.analysis)
        aux = list(net.aux_losses)
        per = t.goal.output_loss(ctx, out, y)
        stats[f"term{i}/{t.goal.name}"] = float(per.detach().mean())
        total = t.weight * per if total is None else total + t.weight * per
        if t.analysis.kind != "point" and aux:
            if not deep:
                weights, deep = [bw for bw, _ in aux], [d for _, d in aux]
            else:
                deep = [acc + d for acc, (_, d) in zip(deep, aux)]
    if total is None:  # every member weighs 0 now: nothing to learn from this batch
        loss = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
        stats["loss"] = 0.0
        return loss, stats
    blended = 0.0
    for bw, d in zip(weights, deep):
        b = value_of(bw, ctx)
        if b is not None and b > 0:
            total = (1 - b) * total + b * d
            blended += 1
    stats["deep"] = blended
    loss = total.mean()
    stats["loss"] = float(loss.detach())
    return loss, stats


@dataclass
class Outcome:
    """What one test goal found for a batch."""

    proved: torch.Tensor  # (N,) bool: the check holds for the clean prediction
    safe: torch.Tensor  # (N,) bool: the check holds for the true label
    width: torch.Tensor  # (N,) the output's diameter (0 for points)
    analysis: str  # the analysis that produced the certificate, or "attack" / "point"


def certified(out: Any, labels: torch.Tensor, goal: Goal | None = None, ctx: GoalContext | None = None) -> torch.Tensor:
    """True where every margin lower bound z_l − z_j (j ≠ l) of the abstract output is > 0.

    The bounds are computed inside the domain (a Box, Zonotope or LinearValue), or by ``goal``'s own
    ``margins`` when it is a linear-bound goal (CROWN_IBP mixes two bounds)."""
    center = out.center if isinstance(out, ABSTRACT_OUTPUTS) else out
    oh = onehot(labels, center)
    m = goal.margins(ctx, out, oh) if isinstance(goal, LinearGoal) else margin_lower(TorchOps(), out, oh)
    return m.masked_fill(oh.bool(), float("inf")).min(dim=1).values > 0


def _width(out: Any) -> torch.Tensor:
    """Per example, the sum of the output radii (linear values: of their back-substituted bounds)."""
    if isinstance(out, LinearValue):
        lo, hi = bounds(TorchOps(), out)
        return ((hi - lo) / 2).flatten(1).sum(dim=1)
    return diameter(TorchOps(), out)


def test_outcome(goal: Goal, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor) -> Outcome:
    """Evaluate a single-valued goal on a batch: attacks target ``y``; outputs without gradients.

    Raises:
        AbsnetError: E206 if ``goal`` combines several values (see ``check_test_goal``).
    """
    check_test_goal(goal)
    with torch.no_grad():  # attacks (and α-CROWN's slopes) switch gradients back on for themselves
        # a linear-bound goal's test is its region alone (CROWN_IBP's clean κ term is for training)
        (term,) = [goal.region(ctx, x, y)] if isinstance(goal, LinearGoal) else goal.terms(ctx, x, y)
        out = ctx.net.propagate(term.value, term.analysis)
    if isinstance(out, ABSTRACT_OUTPUTS):
        with torch.no_grad():
            if isinstance(goal, LinearGoal):
                name = goal.certificate(ctx)
                width = goal.width(ctx, out)
                return Outcome(certified(out, pred, goal, ctx), certified(out, y, goal, ctx), width, name)
            return Outcome(certified(out, pred), certified(out, y), _width(out), term.analysis.name)
    top = out.argmax(dim=1)
    kind = "attack" if goal.uses_attack else "point"
    return Outcome(top == pred, top == y, torch.zeros(out.shape[0], dtype=out.dtype, device=out.device), kind)


test_outcome.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into tests
