"""VNN-LIB 1.0 properties: a hand-written reader and writers (no eval).

VNN-LIB is a subset of SMT-LIB: ``(declare-const X_i Real)`` for the flat inputs,
``(declare-const Y_j Real)`` for the flat outputs, and ``(assert F)`` where F is a comparison
(``<= >= < > =``) of linear terms (numbers, variables, ``(+ ...)``, ``(- ...)``, ``(* c t)``,
``(/ t c)``) or an ``and``/``or`` of such formulas; ``;`` starts a comment. The asserts describe a
*counterexample*: the property holds (``unsat``) when no input of the box reaches the output region.

Rules of the reading:

- The conjunction of all asserts is put in disjunctive normal form. In each conjunct, comparisons
  over one input (``c·X_i ≤ b``) are bounds of the input box (the tightest wins), comparisons
  over outputs only are rows ``C·y ≤ d`` of the unsafe region; anything else (two inputs, inputs
  mixed with outputs, a product of variables) is E504.
- Conjuncts with the same input box are grouped into one :class:`Case`: the box and the
  disjunction of their output regions. Every input of every case needs both bounds (E504);
  a case whose box is empty is dropped (no input, nothing to reach).
- Strict comparisons are kept as ``strict`` rows: bounds treat them as ``≤`` (a superset of the
  unsafe region, so exclusion stays sound), counterexamples must satisfy them strictly.
- Every error is E504 at ``file:line:col``: an unknown variable or command, a non-linear term,
  unbalanced parentheses, an input without both bounds, a bad number.

>>> p = parse_vnnlib('''(declare-const X_0 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)
... (assert (>= X_0 -1)) (assert (<= X_0 1)) (assert (<= Y_0 Y_1))''')
>>> p.cases[0].lower.tolist(), p.cases[0].upper.tolist(), p.cases[0].disjuncts[0].C.tolist()
([-1.0], [1.0], [[1.0, -1.0]])
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from absnet.diagnostics import AbsnetError, Diagnostic, SourceMap, Span

MAX_CONJUNCTS = 100_000
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_VAR = re.compile(r"([XY])_(\d+)$")
_TOKEN = re.compile(r";.*|[()]|[^\s();]+")
_IGNORED = {"set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"}


@dataclass(frozen=True)
class Disjunct:
    """One conjunction of the unsafe output region: ``C·y ≤ d`` row by row (``<`` where ``strict``)."""

    C: np.ndarray  # (m, outputs) float64
    d: np.ndarray  # (m,)
    strict: np.ndarray  # (m,) bool


@dataclass(frozen=True)
class Case:
    """An input box and the disjunction of unsafe output regions checked over it."""

    lower: np.ndarray  # (inputs,) float64
    upper: np.ndarray
    disjuncts: tuple[Disjunct, ...]


@dataclass(frozen=True)
class Property:
    """A VNN-LIB property: it holds when no case's box reaches any of its disjuncts."""

    num_inputs: int
    num_outputs: int
    cases: tuple[Case, ...]
    file: str = "<string>"


@dataclass(frozen=True)
class _Tok:
    text: str
    span: Span


@dataclass(frozen=True)
class _Expr:
    """An S-expression: an atom (``items`` None) or a list."""

    span: Span
    atom: str | None = None
    items: tuple[_Expr, ...] | None = None


def _error(message: str, span: Span | None, help: str | None = None) -> AbsnetError:
    return AbsnetError(Diagnostic("E504", message, span, help=help))


def _tokens(text: str, file: str) -> list[_Tok]:
    out: list[_Tok] = []
    for ln, line in enumerate(text.splitlines(), 1):
        for m in _TOKEN.finditer(line):
            if m.group()[0] == ";":
                break
            out.append(_Tok(m.group(), Span(file, ln, m.start() + 1, ln, m.end() + 1)))
    return out


def _sexprs(toks: list[_Tok], file: str, text: str) -> list[_Expr]:
    stack: list[tuple[Span, list[_Expr]]] = []
    top: list[_Expr] = []
    for t in toks:
        if t.text == "(":
            stack.append((t.span, []))
        elif t.text == ")":
            if not stack:
                raise _error("unbalanced parentheses: ')' closes nothing", t.span, help="remove the extra ')'")
            start, items = stack.pop()
            e = _Expr(Span(file, start.line, start.column, t.span.line, t.span.column + 1), items=tuple(items))
            (stack[-1][1] if stack else top).append(e)
        else:
            (stack[-1][1] if stack else top).append(_Expr(t.span, atom=t.text))
    if stack:
        raise _error("unbalanced parentheses: '(' is never closed", stack[-1][0],
                     help=f"add ')' (the file ends at line {len(text.splitlines())})")
    return top


# A linear form: ({("X"|"Y", index): coefficient}, constant)
_Lin = tuple[dict[tuple[str, int], float], float]
# An atom: linear form ≤ 0 (strict: < 0), with its span
_Atom = tuple[dict[tuple[str, int], float], float, bool, Span]


class _Reader:
    def __init__(self, file: str) -> None:
        self.file = file
        self.declared: dict[str, tuple[str, int]] = {}
        self.spans: dict[tuple[str, int], Span] = {}

    def command(self, e: _Expr) -> list[list[list[_Atom]]] | None:
        """A declaration (None) or an assert (its formula in DNF: a list of conjunctions)."""
        if e.items is None:
            raise _error(f"expected a command in parentheses, got '{e.atom}'", e.span,
                         help="write (declare-const X_0 Real) or (assert ...)")
        if not e.items or e.items[0].atom is None:
            raise _error("expected a command name after '('", e.span)
        head = e.items[0].atom
        if head == "declare-const":
            if len(e.items) != 3 or e.items[1].atom is None or e.items[2].atom is None:
                raise _error("expected (declare-const NAME Real)", e.span)
            name, kind = e.items[1].atom, e.items[2].atom
            m = _VAR.match(name)
            if m is None:
                raise _error(f"unknown variable '{name}': VNN-LIB names inputs X_i and outputs Y_j", e.items[1].span)
            if kind != "Real":
                raise _error(f"variable {name} has sort '{kind}', expected Real", e.items[2].span)
            if name in self.declared:
                raise _error(f"variable {name} is declared twice", e.items[1].span)
            self.declared[name] = (m.group(1), int(m.group(2)))
            self.spans[self.declared[name]] = e.span
            return None
        if head == "assert":
            if len(e.items) != 2:
                raise _error("expected (assert FORMULA) with one formula", e.span)
            return self.formula(e.items[1])
        if head in _IGNORED:
            return None
        raise _error(f"unknown command '{head}'", e.items[0].span,
                     help="VNN-LIB files hold declare-const and assert commands")

    def formula(self, e: _Expr) -> list[list[_Atom]]:
        if e.items is None or not e.items or e.items[0].atom is None:
            raise _error("expected a formula: (<= a b), (>= a b), (and ...) or (or ...)", e.span)
        head, args = e.items[0].atom, e.items[1:]
        if head in ("and", "or"):
            if not args:
                raise _error(f"({head}) needs at least one formula", e.span)
            parts = [self.formula(a) for a in args]
            if head == "or":
                return [c for p in parts for c in p]
            out: list[list[_Atom]] = [[]]
            for p in parts:
                if len(out) * len(p) > MAX_CONJUNCTS:
                    raise _error(f"the formula expands to more than {MAX_CONJUNCTS} conjunctions", e.span)
                out = [a + b for a in out for b in p]
            return out
        if head not in ("<=", ">=", "<", ">", "="):
            raise _error(f"unknown relation '{head}'", e.items[0].span,
                         help="use <=, >=, <, >, =, and, or (VNN-LIB has no 'not')")
        if len(args) != 2:
            raise _error(f"({head} a b) compares exactly two terms, got {len(args)}", e.span)
        (ca, ka), (cb, kb) = self.term(args[0]), self.term(args[1])
        diff = _sub(ca, ka, cb, kb)  # a − b
        neg = ({k: -v for k, v in diff[0].items()}, -diff[1])
        if head in ("<=", "<"):
            return [[(diff[0], diff[1], head == "<", e.span)]]
        if head in (">=", ">"):
            return [[(neg[0], neg[1], head == ">", e.span)]]
        return [[(diff[0], diff[1], False, e.span), (neg[0], neg[1], False, e.span)]]

    def term(self, e: _Expr) -> _Lin:
        if e.atom is not None:
            if _NUMBER.match(e.atom):
                return {}, float(e.atom)
            if e.atom not in self.declared:
                raise _error(f"unknown variable '{e.atom}'", e.span,
                             help=f"declare it first: (declare-const {e.atom} Real)" if _VAR.match(e.atom) else None)
            return {self.declared[e.atom]: 1.0}, 0.0
        if not e.items or e.items[0].atom is None:
            raise _error("expected a term: a number, a variable, (+ ...), (- ...), (* c t) or (/ t c)", e.span)
        head, args = e.items[0].atom, [self.term(a) for a in e.items[1:]]
        if not args:
            raise _error(f"({head}) needs arguments", e.span)
        if head == "+":
            acc: _Lin = ({}, 0.0)
            for c, k in args:
                acc = _sub(acc[0], acc[1], {v: -w for v, w in c.items()}, -k)
            return acc
        if head == "-":
            if len(args) == 1:
                return {v: -w for v, w in args[0][0].items()}, -args[0][1]
            acc = args[0]
            for c, k in args[1:]:
                acc = _sub(acc[0], acc[1], c, k)
            return acc
        if head == "*":
            varying = [a for a in args if a[0]]
            if len(varying) > 1:
                raise _error("non-linear term: a product of variables", e.span,
                             help="VNN-LIB properties are linear: multiply a variable by numbers only")
            scale = float(np.prod([k for c, k in args if not c]))
            if not varying:
                return {}, scale
            c, k = varying[0]
            return {v: w * scale for v, w in c.items()}, k * scale
        if head == "/":
            if len(args) != 2 or args[1][0] or args[1][1] == 0:
                raise _error("(/ t c) divides by a non-zero number only", e.span,
                             help="VNN-LIB properties are linear")
            c, k = args[0]
            return {v: w / args[1][1] for v, w in c.items()}, k / args[1][1]
        raise _error(f"unknown function '{head}'", e.items[0].span, help="terms use +, -, * and /")


def _sub(ca: dict, ka: float, cb: dict, kb: float) -> _Lin:
    out = dict(ca)
    for v, w in cb.items():
        out[v] = out.get(v, 0.0) - w
    return out, ka - kb


def parse_vnnlib(text: str, file: str = "<string>") -> Property:
    """Read a VNN-LIB property from its text (see the module rules); E504 at ``file:line:col`` on errors."""
    try:
        return _parse(text, file)
    except AbsnetError as e:
        sources = SourceMap()
        sources.add(file, text)
        raise e.with_sources(sources) from None


def read_vnnlib(path: str | os.PathLike[str]) -> Property:
    """Read a ``.vnnlib`` file (see :func:`parse_vnnlib`); E604 when it cannot be read."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise AbsnetError(Diagnostic("E604", f"cannot read {path}: {getattr(e, 'strerror', None) or e}")) from None
    return parse_vnnlib(text, str(path))


def _parse(text: str, file: str) -> Property:
    reader = _Reader(file)
    common: list[_Atom] = []  # atoms of asserts without a disjunction: shared by every conjunction
    dnf: list[list[_Atom]] = [[]]
    for e in _sexprs(_tokens(text, file), file, text):
        got = reader.command(e)
        if got is None:
            continue
        if len(got) == 1:
            common += got[0]
            continue
        if len(dnf) * len(got) > MAX_CONJUNCTS:
            raise _error(f"the asserts expand to more than {MAX_CONJUNCTS} conjunctions", e.span)
        dnf = [a + b for a in dnf for b in got]
    dnf = [common + conj for conj in dnf]
    n_in, n_out = _count(reader, "X", file), _count(reader, "Y", file)
    groups: dict[tuple[bytes, bytes], list[Disjunct]] = {}
    boxes: dict[tuple[bytes, bytes], tuple[np.ndarray, np.ndarray]] = {}
    for conj in dnf:
        lo, hi = np.full(n_in, -np.inf), np.full(n_in, np.inf)
        rows: list[tuple[np.ndarray, float, bool]] = []
        for coefs, const, strict, span in conj:
            coefs = {k: v for k, v in coefs.items() if v != 0.0}
            xs = [k for k in coefs if k[0] == "X"]
            if xs and len(coefs) > 1:
                raise _error("only bounds of single inputs are supported: this constraint "
                             + ("mixes inputs and outputs" if len(xs) < len(coefs) else "relates several inputs"),
                             span, help="write input constraints as (<= X_i c) and (>= X_i c)")
            if xs:
                (_, i), a = xs[0], coefs[xs[0]]
                b = -const / a + 0.0  # a·x + const ≤ 0
                if a > 0:
                    hi[i] = min(hi[i], b)
                else:
                    lo[i] = max(lo[i], b)
                continue
            row = np.zeros(n_out)
            for (_, j), w in coefs.items():
                row[j] = w
            rows.append((row, -const + 0.0, strict))
        if (lo > hi).any():
            continue  # an empty box: this conjunction has no input at all
        missing = np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)))
        if missing.size:
            i = int(missing[0])
            side = "lower" if not np.isfinite(lo[i]) else "upper"
            raise _error(f"input X_{i} has no {side} bound" + (f" (nor {missing.size - 1} other inputs)"
                                                                if missing.size > 1 else ""),
                         reader.spans[("X", i)], help=f"add (assert ({'>=' if side == 'lower' else '<='} X_{i} VALUE))")
        key = (lo.tobytes(), hi.tobytes())
        boxes[key] = (lo, hi)
        C = np.array([r[0] for r in rows]).reshape(len(rows), n_out)
        groups.setdefault(key, []).append(Disjunct(C, np.array([r[1] for r in rows], dtype=np.float64),
                                                   np.array([r[2] for r in rows], dtype=bool)))
    cases = tuple(Case(boxes[k][0], boxes[k][1], tuple(ds)) for k, ds in groups.items())
    return Property(n_in, n_out, cases, file)


def _count(reader: _Reader, kind: str, file: str) -> int:
    idx = sorted(i for k, i in reader.declared.values() if k == kind)
    if not idx:
        raise _error(f"no {'input X_i' if kind == 'X' else 'output Y_j'} is declared", Span(file, 1, 1),
                     help=f"add (declare-const {kind}_0 Real)")
    if idx != list(range(len(idx))):
        gap = next(i for i, v in enumerate(idx) if v != i)
        raise _error(f"{kind}_{gap} is not declared, but {kind}_{idx[-1]} is: indices must be 0..n-1",
                     reader.spans[(kind, idx[-1])], help=f"add (declare-const {kind}_{gap} Real)")
    return len(idx)


# --------------------------------------------------------------------------- writing


def _num(v: float) -> str:
    """A float64 written so it reads back exactly: the shortest repr, no exponent, a plain "-" for
    negatives (as VNN-COMP's files write them; strict SMT-LIB would want (- c))."""
    v = float(v) + 0.0  # no "-0.0"
    r = repr(v)
    if "e" in r or "E" in r:
        r = np.format_float_positional(v, unique=True, trim="0")
    return r


def format_property(prop: Property) -> str:
    """The VNN-LIB text of a property (declarations, the box, the output region)."""
    lines = ["; VNN-LIB 1.0 property written by absnet"]
    lines += [f"(declare-const X_{i} Real)" for i in range(prop.num_inputs)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(prop.num_outputs)]

    def box(c: Case, pad: str) -> list[str]:
        return [f"{pad}(>= X_{i} {_num(lo)}) (<= X_{i} {_num(hi)})" if pad else
                f"(assert (>= X_{i} {_num(lo)}))\n(assert (<= X_{i} {_num(hi)}))"
                for i, (lo, hi) in enumerate(zip(c.lower, c.upper))]

    def region(ds: Sequence[Disjunct]) -> list[str]:
        return [" (and " + " ".join(_row(r, k, s) for r, k, s in zip(dj.C, dj.d, dj.strict)) + ")" for dj in ds]

    if len(prop.cases) == 1:
        c = prop.cases[0]
        lines += box(c, "")
        lines += ["(assert (or", *region(c.disjuncts), "))"]
    else:
        lines.append("(assert (or")
        for c in prop.cases:
            lines += [" (and"] + box(c, "  ") + ["  (or"] + ["  " + r for r in region(c.disjuncts)] + ["  ))"]
        lines.append("))")
    return "\n".join(lines) + "\n"


def _row(row: np.ndarray, d: float, strict: bool) -> str:
    terms = [f"(* {_num(w)} Y_{j})" if w != 1.0 else f"Y_{j}" for j, w in enumerate(row) if w != 0.0]
    lhs = terms[0] if len(terms) == 1 else f"(+ {' '.join(terms)})" if terms else "0.0"
    return f"({'<' if strict else '<='} {lhs} {_num(d)})"


def write_vnnlib(path: str | os.PathLike[str], prop: Property) -> Path:
    """Write a property as VNN-LIB (readable back by :func:`read_vnnlib` to the same property)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(format_property(prop))
    return p


def robustness_property(x: Any, label: int, eps: float, num_classes: int,
                        input_range: tuple[float, float] | None = (0.0, 1.0)) -> Property:
    """The L∞ robustness property around ``x``: the box is the ε-ball ∩ ``input_range``, the unsafe
    region is OR over j ≠ label of ``Y_j ≥ Y_label`` (as VNN-COMP's mnistfc/cifar files write it)."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    lo, hi = flat - eps, flat + eps
    if input_range is not None:
        lo, hi = np.clip(lo, *input_range) + 0.0, np.clip(hi, *input_range) + 0.0
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} is not a class of {num_classes}")
    ds = []
    for j in itertools.chain(range(label), range(label + 1, num_classes)):
        row = np.zeros((1, num_classes))
        row[0, label], row[0, j] = 1.0, -1.0  # Y_label − Y_j ≤ 0
        ds.append(Disjunct(row, np.zeros(1), np.zeros(1, dtype=bool)))
    return Property(flat.size, num_classes, (Case(lo, hi, tuple(ds)),))


def write_robustness(path: str | os.PathLike[str], x: Any, label: int, eps: float, num_classes: int,
                     input_range: tuple[float, float] | None = (0.0, 1.0)) -> Path:
    """Write the L∞ robustness property of :func:`robustness_property` to ``path``.

    >>> import tempfile, numpy as np
    >>> p = write_robustness(tempfile.mkdtemp() + "/p.vnnlib", np.array([0.5, 0.0]), 1, 0.1, 3)
    >>> c = read_vnnlib(p).cases[0]
    >>> c.lower.tolist(), c.upper.tolist(), len(c.disjuncts)
    ([0.4, 0.0], [0.6, 0.1], 2)
    """
    return write_vnnlib(path, robustness_property(x, label, eps, num_classes, input_range))


__all__ = ["Case", "Disjunct", "Property", "format_property", "parse_vnnlib", "read_vnnlib", "robustness_property",
           "write_robustness", "write_vnnlib"]
