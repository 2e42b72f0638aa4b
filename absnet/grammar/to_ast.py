"""Turn Lark parse trees into :mod:`absnet.grammar.ast` nodes, giving each node its :class:`Span`."""

from __future__ import annotations

from typing import Any

from lark import Token, Transformer, v_args

from absnet.diagnostics import Span
from absnet.grammar import ast

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0"}


def unquote(text: str) -> str:
    """Decode a quoted string literal (``"..."`` or ``'...'``); only simple escapes, never eval."""
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_number(text: str) -> int | float:
    """``"10"`` → 10, ``"1e-3"`` → 0.001, ``"0.5"`` → 0.5."""
    if text.isdigit():
        return int(text)
    return float(text)


@v_args(meta=True)
class ToAst(Transformer):
    """Lark transformer building the AST; ``file`` names the source in every span."""

    def __init__(self, file: str):
        super().__init__(visit_tokens=False)
        self.file = file

    # ------------------------------------------------------------------ helpers
    def _span(self, meta: Any) -> Span:
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column)

    @staticmethod
    def _join(a: Span, b: Span) -> Span:
        return Span(a.file, a.line, a.column, b.end_line, b.end_column)

    # ------------------------------------------------------------------ top level
    def start(self, meta: Any, items: list) -> tuple:
        return tuple(items)

    def import_(self, meta: Any, c: list) -> ast.Import:
        return ast.Import(unquote(c[0]), self._span(meta))

    def network(self, meta: Any, c: list) -> ast.NetworkDef:
        name, params, body = self._def(c)
        return ast.NetworkDef(str(name), params, body, self._span(meta), self._tok(name))

    def block(self, meta: Any, c: list) -> ast.BlockDef:
        name, params, body = self._def(c)
        return ast.BlockDef(str(name), params, body, self._span(meta), self._tok(name))

    @staticmethod
    def _def(c: list) -> tuple[Token, tuple, tuple]:
        if len(c) == 3:
            return c[0], c[1], c[2]
        return c[0], (), c[1]

    def params(self, meta: Any, c: list) -> tuple:
        return tuple(c)

    def param(self, meta: Any, c: list) -> ast.Param:
        default = c[1] if len(c) > 1 else None
        return ast.Param(str(c[0]), default, self._span(meta))

    def body(self, meta: Any, c: list) -> tuple:
        return tuple(c)

    # ------------------------------------------------------------------ statements
    def input_stmt(self, meta: Any, c: list) -> ast.InputStmt:
        return ast.InputStmt(c[0], c[1] if len(c) > 1 else None, self._span(meta))

    def range_(self, meta: Any, c: list) -> ast.Expr:
        return c[0]

    def repeat_stmt(self, meta: Any, c: list) -> ast.RepeatStmt:
        return ast.RepeatStmt(c[0], c[1], self._span(meta))

    def combine_stmt(self, meta: Any, c: list) -> ast.CombineStmt:
        return ast.CombineStmt(c[0], tuple(c[1:]), self._span(meta))

    def bare_call(self, meta: Any, c: list) -> ast.Call:
        span = self._tok(c[0])
        return ast.Call(str(c[0]), (), span, span)

    def branch(self, meta: Any, c: list) -> ast.Branch:
        return ast.Branch(c[0], self._span(meta))

    def layer_stmt(self, meta: Any, c: list) -> ast.LayerStmt:
        return ast.LayerStmt(c[0], self._span(meta))

    # ------------------------------------------------------------------ train
    def train(self, meta: Any, c: list) -> ast.TrainDef:
        return ast.TrainDef(str(c[0]), tuple(c[1:]), self._span(meta), self._tok(c[0]))

    def setting(self, meta: Any, c: list) -> ast.Setting:
        key: Token = c[0]
        return ast.Setting(str(key), tuple(c[1:]), self._span(meta), self._tok(key))

    def train_key(self, meta: Any, c: list) -> Token:
        return c[0]

    # ------------------------------------------------------------------ expressions
    def number(self, meta: Any, c: list) -> ast.Num:
        return ast.Num(parse_number(str(c[0])), self._span(meta))

    def string(self, meta: Any, c: list) -> ast.Str:
        return ast.Str(unquote(str(c[0])), self._span(meta))

    def true(self, meta: Any, c: list) -> ast.Bool:
        return ast.Bool(True, self._span(meta))

    def false(self, meta: Any, c: list) -> ast.Bool:
        return ast.Bool(False, self._span(meta))

    def none(self, meta: Any, c: list) -> ast.NoneLit:
        return ast.NoneLit(self._span(meta))

    def name(self, meta: Any, c: list) -> ast.Name:
        return ast.Name(str(c[0]), self._span(meta))

    def list_(self, meta: Any, c: list) -> ast.ListExpr:
        return ast.ListExpr(tuple(c), self._span(meta))

    def tuple_(self, meta: Any, c: list) -> ast.TupleExpr:
        return ast.TupleExpr(tuple(c), self._span(meta))

    def call(self, meta: Any, c: list) -> ast.Call:
        name: Token = c[0]
        args = tuple(a if isinstance(a, ast.Arg) else ast.Arg(None, a, a.span) for a in c[1:])
        return ast.Call(str(name), args, self._span(meta), self._tok(name))

    def kwarg(self, meta: Any, c: list) -> ast.Arg:
        return ast.Arg(str(c[0]), c[1], self._span(meta), self._tok(c[0]))

    def _bin(self, op: str, meta: Any, c: list) -> ast.BinOp:
        return ast.BinOp(op, c[0], c[1], self._span(meta))

    def add(self, meta: Any, c: list) -> ast.BinOp:
        return self._bin("+", meta, c)

    def sub(self, meta: Any, c: list) -> ast.BinOp:
        return self._bin("-", meta, c)

    def mul(self, meta: Any, c: list) -> ast.BinOp:
        return self._bin("*", meta, c)

    def div(self, meta: Any, c: list) -> ast.BinOp:
        return self._bin("/", meta, c)

    def floordiv(self, meta: Any, c: list) -> ast.BinOp:
        return self._bin("//", meta, c)

    def neg(self, meta: Any, c: list) -> ast.Expr:
        span = self._span(meta)
        operand = c[0]
        if isinstance(operand, ast.Num):  # fold literals: -1e-3 is a number, not an operation
            return ast.Num(-operand.value, span)
        return ast.Neg(operand, span)

    def pos(self, meta: Any, c: list) -> ast.Expr:
        return c[0]


def to_module_items(tree: Any, file: str) -> tuple[ast.Item, ...]:
    """Transform a ``start`` parse tree into the module's items."""
    return ToAst(file).transform(tree)


def to_expr(tree: Any, file: str) -> ast.Expr:
    """Transform an ``expr`` parse tree (the start rule used for domain strings)."""
    return ToAst(file).transform(tree)
