"""The goal catalog: DSL goal expressions → :class:`~absnet.goals.base.Goal` objects, never ``eval``.

A goal is written as a call (``LinMix(a=IFGSM(k=2), b=Box(), bw=0.1)``) or a bare name (``HBox``
means ``HBox()``). Arguments are typed: ``goal`` (another goal), ``schedule`` (a number or a
schedule such as ``Lin(0, 1, 10)``), ``number``, ``int``, ``bool``, ``choice`` (one of a few
strings); DList and DProb take positional ``(goal, weight)`` pairs. Every problem is reported at
once: E201 unknown goal (with did-you-mean; ``Normal`` is a schedule, the goal is ``NormalPoint``),
E202 unknown argument (``mu`` of PGD, ``r`` of IFGSM), E204/E205/E208/E209 binding, E206 a wrong
value — including a sub-goal that must give a point but cannot, or a region between two images that
the sub-goal cannot build. Linear-bound goals (``goals/linear.py``) take their analysis's arguments.

>>> str(parse_goal("LinMix(a=IFGSM(k=2), b=Box(), bw=0.1)"))
'LinMix(a=IFGSM(k=2), b=Box(), bw=0.1)'
>>> parse_goal("HBox").analysis.name
'HBox'
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic, SourceMap, Span, did_you_mean
from absnet.goals import attacks as A
from absnet.goals import combinators as C
from absnet.goals import linear as LG
from absnet.goals import regions as R
from absnet.goals.abstract import ABSTRACT_GOALS, AbstractGoal
from absnet.goals.base import Goal, fmt_number
from absnet.goals.schedules import SCHEDULES, Const, Schedule, resolve_schedule
from absnet.grammar import ast
from absnet.grammar.evaluate import UNKNOWN, Slot, bind_args, describe, evaluate
from absnet.grammar.parser import parse_expr
from absnet.ir.ops import SLOPES


@dataclass(frozen=True)
class GParam:
    """A goal argument. ``kind``: goal | schedule | number | int | bool | choice. ``needs`` (goal kind):
    ``point`` (the sub-goal must give a point) or ``between`` (it must build a region between two
    images). ``optional``: ``none`` is allowed. ``low``/``high``: the allowed range."""

    name: str
    kind: str
    default: Any = None  # for kind goal: the default's DSL text
    required: bool = False
    optional: bool = False
    low: float | None = None
    high: float | None = None
    strict: bool = False  # low is exclusive
    needs: str | None = None
    choices: tuple[str, ...] = ()  # kind choice: the accepted strings


@dataclass(frozen=True)
class GoalSpec:
    """A catalog entry. ``pairs`` ("schedule" or "number"): takes positional (goal, weight) pairs."""

    name: str
    params: tuple[GParam, ...]
    build: Callable[..., Goal]
    doc: str
    pairs: str | None = None
    pairs_default: tuple[tuple[str, float], ...] = ()
    fixed: Mapping[str, str] = field(default_factory=dict)  # argument → why it is not accepted


_W = GParam("w", "schedule", None, optional=True, low=0.0)
_ABSTRACT = (
    _W, GParam("tot_weight", "schedule", 1.0, low=0.0), GParam("width_weight", "schedule", 0.0, low=0.0),
    GParam("pow_loss", "number", None, optional=True), GParam("log_loss", "bool", False),
    GParam("cross_loss", "bool", True),
)
_K = GParam("k", "int", 5, low=1)
_END = GParam("should_end", "bool", True)
_RESTART = GParam("restart", "int", None, optional=True, low=1)
_SUB = GParam("sub", "schedule", required=True, low=0.0, high=1.0)
_NO_MU = "PGD and IFGSM have no momentum (mu = 0): use MI_FGSM(mu=...) for a momentum attack"
_NO_R = "IFGSM's step is w/k (r = 1): use PGD(r=...) to choose the step size"
_SLOPE = GParam("slope", "choice", "adaptive", choices=SLOPES)
_UNIT = {"low": 0.0, "high": 1.0}
_FINAL = "beta and kappa are schedules over training time: CROWN-IBP's final-beta=0 over a 60-epoch ramp " \
         "from epoch 1 is beta=Lin(1, 0, 60, 1)"


def _linear(name: str, params: tuple[GParam, ...], doc: str, **fixed: str) -> GoalSpec:
    return GoalSpec(name, (_W, *params), LG.linear_goal(name), doc + "; loss CE(-lb, y) on the margin lower bounds",
                    fixed=fixed)


def _abstract(name: str, doc: str) -> GoalSpec:
    return GoalSpec(name, _ABSTRACT, functools.partial(AbstractGoal, name), doc)


GOALS: dict[str, GoalSpec] = {
    s.name: s
    for s in (
        *(_abstract(n, f"the region analysed with {n} (HBox-family loss)") for n in ABSTRACT_GOALS),
        _linear("CROWN", (_SLOPE,), "the region analysed with CROWN"),
        _linear("CROWN_IBP", (GParam("beta", "schedule", 1.0, **_UNIT), GParam("kappa", "schedule", 0.0, **_UNIT),
                              _SLOPE),
                "CROWN-IBP: lb = beta*lb_CROWN-IBP + (1-beta)*lb_IBP, plus kappa*CE on the clean image",
                final_beta=_FINAL, final_kappa=_FINAL),
        _linear("DeepPoly", (), "the region analysed with DeepPoly"),
        _linear("FastLin", (), "the region analysed with Fast-Lin"),
        _linear("WongKolter", (GParam("proj", "int", 0, low=0),),
                "the region analysed with the Wong-Kolter dual bound (proj=k: random projections, training only)"),
        _linear("AlphaCROWN", (GParam("iters", "int", 20, low=1), GParam("lr", "number", 0.5, low=0.0, strict=True),
                               _SLOPE), "the region analysed with alpha-CROWN"),
        GoalSpec("Point", (), lambda: R.PointGoal("Point"), "the clean image (cross-entropy)"),
        GoalSpec("PointA", (), lambda: R.PointGoal("PointA"), "the clean image; between(o1, o2) is o1"),
        GoalSpec("PointB", (), lambda: R.PointGoal("PointB"), "the clean image; between(o1, o2) is o2"),
        GoalSpec("NormalPoint", (GParam("w", "number", None, optional=True, low=0.0),), R.NormalPoint,
                 "the image plus Gaussian noise of standard deviation w"),
        GoalSpec("MI_FGSM", (_W, GParam("r", "number", 20.0, low=0.0, strict=True), replace(_K, default=100),
                             GParam("mu", "number", 0.8, low=0.0), _END, _RESTART), A.mi_fgsm,
                 "momentum iterative sign attack, step r*w/k"),
        GoalSpec("PGD", (GParam("r", "number", 5.0, low=0.0, strict=True), _K, _W, _END, _RESTART), A.pgd,
                 "iterative sign attack (no momentum), step r*w/k", fixed={"mu": _NO_MU}),
        GoalSpec("IFGSM", (_K, _W, _END, _RESTART), A.ifgsm, "iterative FGSM, step w/k",
                 fixed={"mu": _NO_MU, "r": _NO_R}),
        GoalSpec("FGSM", (_W, _END), A.fgsm, "one sign step of size w (= IFGSM(k=1))",
                 fixed={"mu": _NO_MU, "r": _NO_R, "k": "FGSM takes one step: use IFGSM(k=...) for more"}),
        GoalSpec("NormalAdv", (GParam("a", "goal", "IFGSM()", needs="point"), _W), R.NormalAdv,
                 "the point goal a at width |N(0,1)|*w (per example)"),
        GoalSpec("InSamp", (_SUB, GParam("a", "goal", "Box()"), GParam("normal", "bool", False), _W),
                 R.InSamp, "a at width w*sub around a random point of the (1-sub)*w ball"),
        GoalSpec("AdvInclusion", (_SUB, GParam("a", "goal", "IFGSM()", needs="point"), GParam("b", "goal", "Box()"),
                                  _W), R.AdvInclusion, "b at width w*sub around a's attack at width w*(1-sub)"),
        GoalSpec("AdvDom", (GParam("a", "goal", "IFGSM()", needs="point"),
                            GParam("b", "goal", "Box()", needs="between")), R.AdvDom,
                 "b between the image and a's attack point"),
        GoalSpec("BiAdv", (GParam("a", "goal", "IFGSM()", needs="point"),
                           GParam("b", "goal", "Box()", needs="between")), R.BiAdv,
                 "b between x - d and x + d, d the displacement of a's attack"),
        GoalSpec("DList", (), C.DList, "weighted sum of the members' losses (weights normalised)",
                 pairs="schedule", pairs_default=(("Point()", 1.0), ("Box()", 0.1))),
        GoalSpec("Mix", (GParam("a", "goal", "Point()"), GParam("b", "goal", "Box()"),
                         GParam("aw", "schedule", 1.0, low=0.0), GParam("bw", "schedule", 0.1, low=0.0)), C.mix,
                 "DList((a, aw), (b, bw))"),
        GoalSpec("LinMix", (GParam("a", "goal", "Point()"), GParam("b", "goal", "Box()"),
                            GParam("bw", "schedule", 0.1, low=0.0, high=1.0)), C.lin_mix,
                 "DList((a, 1 - bw), (b, bw))"),
        GoalSpec("DProb", (), C.DProb, "one member per batch, drawn with probability w_i / sum(w)",
                 pairs="number", pairs_default=(("Point()", 0.8), ("Box()", 0.2))),
        GoalSpec("Coin", (GParam("a", "goal", "Point()"), GParam("b", "goal", "Box()"),
                          GParam("ap", "number", 0.8, low=0.0), GParam("bp", "number", 0.2, low=0.0)), C.coin,
                 "DProb((a, ap), (b, bp))"),
    )
}
#: other names for catalog entries (DiffAI's long name; the analyses' aliases)
GOAL_ALIASES = {"InclusionSample": "InSamp", "IBP": "Box", "DeepZ": "ZNIPS"}


def goal_slots(spec: GoalSpec) -> list[Slot]:
    """The argument slots of a goal, for :func:`absnet.grammar.evaluate.bind_args`."""
    return [Slot(p.name, p.required, default_text=None if p.required else _default_text(p)) for p in spec.params]


def _default_text(p: GParam) -> str:
    if p.kind == "goal":
        return str(p.default)
    return describe(p.default) if not isinstance(p.default, float) else fmt_number(p.default)


@functools.lru_cache(maxsize=64)
def _default_expr(text: str) -> ast.Expr:
    return parse_expr(text, "<default>")


def _default_goal(text: str) -> Goal:
    return resolve_goal(_default_expr(text))


# --------------------------------------------------------------------------- resolution


def resolve_goal(expr: ast.Expr, env: Mapping[str, Any] | None = None, where: str = "") -> Goal:
    """Resolve a goal expression (a call, or a bare name meaning a call without arguments).

    Args:
        expr: e.g. the expression of ``goal LinMix(a=IFGSM(k=2), b=Box(), bw=0.1)``.
        env: parameter values that names inside the arguments refer to.
        where: what ``env`` belongs to, for messages about unknown names.

    Returns:
        The goal (``str(goal)`` is its DSL text), or :data:`UNKNOWN` if a value is not known yet.

    Raises:
        AbsnetError: every problem found (E201, E202, E204, E205, E206, E207, E208, E209).
    """
    env = env or {}
    if isinstance(expr, ast.Name):
        expr = ast.Call(expr.name, (), expr.span, expr.span)
    if not isinstance(expr, ast.Call):
        raise AbsnetError(Diagnostic("E206", f"expected a goal such as HBox() or IFGSM(k=2), got {_what(expr)}",
                                     expr.span))
    spec = GOALS.get(GOAL_ALIASES.get(expr.name, expr.name))
    if spec is None:
        raise AbsnetError(_unknown_goal(expr))
    if spec.pairs is not None:
        return _resolve_pairs(spec, expr, env, where)
    bound, diags = bind_args(expr, goal_slots(spec))
    diags = [_explain_fixed(spec, expr, d) for d in diags]
    values: dict[str, Any] = {}
    for p in spec.params:
        arg = bound.get(p.name)
        if arg is None:
            values[p.name] = _default_goal(p.default) if p.kind == "goal" else p.default
            continue
        try:
            values[p.name] = _arg_value(spec.name, p, arg.value, env, where)
        except AbsnetError as e:
            diags.extend(e.diagnostics)
    if diags:
        raise AbsnetError(diags)
    if any(v is UNKNOWN for v in values.values()):
        return UNKNOWN
    kinds = {p.name: p.kind for p in spec.params}
    # in the order the user wrote them; strings quoted so str(goal) is valid DSL
    shown = [(n, _Literal(describe(values[n])) if kinds[n] == "choice" else values[n]) for n in bound]
    return spec.build(**values).display(shown)


@dataclass(frozen=True)
class _Literal:
    """An argument shown exactly as written (a quoted string)."""

    text: str

    def __str__(self) -> str:
        return self.text


def _what(expr: ast.Expr) -> str:
    if isinstance(expr, ast.Num | ast.Str | ast.Bool | ast.NoneLit):
        return describe(evaluate(expr, {}))
    if isinstance(expr, ast.TupleExpr):
        return "a tuple"
    if isinstance(expr, ast.ListExpr):
        return "a list"
    if isinstance(expr, ast.Call | ast.Name):
        return f"'{expr.name}'"
    return "an expression"


def _unknown_goal(call: ast.Call) -> Diagnostic:
    name = call.name
    notes = (f"goals: {', '.join(GOALS)}",)
    if name == "Normal":
        return Diagnostic("E201", "'Normal' is a schedule (a random half-normal number), not a goal", call.name_span,
                          notes=notes, help="did you mean 'NormalPoint'? e.g. NormalPoint(w=0.3): the image plus "
                                            "Gaussian noise of standard deviation w")
    if name in SCHEDULES:
        return Diagnostic("E201", f"'{name}' is a schedule, not a goal", call.name_span, notes=notes,
                          help=f"schedules are values of goal arguments, e.g. Box(w={name}(...))")
    return Diagnostic("E201", f"unknown goal '{name}'", call.name_span, notes=notes,
                      help=did_you_mean(name, [*GOALS, *GOAL_ALIASES]))


#: names users reach for that difflib does not connect to the argument they mean
_SYNONYMS = {"width": "w", "eps": "w", "epsilon": "w", "radius": "w", "steps": "k", "iters": "k",
             "momentum": "mu", "restarts": "restart"}


def _explain_fixed(spec: GoalSpec, call: ast.Call, d: Diagnostic) -> Diagnostic:
    if d.code != "E202":
        return d
    names = {p.name for p in spec.params}
    for arg in call.args:
        if arg.name is None or d.span not in (arg.name_span, arg.span):
            continue
        if arg.name in spec.fixed:
            return replace(d, help=spec.fixed[arg.name])
        if d.help is None and _SYNONYMS.get(arg.name) in names:
            return replace(d, help=f"did you mean '{_SYNONYMS[arg.name]}'?")
    return d


def _arg_value(name: str, p: GParam, expr: ast.Expr, env: Mapping[str, Any], where: str,
               what: str | None = None) -> Any:
    what = what or f"argument '{p.name}' of {name}"
    if p.kind == "goal":
        return _goal_arg(what, p, expr, env, where)
    if p.optional and isinstance(expr, ast.NoneLit):
        return None
    if p.kind == "schedule":
        if isinstance(expr, ast.Call) and GOAL_ALIASES.get(expr.name, expr.name) in GOALS:
            raise AbsnetError(Diagnostic("E206", f"{what} expects a number or a schedule, not the goal '{expr.name}'",
                                         expr.span))
        s = resolve_schedule(expr, env, where)
        if s is not UNKNOWN:
            _check_range(what, p, s, expr.span)
        return s
    if isinstance(expr, ast.Call):
        raise AbsnetError(Diagnostic(
            "E206", f"{what} expects {_kind_text(p)}, not a call to '{expr.name}'", expr.span,
            help=f"'{p.name}' of {name} is not schedulable" if expr.name in SCHEDULES else None,
        ))
    v = evaluate(expr, env, where)
    if v is UNKNOWN:
        return v
    if v is None and p.optional:
        return None
    if p.kind == "choice":
        if v not in p.choices:
            raise AbsnetError(Diagnostic("E206", f"{what} expects {_kind_text(p)}, got {describe(v)}", expr.span,
                                         help=did_you_mean(str(v), p.choices) if isinstance(v, str) else None))
        return v
    ok = (isinstance(v, bool) if p.kind == "bool" else
          isinstance(v, int) and not isinstance(v, bool) if p.kind == "int" else
          isinstance(v, int | float) and not isinstance(v, bool))
    if not ok:
        raise AbsnetError(Diagnostic("E206", f"{what} expects {_kind_text(p)}, got {describe(v)}", expr.span))
    if p.kind != "bool":
        _check_range(what, p, v, expr.span)
    return float(v) if p.kind == "number" else v


def _kind_text(p: GParam) -> str:
    text = {"bool": "true or false", "int": "an integer", "number": "a number",
            "choice": "one of " + ", ".join(describe(c) for c in p.choices)}.get(p.kind, p.kind)
    if p.kind == "int" and p.low == 1:
        text = "a positive integer"
    return text + (" or none" if p.optional else "")


def _check_range(what: str, p: GParam, v: Any, span: Span) -> None:
    if isinstance(v, Const):
        v = v.c
    lo, hi = v.bounds() if isinstance(v, Schedule) else (v, v)
    bad_low = p.low is not None and (lo < p.low or (p.strict and lo <= p.low))
    bad_high = p.high is not None and hi > p.high
    if not (bad_low or bad_high or math.isnan(lo) or math.isnan(hi)):
        return
    if p.low is not None and p.high is not None:
        want = f"in [{fmt_number(p.low)}, {fmt_number(p.high)}]"
    else:
        want = f"{'>' if p.strict else '>='} {fmt_number(p.low)}" if p.low is not None else f"<= {p.high}"
    got = (f"its schedule ranges over [{fmt_number(lo)}, {fmt_number(hi)}]" if isinstance(v, Schedule)
           else f"got {fmt_number(v)}")
    raise AbsnetError(Diagnostic("E206", f"{what} must be {want}, but {got}", span))


def _goal_arg(what: str, p: GParam, expr: ast.Expr, env: Mapping[str, Any], where: str) -> Goal:
    if not isinstance(expr, ast.Call | ast.Name):
        raise AbsnetError(Diagnostic("E206", f"{what} expects a goal such as Box() or IFGSM(k=2), got {_what(expr)}",
                                     expr.span))
    goal = resolve_goal(expr, env, where)
    if goal is UNKNOWN:
        return goal
    check_sub_goal(what, goal, p.needs, expr.span)
    return goal


def check_sub_goal(what: str, goal: Goal, needs: str | None, span: Span | None) -> None:
    """E206 when ``goal`` cannot play its role: give a point, or build a region between two images."""
    if needs == "point" and not goal.produces_point:
        raise AbsnetError(Diagnostic(
            "E206", f"{what} must produce a point, but {goal} {_gives(goal)}", span,
            help="use an attack (IFGSM(), PGD(), MI_FGSM()) or a point goal (Point(), NormalPoint())",
        ))
    if needs == "between" and not goal.supports_between:
        raise AbsnetError(Diagnostic(
            "E206", f"{what} must build a region between two images, but {goal} cannot", span,
            notes=("attacks, DProb/Coin, AdvInclusion and BiAdv have no region between two images",),
            help="use an abstract goal (Box(), HBox(), ...), a point goal (Point(), PointA(), PointB()), "
                 "InSamp(...), or a DList of those",
        ))


def _gives(goal: Goal) -> str:
    if not goal.single:
        return "combines several values"
    return f"gives an abstract region ({goal.analysis.name})" if goal.analysis is not None else "does not"


def _resolve_pairs(spec: GoalSpec, call: ast.Call, env: Mapping[str, Any], where: str) -> Goal:
    diags: list[Diagnostic] = []
    pairs: list[tuple[Goal, Any]] = []
    example = f"{spec.name}((Point(), 1), (Box(), 0.1))"
    for arg in call.args:
        if arg.name is not None:
            diags.append(Diagnostic("E202", f"{spec.name} has no argument '{arg.name}'", arg.name_span or arg.span,
                                    notes=(f"{spec.name} takes only positional (goal, weight) pairs",),
                                    help=f"e.g. {example}"))
            continue
        v = arg.value
        if not isinstance(v, ast.TupleExpr) or len(v.items) != 2:
            diags.append(Diagnostic("E206", f"{spec.name} expects (goal, weight) pairs, got {_what(v)}", v.span,
                                    help=f"e.g. {example}"))
            continue
        got: list[Any] = []
        for i, item in enumerate(v.items):
            try:
                got.append(_pair_item(spec, i, item, env, where))
            except AbsnetError as e:
                diags.extend(e.diagnostics)
        if len(got) == 2:
            pairs.append((got[0], got[1]))
    if not diags and pairs and spec.pairs == "number" and sum(w for _, w in pairs) <= 0:
        diags.append(Diagnostic("E206", f"the weights of {spec.name} must have a positive sum", call.span))
    if diags:
        raise AbsnetError(diags)
    if any(g is UNKNOWN or w is UNKNOWN for g, w in pairs):
        return UNKNOWN
    shown = [(None, (g, w)) for g, w in pairs]
    if not pairs:
        pairs = [(_default_goal(text), w) for text, w in spec.pairs_default]
    return spec.build(pairs).display(shown)


def _pair_item(spec: GoalSpec, i: int, expr: ast.Expr, env: Mapping[str, Any], where: str) -> Any:
    if i == 0:
        return _goal_arg(f"the goal of a {spec.name} pair", GParam("goal", "goal"), expr, env, where)
    if spec.pairs == "number" and isinstance(expr, ast.Call) and expr.name in SCHEDULES:
        raise AbsnetError(Diagnostic("E206", f"the weights of {spec.name} are plain numbers, not schedules",
                                     expr.span, help="use DList (or Mix) for scheduled weights"))
    weight = GParam("weight", spec.pairs or "schedule", low=0.0)
    return _arg_value(spec.name, weight, expr, env, where, f"the weight of a {spec.name} pair")


def parse_goal(text: str) -> Goal:
    """Parse and resolve a goal written in the DSL (e.g. from the command line).

    Raises:
        AbsnetError: every problem, rendered with ``text`` as its source line.

    >>> str(parse_goal("PGD(k=20, r=2)"))
    'PGD(k=20, r=2)'
    """
    sources = SourceMap()
    try:
        return resolve_goal(parse_expr(text.strip(), "<goal>", sources))
    except AbsnetError as e:
        raise e.with_sources(sources) from None


def check_test_goal(goal: Goal, span: Span | None = None) -> bool:
    """Check that ``goal`` can be a test goal: it must build exactly one value per example.

    Raises:
        AbsnetError: E206 for combinators (DList, Mix, LinMix, DProb, Coin) and goals built from them;
            E403 for an analysis whose bounds are estimates (``WongKolter(proj=k)``).
    """
    if goal.single and goal.analysis is not None and not goal.analysis.sound:
        raise AbsnetError(Diagnostic(
            "E403", f"{goal} estimates bounds with random projections: its test would not be a certificate", span,
            help="test with WongKolter() (exact) or CROWN(); proj= is for training"))
    if goal.single:
        return True
    raise AbsnetError(Diagnostic(
        "E206", f"{goal} cannot be a test goal: it combines several values, but a test needs exactly one per "
                "example", span,
        notes=("DList, Mix and LinMix train on a weighted sum; DProb and Coin pick a goal at random",),
        help="test each member on its own, e.g. test PGD(k=20), HBox()",
    ))
