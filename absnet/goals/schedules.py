"""Schedules: numbers that change with training time (reference/diffai.md §4).

Time ``t`` is in epochs as a real number: epoch ``e`` (1-based) spans ``t ∈ (e−1, e]``; at test time
``t = 0``. A schedule is written in the DSL as a call, e.g. ``Lin(0, 0.1, 150, 10)``, and resolved by
:func:`resolve_schedule` against :data:`SCHEDULES` (never ``eval``). Wherever a schedule is
accepted a plain number is too (it becomes :class:`Const`). Arguments typed ``schedule`` may
themselves be schedules: ``Until(1, 0, Lin(0.5, 0, 50, 3))``.

>>> from absnet.grammar.parser import parse_expr
>>> s = resolve_schedule(parse_expr("Lin(0, 1, 10, 5)"))
>>> s.value(0.0), s.value(10.0), s.value(20.0)
(0.0, 0.5, 1.0)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from absnet.diagnostics import AbsnetError, Diagnostic, Span, did_you_mean
from absnet.grammar import ast
from absnet.grammar.evaluate import UNKNOWN, Slot, bind_args, describe, evaluate


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


class Schedule:
    """A value over training time. Subclasses are frozen dataclasses."""

    random: ClassVar[bool] = False  # draws random numbers (needs ``rng``)

    def value(self, time: float, rng: random.Random | None = None) -> float:
        """The value at ``time`` (epochs, a real number)."""
        raise NotImplementedError

    def bounds(self) -> tuple[float, float]:
        """Lowest and highest value over all ``t ≥ 0`` (used to check arguments at compile time)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Const(Schedule):
    """``Const(c)``: always ``c``."""

    c: float

    def value(self, time: float, rng: random.Random | None = None) -> float:
        return self.c

    def bounds(self) -> tuple[float, float]:
        return (self.c, self.c)

    def __str__(self) -> str:
        return _num(self.c)


@dataclass(frozen=True)
class Lin(Schedule):
    """``Lin(start, end, steps, initial=0, quant=false)``: ``start`` until ``initial``, then a linear
    ramp to ``end`` over ``steps`` epochs; with ``quant`` time is floored to whole epochs first."""

    start: float
    end: float
    steps: float
    initial: float = 0.0
    quant: bool = False

    def value(self, time: float, rng: random.Random | None = None) -> float:
        t = math.floor(time) if self.quant else time
        frac = min(max((t - self.initial) / self.steps, 0.0), 1.0)
        return self.start + (self.end - self.start) * frac

    def bounds(self) -> tuple[float, float]:
        return (min(self.start, self.end), max(self.start, self.end))

    def __str__(self) -> str:
        args = [_num(self.start), _num(self.end), _num(self.steps)]
        if self.initial or self.quant:
            args.append(_num(self.initial))
        if self.quant:
            args.append("true")
        return f"Lin({', '.join(args)})"


@dataclass(frozen=True)
class Smoothed(Schedule):
    """``Smoothed(start, end, steps, initial=0, mid=0.25)``: CROWN-IBP's smoothed ε ramp
    (reference/crown_ibp.md §1.8, from DeepMind's IBP code). Over ``[initial, initial + steps]``
    it first grows as a quartic ``start + α·(t − initial)⁴`` up to ``initial + mid·steps``, then
    linearly to ``end``; ``α`` makes the slope continuous where the two pieces meet.

    CROWN-IBP's ``schedule_start=s, schedule_length=L`` is ``Smoothed(ε₀, ε₁, L − 1, s)`` here
    (and its ``linear`` type is ``Lin(ε₀, ε₁, L − 1, s)``).

    >>> s = Smoothed(0, 1, 4)
    >>> [round(s.value(t), 4) for t in (0, 1, 2.5, 4, 5)]
    [0.0, 0.0769, 0.5385, 1.0, 1.0]
    """

    start: float
    end: float
    steps: float
    initial: float = 0.0
    mid: float = 0.25

    def value(self, time: float, rng: random.Random | None = None) -> float:
        t = time - self.initial
        if t <= 0:
            return float(self.start)
        if t >= self.steps:
            return float(self.end)
        d = self.mid * self.steps  # length of the quartic piece
        rest = self.steps - d
        if d <= 0:
            return self.start + (self.end - self.start) * t / self.steps
        alpha = (self.end - self.start) / (rest * 4 * d**3 + d**4)
        if t < d:
            return self.start + alpha * t**4
        at_mid = self.start + alpha * d**4
        return at_mid + (self.end - at_mid) * (t - d) / rest

    def bounds(self) -> tuple[float, float]:
        return (min(self.start, self.end), max(self.start, self.end))

    def __str__(self) -> str:
        args = [_num(self.start), _num(self.end), _num(self.steps)]
        if self.initial or self.mid != 0.25:
            args.append(_num(self.initial))
        if self.mid != 0.25:
            args.append(_num(self.mid))
        return f"Smoothed({', '.join(args)})"


@dataclass(frozen=True)
class Until(Schedule):
    """``Until(thresh, a, b)``: ``a(t)`` while ``t < thresh``, then ``b(t − thresh)``."""

    thresh: float
    a: Schedule
    b: Schedule

    @property
    def random(self) -> bool:  # type: ignore[override]
        return self.a.random or self.b.random

    def value(self, time: float, rng: random.Random | None = None) -> float:
        if time < self.thresh:
            return self.a.value(time, rng)
        return self.b.value(time - self.thresh, rng)

    def bounds(self) -> tuple[float, float]:
        (al, ah), (bl, bh) = self.a.bounds(), self.b.bounds()
        return (min(al, bl), max(ah, bh))

    def __str__(self) -> str:
        return f"Until({_num(self.thresh)}, {self.a}, {self.b})"


@dataclass(frozen=True)
class Scale(Schedule):
    """``Scale(c)``: ``c / (1 − c)`` for ``0 ≤ c < 1``; with ``Mix(aw=1, bw=Scale(c))`` the
    normalised weight of ``b`` is ``c``."""

    c: Schedule

    @property
    def random(self) -> bool:  # type: ignore[override]
        return self.c.random

    def value(self, time: float, rng: random.Random | None = None) -> float:
        v = self.c.value(time, rng)
        if not 0.0 <= v < 1.0:
            raise ValueError(f"Scale needs 0 <= c < 1, got {v}")
        return v / (1.0 - v)

    def bounds(self) -> tuple[float, float]:
        lo, hi = self.c.bounds()
        return (lo / (1.0 - lo), hi / (1.0 - hi) if hi < 1 else math.inf)

    def __str__(self) -> str:
        return f"Scale({self.c})"


@dataclass(frozen=True)
class Normal(Schedule):
    """``Normal(c)``: ``|N(0, 1)| · c``, a fresh half-normal sample at every query."""

    c: Schedule
    random: ClassVar[bool] = True

    def value(self, time: float, rng: random.Random | None = None) -> float:
        if rng is None:
            raise ValueError("Normal(...) draws random numbers: pass an explicit rng")
        return abs(rng.gauss(0.0, 1.0)) * self.c.value(time, rng)

    def bounds(self) -> tuple[float, float]:
        lo, hi = self.c.bounds()
        return (0.0 if lo >= 0 else -math.inf, 0.0 if hi <= 0 else math.inf)

    def __str__(self) -> str:
        return f"Normal({self.c})"


@dataclass(frozen=True)
class Clip(Schedule):
    """``Clip(c, l, u)``: ``c`` clamped to ``[l, u]`` (all three may be schedules)."""

    c: Schedule
    low: Schedule
    high: Schedule

    @property
    def random(self) -> bool:  # type: ignore[override]
        return self.c.random or self.low.random or self.high.random

    def value(self, time: float, rng: random.Random | None = None) -> float:
        return min(max(self.c.value(time, rng), self.low.value(time, rng)), self.high.value(time, rng))

    def bounds(self) -> tuple[float, float]:
        (cl, ch), (ll, lh), (ul, uh) = self.c.bounds(), self.low.bounds(), self.high.bounds()
        return (min(max(cl, ll), ul), min(max(ch, lh), uh))

    def __str__(self) -> str:
        return f"Clip({self.c}, {self.low}, {self.high})"


@dataclass(frozen=True)
class Complement(Schedule):
    """``Complement(c)``: ``1 − c`` for ``0 ≤ c ≤ 1`` (used by LinMix)."""

    c: Schedule

    @property
    def random(self) -> bool:  # type: ignore[override]
        return self.c.random

    def value(self, time: float, rng: random.Random | None = None) -> float:
        v = self.c.value(time, rng)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"Complement needs 0 <= c <= 1, got {v}")
        return 1.0 - v

    def bounds(self) -> tuple[float, float]:
        lo, hi = self.c.bounds()
        return (1.0 - hi, 1.0 - lo)

    def __str__(self) -> str:
        return f"Complement({self.c})"


def as_schedule(v: float | Schedule) -> Schedule:
    """Wrap a plain number as :class:`Const`."""
    return v if isinstance(v, Schedule) else Const(float(v))


# --------------------------------------------------------------------------- the catalog


@dataclass(frozen=True)
class SParam:
    """A schedule argument: ``kind`` is ``number``, ``schedule`` (number or schedule) or ``bool``."""

    name: str
    kind: str
    default: Any = None
    required: bool = True


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    params: tuple[SParam, ...]
    build: Callable[..., Schedule]
    doc: str


_LIN = (SParam("start", "number"), SParam("end", "number"), SParam("steps", "number"),
        SParam("initial", "number", 0.0, False), SParam("quant", "bool", False, False))

SCHEDULES: dict[str, ScheduleSpec] = {
    s.name: s
    for s in (
        ScheduleSpec("Const", (SParam("c", "number"),), Const, "a constant"),
        ScheduleSpec("Lin", _LIN, Lin, "linear ramp from start to end over steps epochs after initial"),
        ScheduleSpec("Smoothed", (*_LIN[:4], SParam("mid", "number", 0.25, False)), Smoothed,
                     "CROWN-IBP's smoothed ramp: quartic, then linear, from start to end over steps epochs"),
        ScheduleSpec("Until", (SParam("thresh", "number"), SParam("a", "schedule"), SParam("b", "schedule")),
                     Until, "a until thresh epochs, then b (with time restarted)"),
        ScheduleSpec("Scale", (SParam("c", "schedule"),), Scale, "c / (1 - c)"),
        ScheduleSpec("MixLin", _LIN, lambda *a: Scale(Lin(*a)), "Scale(Lin(...))"),
        ScheduleSpec("Normal", (SParam("c", "schedule"),), Normal, "|N(0,1)| * c (random)"),
        ScheduleSpec("Clip", (SParam("c", "schedule"), SParam("l", "schedule"), SParam("u", "schedule")),
                     Clip, "c clamped to [l, u]"),
        ScheduleSpec("Complement", (SParam("c", "schedule"),), Complement, "1 - c"),
    )
}


def schedule_slots(spec: ScheduleSpec) -> list[Slot]:
    """The argument slots of a schedule, for :func:`absnet.grammar.evaluate.bind_args`."""
    return [Slot(p.name, p.required, default_text=None if p.required else describe(p.default))
            for p in spec.params]


def resolve_schedule(expr: ast.Expr, env: Mapping[str, Any] | None = None, where: str = "") -> Schedule:
    """Resolve a schedule call (or a plain number, giving :class:`Const`) to a :class:`Schedule`.

    Args:
        expr: usually an :class:`ast.Call` such as ``Lin(0, 1, 10)``; a number expression is allowed.
        env: parameter values that names in the arguments refer to.
        where: what ``env`` belongs to, for messages about unknown names.

    Returns:
        The schedule, or :data:`absnet.grammar.evaluate.UNKNOWN` if an argument is not known yet.

    Raises:
        AbsnetError: every problem found: E201 unknown schedule, E202/E204/E205/E208/E209 argument
        binding, E206 wrong value, E207 unknown name.
    """
    env = env or {}
    if not isinstance(expr, ast.Call):
        v = evaluate(expr, env, where)
        if v is UNKNOWN:
            return UNKNOWN
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise AbsnetError(Diagnostic(
                "E206", f"expected a number or a schedule such as Lin(0, 1, 10), got {describe(v)}",
                expr.span,
            ))
        return Const(float(v))
    spec = SCHEDULES.get(expr.name)
    if spec is None:
        raise AbsnetError(Diagnostic(
            "E201", f"unknown schedule '{expr.name}'", expr.name_span,
            notes=(f"schedules: {', '.join(SCHEDULES)}",), help=did_you_mean(expr.name, SCHEDULES),
        ))
    bound, diags = bind_args(expr, schedule_slots(spec))
    values: list[Any] = []
    unknown = False
    for p in spec.params:
        arg = bound.get(p.name)
        if arg is None:
            values.append(p.default)
            continue
        try:
            v = _arg_value(spec.name, p, arg.value, env, where)
        except AbsnetError as e:
            diags.extend(e.diagnostics)
            continue
        unknown = unknown or v is UNKNOWN
        values.append(v)
    if diags:
        raise AbsnetError(diags)
    if unknown:
        return UNKNOWN
    _check_ranges(spec.name, values, expr.span)
    return spec.build(*values)


def _arg_value(name: str, p: SParam, expr: ast.Expr, env: Mapping[str, Any], where: str) -> Any:
    if p.kind == "schedule":
        return resolve_schedule(expr, env, where)
    if isinstance(expr, ast.Call):
        raise AbsnetError(Diagnostic(
            "E206", f"argument '{p.name}' of {name} expects a {p.kind}, not a call to '{expr.name}'",
            expr.span,
            help="only the arguments of Until, Scale, Normal, Clip and Complement may be schedules",
        ))
    v = evaluate(expr, env, where)
    if v is UNKNOWN:
        return v
    if p.kind == "bool" and not isinstance(v, bool):
        raise AbsnetError(Diagnostic(
            "E206", f"argument '{p.name}' of {name} expects true or false, got {describe(v)}", expr.span,
        ))
    if p.kind == "number" and (isinstance(v, bool) or not isinstance(v, int | float)):
        raise AbsnetError(Diagnostic(
            "E206", f"argument '{p.name}' of {name} expects a number, got {describe(v)}", expr.span,
        ))
    return float(v) if p.kind == "number" else v


def _check_ranges(name: str, values: list[Any], span: Span) -> None:
    if name == "Smoothed" and not 0 <= values[4] < 1:
        raise AbsnetError(Diagnostic("E206", f"Smoothed needs 0 <= mid < 1, got {_num(values[4])}", span))
    if name in ("Lin", "MixLin", "Smoothed") and values[2] <= 0:
        raise AbsnetError(Diagnostic("E206", f"{name} needs steps > 0, got {_num(values[2])}", span))
    if name in ("Scale", "MixLin", "Complement"):
        inner = Lin(*values) if name == "MixLin" else values[0]
        lo, hi = inner.bounds()
        ok = 0 <= lo and (hi < 1 if name != "Complement" else hi <= 1)
        if not ok:
            want = "0 <= c <= 1" if name == "Complement" else "0 <= c < 1"
            raise AbsnetError(Diagnostic(
                "E206", f"{name} needs {want}, but its argument ranges over [{_num(lo)}, {_num(hi)}]", span,
            ))
