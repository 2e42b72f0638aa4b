"""Goals for the linear-bound analyses: CROWN, CROWN_IBP, DeepPoly, FastLin, WongKolter, AlphaCROWN.

Each pushes the ε-ball (own ``w`` first) through the analysis of the same name and scores the
margin lower bounds lb_j ≤ min over the ball of z_y − z_j (lb_y = 0), computed with the
specification folded into the last layer (reference/crown_ibp.md §1.2, §1.4):

    loss = CE(−lb, y) = log(1 + Σ_{j≠y} exp(−lb_j))                            (§1.7)

and a test certifies an example iff every lb_j (j ≠ y) is > 0.

``CROWN_IBP(beta, kappa, slope)`` is CROWN-IBP's training objective (§1.5, §1.6):

    lb   = β·lb_CROWN-IBP + (1 − β)·lb_IBP
    loss = κ·CE(f(x), y) + (1 − κ)·CE(−lb, y)

β and κ are schedules evaluated at ``ctx.time``. Both bounds come from one forward pass: the
CROWN_IBP analysis carries IBP's box on every value, so lb_IBP is IBP's margin with the
specification folded into the last layer (C·W and C·b on the box of the last layer's input,
§1.3 "elision") — one small product, no second IBP pass. The back-substitution (lb_CROWN-IBP) is
skipped when β < 1e-5 and lb_IBP is not formed when β > 1 − 1e-5. The clean term (weight κ) is a
point term of its own, as in ``LinMix(a=Point(), b=CROWN_IBP(), bw=1 − κ)``; it is left out
while κ = 0. ``CROWN_IBP(beta=0)`` is therefore CROWN-IBP's "IBP" loss, CE(−lb_IBP, y), which is
tighter than DiffAI's ``Box`` loss (worst-case logits, no elision).

As a test goal, the region is certified with the bound the goal trains on at ``ctx.time``
(κ plays no part): ``CROWN_IBP()`` with the CROWN-IBP bound, ``CROWN_IBP(beta=0)`` with IBP's.

>>> g = CrownIbpGoal(beta=0.0)
>>> g.analysis.name, g.certificate(None)
('CROWN_IBP', 'IBP')
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from absnet.backends.torch.ops import TorchOps
from absnet.domains import linear as L
from absnet.goals.base import Goal, GoalContext, Term, Width, is_nonpositive, onehot, resolve_width, value_of
from absnet.goals.losses import point_cross_entropy
from absnet.goals.regions import PointGoal
from absnet.goals.schedules import Schedule, as_schedule
from absnet.ir.domains import ANALYSES, ARGS, make_analysis
from absnet.transformers import margins as M
from absnet.transformers.tensor_ops import TensorOps

T = Any

#: the linear-bound analyses that are also goals (CROWN_IBP: :class:`CrownIbpGoal`)
LINEAR_GOALS = ("CROWN", "CROWN_IBP", "DeepPoly", "FastLin", "WongKolter", "AlphaCROWN")
#: below this β the back-substitution is skipped, above 1 − this the IBP margin (§1.5)
BETA_SKIP = 1e-5
_FIELD = {"iters": "alpha_iters", "lr": "alpha_lr"}


# --------------------------------------------------------------------------- losses (facade)


def margin_cross_entropy(ops: TensorOps, lb: T, onehot: T) -> T:
    """CE(−lb, y) per example (N,) for margin lower bounds lb (N, C) with lb_y = 0 (§1.7)."""
    return point_cross_entropy(ops, ops.neg(lb), onehot)


def ibp_margin_lower(ops: TensorOps, value: Any, onehot: T) -> T:
    """IBP's lower bounds of z_y − z_j (N, C), 0 at j = y, with the specification folded into the
    last layer (crown_ibp.md §1.3): the rows e_y − e_j go through the output op's exact backward
    rule (C·W, C·b for a Linear) and are bounded over the IBP boxes of its inputs. Sound: the rule
    is exact for affine ops and every input lies in its box. An output that is not an affine op
    of linear values (or not a linear value) falls back to the margin of its box.
    """
    if not isinstance(value, L.LinearValue):
        return M.margin_lower(ops, value, onehot)
    if value.op not in L.AFFINE_OPS or value.backward is None:
        return M.margin_lower(ops, value.box, onehot)
    k = ops.shape(onehot)[1]
    # row j of the (N, K, K) objective is e_y − e_j: zero at j = y, so that bound is exactly 0
    spec = ops.sub(ops.reshape(onehot, (-1, 1, k)), ops.constant(np.eye(k).reshape(1, k, k), onehot))
    in_lams, total = value.backward(ops, spec, L.Backward())
    for inp, lam in zip(value.inputs, in_lams, strict=True):
        if lam is None:
            continue
        part = L.concretize(ops, lam, L.InputSet(inp.box.lower(ops), inp.box.upper(ops)))
        total = part if total is None else ops.add(total, part)
    assert total is not None
    return total


# --------------------------------------------------------------------------- goals


def _sched(v: Schedule | float | None) -> Schedule | None:
    return None if v is None else as_schedule(v)


class LinearGoal(Goal):
    """The ε-ball through a linear-bound analysis, loss CE(−lb, y) on its margin lower bounds.

    ``analysis_args`` are the analysis's own arguments (``slope``, ``proj``, ``iters``, ``lr``);
    those equal to the analysis's defaults are dropped so ``str(goal.analysis)`` stays short.
    """

    produces_point = False
    single = True
    supports_between = True

    def __init__(self, name: str = "CROWN", w: Schedule | float | None = None, **analysis_args: Any):
        if name not in LINEAR_GOALS:
            raise ValueError(f"not a linear-bound goal: {name}")
        self.name = name
        base = ANALYSES[name]
        given = {k: v for k, v in analysis_args.items()
                 if k in ARGS[name] and v is not None and v != getattr(base, _FIELD.get(k, k))}
        self.analysis = make_analysis(name, given)
        self.w = _sched(w)

    # the abstract region and the point term of κ
    def region(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> Term:
        """The single abstract term: the ε-ball around ``x`` encoded for the analysis."""
        width = resolve_width(self.w, ctx, w)
        return Term(1.0, ctx.net.input_value(x, width, self.analysis), self.analysis, self)

    def region_between(self, ctx: GoalContext, o1: torch.Tensor, o2: torch.Tensor) -> Term:
        """The box [min(o₁, o₂), max(o₁, o₂)] ∩ the input range as the analysis's input."""
        lo, hi = ctx.net.input_range
        lower = torch.minimum(o1, o2).clamp(lo, hi)
        upper = torch.maximum(o1, o2).clamp(lo, hi)
        value = M.abstract_input(TorchOps(ctx.generator), lower, upper, self.analysis)
        return Term(1.0, value, self.analysis, self)

    def training_region(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None) -> Term:
        """The region for training: at width 0 the clean point, whose cross-entropy equals CE(−lb, y)
        there (every bound is exact, lb_j = f_y − f_j), at the cost of one forward pass."""
        if is_nonpositive(resolve_width(self.w, ctx, w)):
            (t,) = _POINT.terms(ctx, x, y)
            return t
        return self.region(ctx, x, y, w)

    def terms(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> list[Term]:
        return [self.training_region(ctx, x, y, w)]

    def between(self, ctx: GoalContext, o1: torch.Tensor, o2: torch.Tensor, y: torch.Tensor) -> list[Term]:
        return [self.region_between(ctx, o1, o2)]

    def margins(self, ctx: GoalContext | None, out: Any, oh: torch.Tensor) -> torch.Tensor:
        """Margin lower bounds (N, C) of the analysis's output, 0 at the label."""
        return M.margin_lower(TorchOps(), out, oh)

    def certificate(self, ctx: GoalContext | None) -> str:
        """The name of the bound that certifies (reported with every test)."""
        return self.analysis.name

    def width(self, ctx: GoalContext | None, out: Any) -> torch.Tensor:
        """Per example, the sum of the output radii under the analysis (back-substituted bounds)."""
        lo, hi = M.bounds(TorchOps(), out)
        return ((hi - lo) / 2).flatten(1).sum(dim=1)

    def output_loss(self, ctx: GoalContext, out: Any, y: torch.Tensor) -> torch.Tensor:
        oh = onehot(y, out.center)
        return margin_cross_entropy(TorchOps(), self.margins(ctx, out, oh), oh)


class CrownIbpGoal(LinearGoal):
    """``CROWN_IBP(beta=1, kappa=0, slope="adaptive")``: CROWN-IBP's training objective (module doc)."""

    def __init__(self, w: Schedule | float | None = None, beta: Schedule | float = 1.0,
                 kappa: Schedule | float = 0.0, slope: str | None = None):
        super().__init__("CROWN_IBP", w, slope=slope)
        self.beta = as_schedule(beta)
        self.kappa = as_schedule(kappa)

    def _beta(self, ctx: GoalContext | None) -> float:
        return self.beta.value(0.0) if ctx is None else value_of(self.beta, ctx)  # type: ignore[return-value]

    def terms(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> list[Term]:
        return self._with_clean(ctx, lambda: self.training_region(ctx, x, y, w), lambda p: p.terms(ctx, x, y))

    def between(self, ctx: GoalContext, o1: torch.Tensor, o2: torch.Tensor, y: torch.Tensor) -> list[Term]:
        return self._with_clean(ctx, lambda: self.region_between(ctx, o1, o2), lambda p: p.between(ctx, o1, o2, y))

    def _with_clean(self, ctx: GoalContext, region: Any, clean: Any) -> list[Term]:
        kappa = value_of(self.kappa, ctx)
        assert kappa is not None
        out = []
        if kappa > 0:  # the clean point (the midpoint between two images), weighted κ
            out.extend(Term(kappa * t.weight, t.value, t.analysis, t.goal) for t in clean(_POINT))
        if kappa < 1:
            t = region()
            out.append(Term(1 - kappa, t.value, t.analysis, t.goal))
        return out

    def margins(self, ctx: GoalContext | None, out: Any, oh: torch.Tensor) -> torch.Tensor:
        ops, beta = TorchOps(), self._beta(ctx)
        if beta < BETA_SKIP:
            return ibp_margin_lower(ops, out, oh)
        crown = M.margin_lower(ops, out, oh)
        if beta > 1 - BETA_SKIP:
            return crown
        return beta * crown + (1 - beta) * ibp_margin_lower(ops, out, oh)

    def width(self, ctx: GoalContext | None, out: Any) -> torch.Tensor:
        if self._beta(ctx) < BETA_SKIP and isinstance(out, L.LinearValue):  # IBP's box: no CROWN pass
            return out.box.radius.flatten(1).sum(dim=1)
        return super().width(ctx, out)

    def certificate(self, ctx: GoalContext | None) -> str:
        beta = self._beta(ctx)
        if beta < BETA_SKIP:
            return "IBP"
        if beta > 1 - BETA_SKIP:
            return "CROWN_IBP"
        return f"{beta:.3g}*CROWN_IBP+{1 - beta:.3g}*IBP"


_POINT = PointGoal("Point")


def linear_goal(name: str) -> Any:
    """The catalog's builder for the linear goal ``name`` (keyword arguments as in the DSL)."""
    if name == "CROWN_IBP":
        return CrownIbpGoal

    def build(**kwargs: Any) -> LinearGoal:
        return LinearGoal(name, **kwargs)

    return build


__all__ = ["LINEAR_GOALS", "CrownIbpGoal", "LinearGoal", "ibp_margin_lower", "linear_goal", "margin_cross_entropy"]
