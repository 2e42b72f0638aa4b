"""The absnet syntax tree: frozen dataclasses, each with the :class:`Span` it was parsed from.

Expressions (:data:`Expr`) are values as written; they are evaluated against the parameters of a
network or block by :mod:`absnet.grammar.evaluate`. Statements (:data:`Stmt`) form network and block
bodies. A :class:`Module` is one parsed file plus the modules it imports.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic, SourceMap, Span

# --------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Num:
    """An integer or floating-point literal (a leading minus is folded in)."""

    value: int | float
    span: Span


@dataclass(frozen=True)
class Str:
    value: str
    span: Span


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True)
class NoneLit:
    span: Span


@dataclass(frozen=True)
class Name:
    """A bare name: a parameter reference (or a call without arguments where one is expected)."""

    name: str
    span: Span


@dataclass(frozen=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class TupleExpr:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class BinOp:
    """``left op right`` with ``op`` one of ``+ - * / //``."""

    op: str
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Arg:
    """One call argument; ``name`` is None for a positional one."""

    name: str | None
    value: Expr
    span: Span
    name_span: Span | None = None


@dataclass(frozen=True)
class Call:
    """``Name(args)``: a layer, directive, block, schedule, goal or dataset."""

    name: str
    args: tuple[Arg, ...]
    span: Span
    name_span: Span

    @property
    def positional(self) -> tuple[Expr, ...]:
        return tuple(a.value for a in self.args if a.name is None)

    @property
    def keywords(self) -> dict[str, Expr]:
        return {a.name: a.value for a in self.args if a.name is not None}


Expr = Num | Str | Bool | NoneLit | Name | ListExpr | TupleExpr | BinOp | Neg | Call

# --------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class InputStmt:
    """``input SHAPE range [LOW, HIGH]``; ``range`` is None when omitted."""

    shape: Expr
    range: Expr | None
    span: Span


@dataclass(frozen=True)
class LayerStmt:
    """A layer, directive or block call."""

    call: Call
    span: Span


@dataclass(frozen=True)
class RepeatStmt:
    count: Expr
    body: tuple[Stmt, ...]
    span: Span


@dataclass(frozen=True)
class Branch:
    body: tuple[Stmt, ...]
    span: Span


@dataclass(frozen=True)
class CombineStmt:
    """``Add { branch {...} ... }``: ``call`` is the head (``Add`` or ``Concat(axis=1)``)."""

    call: Call
    branches: tuple[Branch, ...]
    span: Span


Stmt = InputStmt | LayerStmt | RepeatStmt | CombineStmt

# --------------------------------------------------------------------------- definitions


@dataclass(frozen=True)
class Param:
    """A network or block parameter; ``default`` is None when the parameter is required."""

    name: str
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class NetworkDef:
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class BlockDef:
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Import:
    """``import "path"``; the path is relative to the importing file."""

    path: str
    span: Span


@dataclass(frozen=True)
class Setting:
    """One line of a ``train`` block: ``key value, value, ...``."""

    key: str
    values: tuple[Expr, ...]
    span: Span
    key_span: Span


@dataclass(frozen=True)
class TrainDef:
    name: str
    items: tuple[Setting | Import, ...]
    span: Span
    name_span: Span

    @property
    def settings(self) -> tuple[Setting, ...]:
        return tuple(i for i in self.items if isinstance(i, Setting))

    @property
    def imports(self) -> tuple[Import, ...]:
        return tuple(i for i in self.items if isinstance(i, Import))


Item = NetworkDef | BlockDef | TrainDef | Import


@dataclass(frozen=True)
class Module:
    """One parsed file, the modules its imports resolved to, and the text of every file seen."""

    file: str
    items: tuple[Item, ...]
    imports: tuple[Module, ...] = ()
    sources: SourceMap = field(default_factory=SourceMap, compare=False, repr=False)

    def modules(self) -> Iterator[Module]:
        """This module and every module it imports, transitively, imported ones first, each once."""
        seen: set[int] = set()

        def walk(m: Module) -> Iterator[Module]:
            if id(m) in seen:
                return
            seen.add(id(m))
            for sub in m.imports:
                yield from walk(sub)
            yield m

        yield from walk(self)

    def definitions(self, kind: type) -> tuple[dict[str, Any], list[Diagnostic]]:
        """Every ``kind`` item visible here (own and imported) by name, and E211 for duplicates."""
        out: dict[str, Any] = {}
        diags: list[Diagnostic] = []
        for m in self.modules():
            for it in m.items:
                if isinstance(it, kind):
                    prev = out.get(it.name)
                    if prev is not None and prev is not it:
                        diags.append(_duplicate(it, prev))
                        continue
                    out[it.name] = it
        return out, diags

    def _visible(self, kind: type) -> dict[str, Any]:
        out, diags = self.definitions(kind)
        if diags:
            raise AbsnetError(diags, self.sources)
        return out

    def networks(self) -> dict[str, NetworkDef]:
        """Every network visible here (own and imported), by name, in definition order.

        Raises:
            AbsnetError: E211 if two visible networks share a name.
        """
        return self._visible(NetworkDef)

    def blocks(self) -> dict[str, BlockDef]:
        """Every block visible here (own and imported), by name."""
        return self._visible(BlockDef)

    def trains(self) -> dict[str, TrainDef]:
        """Every train block visible here, by name."""
        return self._visible(TrainDef)

    def own(self, kind: type) -> list[Any]:
        """The items of ``kind`` defined in this file itself."""
        return [it for it in self.items if isinstance(it, kind)]


def _duplicate(item: NetworkDef | BlockDef | TrainDef, prev: NetworkDef | BlockDef | TrainDef) -> Diagnostic:
    kind = {NetworkDef: "network", BlockDef: "block", TrainDef: "train"}[type(item)]
    return Diagnostic(
        "E211", f"{kind} '{item.name}' is defined twice", item.name_span,
        notes=(f"first defined at {prev.name_span}",), help=f"rename one of the two {kind}s",
    )
