"""Evaluate expressions against parameter values and bind call arguments to named slots.

No Python ``eval``: values are computed by walking the AST. Arithmetic is ``+ - * / //`` on
numbers only. :data:`UNKNOWN` stands for a value not known while checking a definition on its own
(a block's parameters, a network parameter without a default); it propagates through arithmetic
so every other problem can still be reported.

Codes: E202 unknown keyword argument, E204 argument given twice, E205 missing required argument,
E206 wrong value, E207 unknown name, E208 too many positional arguments, E209 positional argument
after a keyword argument, E213 bad arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic, did_you_mean
from absnet.grammar import ast


class _Unknown:
    """A value not known while checking (see module docstring)."""

    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN: Any = _Unknown()


def contains_unknown(value: Any) -> bool:
    """True if ``value`` is or contains :data:`UNKNOWN`."""
    if value is UNKNOWN:
        return True
    if isinstance(value, list | tuple):
        return any(contains_unknown(v) for v in value)
    return False


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def describe(v: Any) -> str:
    """A value as the user would write it, for messages."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(describe(x) for x in v) + "]"
    if isinstance(v, tuple):
        return "(" + ", ".join(describe(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


def evaluate(expr: ast.Expr, env: Mapping[str, Any], where: str = "") -> Any:
    """Compute the value of ``expr`` with parameter values ``env``.

    Args:
        expr: the expression.
        env: parameter name → value (may hold :data:`UNKNOWN`).
        where: what the names belong to, for the E207 note (e.g. ``"network FFNN"``).

    Returns:
        An int, float, str, bool, None, list or tuple.

    Raises:
        AbsnetError: E207 for an unknown name, E206 for a call in a value position, E213 for bad
        arithmetic.
    """
    if isinstance(expr, ast.Num | ast.Str | ast.Bool):
        return expr.value
    if isinstance(expr, ast.NoneLit):
        return None
    if isinstance(expr, ast.Name):
        if expr.name in env:
            return env[expr.name]
        raise AbsnetError(unknown_name(expr, env, where))
    if isinstance(expr, ast.ListExpr):
        return [evaluate(e, env, where) for e in expr.items]
    if isinstance(expr, ast.TupleExpr):
        return tuple(evaluate(e, env, where) for e in expr.items)
    if isinstance(expr, ast.Neg):
        v = evaluate(expr.operand, env, where)
        if v is UNKNOWN:
            return UNKNOWN
        if not _is_num(v):
            raise AbsnetError(Diagnostic("E213", f"cannot negate {describe(v)}", expr.span))
        return -v
    if isinstance(expr, ast.BinOp):
        return _binop(expr, evaluate(expr.left, env, where), evaluate(expr.right, env, where))
    if isinstance(expr, ast.Call):
        raise AbsnetError(
            Diagnostic(
                "E206", f"a call to '{expr.name}' is not a value here", expr.span,
                help="only schedule-valued arguments take calls, e.g. DeepLoss(bw=Lin(0, 1, 10))",
            )
        )
    raise AssertionError(f"not an expression: {expr!r}")


def _binop(expr: ast.BinOp, a: Any, b: Any) -> Any:
    if a is UNKNOWN or b is UNKNOWN:
        return UNKNOWN
    if not (_is_num(a) and _is_num(b)):
        raise AbsnetError(
            Diagnostic(
                "E213", f"'{expr.op}' works on numbers, not on {describe(a)} and {describe(b)}", expr.span,
            )
        )
    if expr.op in ("/", "//") and b == 0:
        raise AbsnetError(Diagnostic("E213", "division by zero", expr.span))
    if expr.op == "+":
        return a + b
    if expr.op == "-":
        return a - b
    if expr.op == "*":
        return a * b
    if expr.op == "/":
        return a / b
    return a // b


def unknown_name(expr: ast.Name, env: Mapping[str, Any], where: str = "") -> Diagnostic:
    """E207 for a name that is not a parameter here."""
    names = sorted(env)
    owner = where or "this definition"
    if names:
        note = f"the names visible here are the parameters of {owner}: {', '.join(names)}"
    else:
        note = f"{owner} has no parameters"
    if expr.name in ("True", "False", "None"):
        help_ = f"write {expr.name.lower()} in lower case"
    else:
        help_ = did_you_mean(expr.name, names) or "strings are written in double quotes"
    return Diagnostic("E207", f"unknown name '{expr.name}'", expr.span, notes=(note,), help=help_)


# --------------------------------------------------------------------------- argument binding


@dataclass(frozen=True)
class Slot:
    """A named argument a call may bind: positional order is the order of the slots."""

    name: str
    required: bool = True
    aliases: tuple[str, ...] = ()
    default_text: str | None = None

    def show(self) -> str:
        s = self.name
        if self.aliases:
            s += f" (or {', '.join(self.aliases)})"
        if not self.required and self.default_text is not None:
            s += f"={self.default_text}"
        return s


def signature(slots: Sequence[Slot]) -> str:
    """``"out_features, bias=true"`` for messages."""
    return ", ".join(s.show() for s in slots) if slots else "no arguments"


def bind_args(
    call: ast.Call, slots: Sequence[Slot], what: str | None = None
) -> tuple[dict[str, ast.Arg], list[Diagnostic]]:
    """Bind ``call``'s arguments to ``slots``: positional ones in order, keywords by name or alias.

    Args:
        call: the call whose arguments are bound.
        slots: the parameters, in positional order.
        what: how to name the callee in messages (default: the call's name).

    Returns:
        The bound arguments (slot name → argument) and the problems found (E202, E204, E205, E208,
        E209). Problems never stop the binding, so every one is reported.
    """
    what = what or call.name
    index: dict[str, Slot] = {}
    for s in slots:
        index[s.name] = s
        for a in s.aliases:
            index[a] = s
    bound: dict[str, ast.Arg] = {}
    diags: list[Diagnostic] = []
    sig_note = f"{what} takes: {signature(slots)}"
    seen_keyword = False
    pos = 0
    unknown: list[str] = []
    for arg in call.args:
        if arg.name is None:
            if seen_keyword:
                diags.append(Diagnostic(
                    "E209", "positional argument after a keyword argument", arg.span,
                    help="put positional arguments first, or name this one",
                ))
                continue
            if pos >= len(slots):
                if pos == len(slots):  # report the first extra argument only
                    given = len(call.positional)
                    many = "no positional arguments" if not slots else (
                        f"at most {len(slots)} positional argument{'s' if len(slots) > 1 else ''}"
                    )
                    were = "was" if given == 1 else "were"
                    diags.append(Diagnostic(
                        "E208", f"{what} takes {many}, but {given} {were} given", arg.span, notes=(sig_note,),
                    ))
                pos += 1
                continue
            slot = slots[pos]
            pos += 1
        else:
            seen_keyword = True
            slot = index.get(arg.name)
            if slot is None:
                unknown.append(arg.name)
                diags.append(Diagnostic(
                    "E202", f"{what} has no argument '{arg.name}'", arg.name_span or arg.span,
                    notes=(sig_note,), help=did_you_mean(arg.name, list(index)),
                ))
                continue
        if slot.name in bound:
            first = bound[slot.name]
            notes = [f"first given at {first.span}"]
            if arg.name is not None and arg.name != slot.name:
                notes.append(f"'{arg.name}' is another name for '{slot.name}'")
            diags.append(Diagnostic(
                "E204", f"argument '{slot.name}' of {what} is given twice", arg.span, notes=tuple(notes),
                help="remove one of them",
            ))
            continue
        bound[slot.name] = arg
    for s in slots:
        # a misspelled keyword already explains why this one is missing
        if any(did_you_mean(u, [s.name, *s.aliases]) for u in unknown):
            continue
        if s.required and s.name not in bound:
            diags.append(Diagnostic(
                "E205", f"{what} is missing its required argument '{s.name}'", call.span,
                notes=(sig_note,), help=f"pass it by name, e.g. {call.name}({s.name}=...)",
            ))
    return bound, diags
