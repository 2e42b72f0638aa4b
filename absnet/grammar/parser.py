"""The cached LALR parser for ``absnet.lark`` and friendly syntax errors (E1xx).

Codes: ``E101`` unexpected token (with what was expected, in words), ``E102`` unexpected
character, ``E103`` unexpected end of file (naming the unclosed bracket, if any).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from absnet.diagnostics import AbsnetError, Diagnostic, SourceMap, Span
from absnet.grammar import ast
from absnet.grammar.to_ast import to_expr, to_module_items

#: how terminals are named in messages
_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "$END": "the end of the file",
}
_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_OPERATORS = {"'+'", "'-'", "'*'", "'/'", "'//'"}


@lru_cache(maxsize=1)
def get_parser() -> Lark:
    """Return the (cached) LALR parser; start rules ``start`` (a file) and ``expr`` (a value)."""
    text = resources.files("absnet.grammar").joinpath("absnet.lark").read_text(encoding="utf-8")
    return Lark(
        text,
        parser="lalr",
        start=["start", "expr"],
        propagate_positions=True,
        maybe_placeholders=False,
    )


def parse_text(text: str, file: str = "<string>", sources: SourceMap | None = None) -> ast.Module:
    """Parse one file's text into a :class:`ast.Module`, without following its imports.

    Raises:
        AbsnetError: E101/E102/E103 for a syntax error, located and rendered with its line.

    >>> parse_text("network N { input [4] Linear(2) }").items[0].name
    'N'
    """
    sources = sources if sources is not None else SourceMap()
    sources.add(file, text)
    try:
        tree = get_parser().parse(text, start="start")
    except UnexpectedInput as e:
        raise AbsnetError(syntax_diagnostic(e, text, file), sources) from None
    return ast.Module(file, to_module_items(tree, file), (), sources)


def parse_expr(text: str, file: str = "<expr>", sources: SourceMap | None = None) -> ast.Expr:
    """Parse a single value such as ``HBox()``, ``Lin(0, 1, 10)`` or ``[1, 2]``."""
    sources = sources if sources is not None else SourceMap()
    sources.add(file, text)
    try:
        tree = get_parser().parse(text, start="expr")
    except UnexpectedInput as e:
        raise AbsnetError(syntax_diagnostic(e, text, file), sources) from None
    return to_expr(tree, file)


# --------------------------------------------------------------------------- friendly errors


def _describe_terminal(name: str) -> str:
    if name in _WORDS:
        return _WORDS[name]
    try:
        term = get_parser().get_terminal(name)
    except KeyError:
        return name.lower()
    if term.pattern.type == "str":
        return f"'{term.pattern.value}'"
    return name.lower()


def _expected_words(expected: set[str] | frozenset[str] | list[str]) -> str:
    names = {t for t in expected if not t.startswith("__")}
    if "REPEAT" in names:  # the start of a statement
        return "a layer, 'input', 'repeat' or '}'" if "RBRACE" in names else "a layer, 'input' or 'repeat'"
    if {"NUMBER", "STRING", "NAME"} <= names:  # the start of a value
        return "a value"
    words = sorted({_describe_terminal(t) for t in names})
    if len(words) > 1:  # an operator is possible after any value; it is rarely what was missing
        words = [w for w in words if w not in _OPERATORS] or words
    words.sort(key=lambda w: (not w.startswith("'"), w))  # punctuation and keywords first
    if not words:
        return "something else"
    if len(words) == 1:
        return words[0]
    if len(words) > 6:
        return "one of " + ", ".join(words[:6]) + ", …"
    return ", ".join(words[:-1]) + " or " + words[-1]


def _show_token(tok: Token) -> str:
    if tok.type == "NAME":
        return f"name '{tok}'"
    if tok.type == "NUMBER":
        return f"number {tok}"
    if tok.type == "STRING":
        return f"string {tok}"
    return f"'{tok}'"


def unclosed_bracket(text: str) -> tuple[str, int, int] | None:
    """Return the innermost bracket still open at the end of ``text``: (char, line, column)."""
    stack: list[tuple[str, int, int]] = []
    line, col, i, n = 1, 1, 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "#":
            while i < n and text[i] != "\n":
                i, col = i + 1, col + 1
            continue
        if ch in "\"'":
            j = i + 1
            while j < n and text[j] not in (ch, "\n"):
                j += 2 if text[j] == "\\" else 1
            col += j + 1 - i
            i = j + 1
            continue
        if ch in _CLOSERS:
            stack.append((ch, line, col))
        elif ch in ")]}" and stack and _CLOSERS[stack[-1][0]] == ch:
            stack.pop()
        if ch == "\n":
            line, col = line + 1, 1
        else:
            col += 1
        i += 1
    return stack[-1] if stack else None


def _end_span(text: str, file: str) -> Span:
    lines = text.splitlines() or [""]
    # point just after the last non-blank character
    for k in range(len(lines) - 1, -1, -1):
        stripped = lines[k].rstrip()
        if stripped:
            return Span(file, k + 1, len(stripped) + 1, k + 1, len(stripped) + 2)
    return Span(file, 1, 1, 1, 2)


def syntax_diagnostic(e: UnexpectedInput, text: str, file: str) -> Diagnostic:
    """Turn a Lark error into an E101/E102/E103 diagnostic with friendly wording."""
    if isinstance(e, UnexpectedToken) and e.token.type != "$END":
        tok = e.token
        span = Span(file, tok.line, tok.column, tok.end_line, tok.end_column)
        expected = _expected_words(e.accepts or e.expected)
        help_ = _token_help(e)
        return Diagnostic("E101", f"unexpected {_show_token(tok)}, expected {expected}", span, help=help_)
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "?"
        span = Span(file, e.line, e.column, e.line, e.column + 1)
        help_ = {"`": "strings are written in double quotes", '"': "close the string on the same line",
                 "'": "close the string on the same line"}.get(ch)
        return Diagnostic("E102", f"unexpected character '{ch}'", span, help=help_)
    # end of input
    expected = getattr(e, "expected", None) or []
    span = _end_span(text, file)
    open_ = unclosed_bracket(text)
    if open_ is not None:
        ch, line, col = open_
        return Diagnostic(
            "E103", f"unexpected end of file: unclosed '{ch}' opened at line {line}", span,
            notes=(f"'{ch}' opened at {file}:{line}:{col}",),
            help=f"add the missing '{_CLOSERS[ch]}'",
        )
    msg = "unexpected end of file"
    if expected and not isinstance(e, UnexpectedEOF):
        msg += f", expected {_expected_words(expected)}"
    return Diagnostic("E103", msg, span)


def _token_help(e: UnexpectedToken) -> str | None:
    expected = set(e.accepts or e.expected)
    prev = None
    if e.token_history:
        prev = e.token_history[-1]
    if prev is not None and prev.type == "NAME" and {"LPAR", "LBRACE"} <= expected:
        return f"layers and directives are calls: write {prev}()"
    if e.token.type == "EQUAL":
        return "only a name can take '=', as in Conv2d(16, kernel=3)"
    if "COMMA" in expected and "RPAR" in expected:
        return "separate arguments with ','"
    if "COMMA" in expected and "RSQB" in expected:
        return "separate list items with ','"
    return None
