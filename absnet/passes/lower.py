"""Lower a network definition (AST) to an :class:`~absnet.ir.graph.IRGraph`.

Rules:

- The body must start with exactly one ``input`` statement; it becomes the ``Input`` node with
  attributes ``shape`` (tuple of ints), ``low`` and ``high`` (floats; range defaults to [0, 1]).
- A layer or directive call becomes one node applying it to the current value.
- A block call is expanded in place: the block's body runs with the block's parameters bound.
- ``repeat n { body }`` expands the body ``n`` times in sequence.
- ``Add``/``Concat { branch {...} ... }`` runs every branch from the current value and combines
  the branch outputs in one node; an empty branch contributes its input (the identity).

Node paths name the state_dict keys of parameters (``".".join(path)``) and must stay stable.
Statements are numbered from 0 within their body; in a network body the ``input`` statement is
not counted, so the first layer after it is ``"0"`` (as in ``torch.nn.Sequential``):

- layer at index ``i`` of the network body: ``("i",)``; the ``Input`` node: ``()``
- ``repeat`` at index ``i``, iteration ``r``, body statement ``j``: ``("i", "r", "j")``
- block call at index ``i``, block body statement ``j``: ``("i", "j")``
- ``Add``/``Concat`` at index ``i``: the combining node ``("i",)``; branch ``b``, statement ``j``:
  ``("i", "b", "j")``

These compose, e.g. a block called inside a repeat: ``("i", "r", "j", "k")``. Every node carries
the span of the DSL call that produced it; nodes from block expansions carry the inner
statement's span and ``meta["call_sites"]``, the spans of the enclosing block calls (outermost
first).

Errors are collected in a :class:`~absnet.diagnostics.DiagnosticBag` (codes: see
:mod:`absnet.passes.resolve`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic, DiagnosticBag, Span, did_you_mean
from absnet.grammar import ast
from absnet.grammar.evaluate import UNKNOWN, contains_unknown, describe, evaluate
from absnet.ir.graph import IRGraph
from absnet.ir.ops import CALLABLE_OPS, lookup
from absnet.passes.resolve import (
    MAX_REPEAT,
    args_env,
    call_env,
    default_env,
    duplicate_params,
    resolve_op_call,
)

_INPUT_HELP = "start the network with: input [channels, height, width] range [0, 1]"


class Lowerer:
    """Expands networks over the visible ``blocks``, reporting problems into ``bag``."""

    def __init__(self, blocks: Mapping[str, ast.BlockDef], bag: DiagnosticBag):
        self.blocks = blocks
        self.bag = bag
        self.graph = IRGraph()
        self._stack: list[tuple[str, Span]] = []  # block calls being expanded

    # ------------------------------------------------------------------ entry points
    def network(
        self, net: ast.NetworkDef, args: Mapping[str, Any] | None = None, *, check: bool = False
    ) -> IRGraph:
        """Lower ``net``. With ``check=True`` parameters without a value are :data:`UNKNOWN`
        (definition checking); otherwise every required parameter must be in ``args``."""
        what = f"network {net.name}"
        self.graph = IRGraph(net.name, net.span.file)
        self.bag.extend(duplicate_params(net.params, what))
        if check:
            env, diags = default_env(net.params, dict(args or {}), what)
        else:
            env, diags = args_env(net.params, dict(args or {}), what, net.name_span)
        self.bag.extend(diags)
        self.graph.params = {k: v for k, v in env.items() if v is not UNKNOWN}
        body = net.body
        if not body or not isinstance(body[0], ast.InputStmt):
            where = body[0].span if body else net.name_span
            self.bag.error("E210", f"network {net.name} must start with an input statement", where,
                           help=_INPUT_HELP)
            cur = self.graph.add("Input", {"shape": (1,), "low": 0.0, "high": 1.0}, span=net.name_span)
        else:
            cur = self._input(body[0], env, what)
            body = body[1:]
        cur = self.body(body, cur, env, (), what)
        self.graph.set_output(cur)
        return self.graph

    def block(self, block: ast.BlockDef) -> None:
        """Check a block on its own: its parameters are unknown, so only names and arguments are."""
        what = f"block {block.name}"
        self.graph = IRGraph(block.name, block.span.file)
        self.bag.extend(duplicate_params(block.params, what))
        env, diags = default_env(block.params, {}, what)
        self.bag.extend(diags)
        cur = self.graph.add("Input", {"shape": (1,), "low": 0.0, "high": 1.0}, span=block.name_span)
        self._stack.append((block.name, block.name_span))
        self.body(block.body, cur, env, (), what)
        self._stack.pop()

    # ------------------------------------------------------------------ statements
    def body(self, stmts: Sequence[ast.Stmt], cur: str, env: Mapping[str, Any], path: tuple[str, ...],
             where: str) -> str:
        """Lower statements in sequence from value ``cur``; return the id of the last value."""
        for j, st in enumerate(stmts):
            cur = self.stmt(st, cur, env, (*path, str(j)), where)
        return cur

    def stmt(self, st: ast.Stmt, cur: str, env: Mapping[str, Any], path: tuple[str, ...], where: str) -> str:
        if isinstance(st, ast.InputStmt):
            self.bag.error("E210", "input may only be the first statement of a network", st.span,
                           help="remove it; a network has exactly one input")
            return cur
        if isinstance(st, ast.RepeatStmt):
            return self._repeat(st, cur, env, path, where)
        if isinstance(st, ast.CombineStmt):
            return self._combine(st, cur, env, path, where)
        return self._call(st.call, cur, env, path, where)

    def _call(
        self, call: ast.Call, cur: str, env: Mapping[str, Any], path: tuple[str, ...], where: str
    ) -> str:
        block = self.blocks.get(call.name)
        if block is not None:
            return self._expand(block, call, cur, env, path, where)
        spec = lookup(call.name)
        if spec is None:
            self._unknown_layer(call)
            return cur
        if spec.category == "input":
            self.bag.error("E212", "the input is declared with an input statement, not called", call.span,
                           help=_INPUT_HELP)
            return cur
        if spec.category == "structure":
            self.bag.error("E212", f"{spec.name} combines branches and is written as a block", call.span,
                           help=f"write {call.name} {{ branch {{ ... }} branch {{ ... }} }}")
            return cur
        attrs, diags = resolve_op_call(call, spec, env, where)
        self.bag.extend(diags)
        if attrs is None:
            return cur
        return self._add(spec.name, attrs, [cur], call.span, path)

    def _expand(self, block: ast.BlockDef, call: ast.Call, cur: str, env: Mapping[str, Any],
                path: tuple[str, ...], where: str) -> str:
        if any(name == block.name for name, _ in self._stack):
            chain = " -> ".join([n for n, _ in self._stack] + [block.name])
            self.bag.error("E215", f"block {block.name} calls itself ({chain})", call.span,
                           help="blocks cannot be recursive; use repeat for repetition")
            return cur
        what = f"block {block.name}"
        inner_env, diags = call_env(call, block.params, what, env, where)
        self.bag.extend(diags)
        self._stack.append((block.name, call.span))
        try:
            return self.body(block.body, cur, inner_env, path, what)
        finally:
            self._stack.pop()

    def _repeat(self, st: ast.RepeatStmt, cur: str, env: Mapping[str, Any], path: tuple[str, ...],
                where: str) -> str:
        try:
            count = evaluate(st.count, env, where)
        except AbsnetError as e:
            self.bag.extend(e.diagnostics)
            count = UNKNOWN
        if count is not UNKNOWN and (isinstance(count, bool) or not _is_count(count)):
            self.bag.error("E206", f"repeat needs a count between 0 and {MAX_REPEAT}, got {describe(count)}",
                           st.count.span)
            count = UNKNOWN
        if count is UNKNOWN:  # still check the body once
            self.body(st.body, cur, env, (*path, "0"), where)
            return cur
        for r in range(int(count)):
            cur = self.body(st.body, cur, env, (*path, str(r)), where)
        return cur

    def _combine(self, st: ast.CombineStmt, cur: str, env: Mapping[str, Any], path: tuple[str, ...],
                 where: str) -> str:
        call = st.call
        spec = lookup(call.name)
        if spec is None or spec.category != "structure":
            if spec is None and call.name not in self.blocks:
                self._unknown_layer(call, combine=True)
            else:
                self.bag.error("E212", f"{call.name} does not take branches", call.span,
                               help="only Add and Concat are written with branches")
            return cur
        attrs, diags = resolve_op_call(call, spec, env, where)
        self.bag.extend(diags)
        if not st.branches:
            self.bag.error("E212", f"{spec.name} needs at least one branch", st.span,
                           help=f"write {call.name} {{ branch {{ ... }} branch {{ ... }} }}")
            return cur
        outs = [self.body(b.body, cur, env, (*path, str(i)), where) for i, b in enumerate(st.branches)]
        if attrs is None:
            return cur
        return self._add(spec.name, attrs, outs, call.span, path)

    # ------------------------------------------------------------------ helpers
    def _input(self, st: ast.InputStmt, env: Mapping[str, Any], where: str) -> str:
        shape: Any = (1,)
        low, high = 0.0, 1.0
        try:
            value = evaluate(st.shape, env, where)
            if isinstance(value, int) and not isinstance(value, bool):
                value = [value]
            if not contains_unknown(value):
                if not (isinstance(value, list | tuple) and value and all(_is_pos_int(v) for v in value)):
                    raise AbsnetError(Diagnostic(
                        "E210", f"the input shape must be a list of positive integers, got {describe(value)}",
                        st.shape.span, help="e.g. input [1, 28, 28] for an image, input [784] for a vector"))
                shape = tuple(int(v) for v in value)
        except AbsnetError as e:
            self.bag.extend(e.diagnostics)
        if st.range is not None:
            try:
                rng = evaluate(st.range, env, where)
                if not contains_unknown(rng):
                    ok = isinstance(rng, list | tuple) and len(rng) == 2 and all(
                        isinstance(v, int | float) and not isinstance(v, bool) for v in rng)
                    if not ok or rng[0] >= rng[1]:
                        msg = f"the input range must be [low, high] with low < high, got {describe(rng)}"
                        raise AbsnetError(Diagnostic("E210", msg, st.range.span, help="e.g. range [0, 1]"))
                    low, high = float(rng[0]), float(rng[1])
            except AbsnetError as e:
                self.bag.extend(e.diagnostics)
        return self.graph.add("Input", {"shape": shape, "low": low, "high": high}, span=st.span)

    def _add(self, op: str, attrs: Mapping[str, Any], inputs: Sequence[str], span: Span,
             path: tuple[str, ...]) -> str:
        nid = self.graph.add(op, attrs, inputs, span=span, path=path)
        if self._stack:
            self.graph.node(nid).meta["call_sites"] = tuple(s for _, s in self._stack)
        return nid

    def _unknown_layer(self, call: ast.Call, combine: bool = False) -> None:
        names = list(CALLABLE_OPS) + list(self.blocks) + (["Add", "Concat"] if combine else [])
        hint = did_you_mean(call.name, names)
        if hint is None and call.name in ("input", "Input"):
            hint = _INPUT_HELP
        self.bag.error("E201", f"unknown layer '{call.name}'", call.name_span,
                       notes=("run `absc ops` to list the layers and directives",), help=hint)


def _is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_count(v: Any) -> bool:
    return isinstance(v, int | float) and float(v).is_integer() and 0 <= v <= MAX_REPEAT


def dedupe(diags: Sequence[Diagnostic]) -> list[Diagnostic]:
    """Drop repeats of the same problem (a block expanded twice reports it once) and sort the rest
    by position (files in the order they first appear; unlocated ones last)."""
    seen: set[tuple[str, str, Span | None]] = set()
    files: dict[str, int] = {}
    out = []
    for d in diags:
        key = (d.code, d.message, d.span)
        if key not in seen:
            seen.add(key)
            out.append(d)
            if d.span is not None:
                files.setdefault(d.span.file, len(files))

    def position(d: Diagnostic) -> tuple[int, int, int]:
        if d.span is None:
            return (len(files), 0, 0)
        return (files[d.span.file], d.span.line, d.span.column)

    return sorted(out, key=position)
