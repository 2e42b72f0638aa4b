"""Source spans, diagnostics and their compiler-style rendering.

Every user-facing error in absnet is a :class:`Diagnostic`: a code (E1xx syntax, E2xx names and
arguments, E3xx shapes, E4xx domains, E5xx backends/export, E6xx data/runtime), a message, the
:class:`Span` it concerns, optional ``note:`` lines and one ``help:`` line. Problems are collected
and raised together as one :class:`AbsnetError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A region of DSL source: 1-based line and column, end column exclusive."""

    file: str
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in the user's input."""

    code: str
    message: str
    span: Span | None = None
    notes: tuple[str, ...] = ()
    help: str | None = None
    severity: str = "error"

    def render(self, sources: SourceMap | None = None) -> str:
        """Render as ``file:line:col: error[CODE]: message`` with the source line and a caret."""
        where = f"{self.span}: " if self.span else ""
        lines = [f"{where}{self.severity}[{self.code}]: {self.message}"]
        text = sources.line(self.span) if (sources is not None and self.span) else None
        if text is not None and self.span is not None:
            gutter = str(self.span.line)
            pad = " " * len(gutter)
            lines.append(f"{gutter} | {text}")
            start = self.span.column - 1
            if self.span.end_line == self.span.line and self.span.end_column:
                width = max(1, self.span.end_column - self.span.column)
            else:
                width = max(1, len(text.rstrip()) - start)
            lines.append(f"{pad} | {' ' * start}{'^' * width}")
        lines.extend(f"note: {n}" for n in self.notes)
        if self.help:
            lines.append(f"help: {self.help}")
        return "\n".join(lines)


@dataclass
class SourceMap:
    """The text of every file seen in one compilation, to quote lines in diagnostics."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, file: str, text: str) -> None:
        self.texts[file] = text

    def line(self, span: Span) -> str | None:
        text = self.texts.get(span.file)
        if text is None:
            return None
        lines = text.splitlines()
        if 1 <= span.line <= len(lines):
            return lines[span.line - 1].expandtabs(1)
        return None


class AbsnetError(Exception):
    """One or more diagnostics; ``str(err)`` renders all of them."""

    def __init__(self, diagnostics: Diagnostic | Sequence[Diagnostic], sources: SourceMap | None = None):
        self.diagnostics: list[Diagnostic] = (
            [diagnostics] if isinstance(diagnostics, Diagnostic) else list(diagnostics)
        )
        self.sources = sources
        super().__init__(self.render())

    def render(self) -> str:
        return "\n\n".join(d.render(self.sources) for d in self.diagnostics)

    def __str__(self) -> str:
        return self.render()

    def with_sources(self, sources: SourceMap) -> AbsnetError:
        """Return the same error, rendering with the given sources."""
        return AbsnetError(self.diagnostics, sources)


class DiagnosticBag:
    """Collects diagnostics so a pass can report every problem in one run."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def error(
        self,
        code: str,
        message: str,
        span: Span | None = None,
        *,
        notes: Iterable[str] = (),
        help: str | None = None,
    ) -> None:
        self.items.append(Diagnostic(code, message, span, tuple(notes), help))

    def extend(self, diags: Iterable[Diagnostic]) -> None:
        self.items.extend(diags)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, sources: SourceMap | None = None) -> None:
        if self.items:
            raise AbsnetError(self.items, sources)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """Return ``"did you mean 'X'?"`` for the closest candidate, or None."""
    cands = list(candidates)
    lower = {c.lower(): c for c in cands}
    if name.lower() in lower:
        return f"did you mean '{lower[name.lower()]}'?"
    close = difflib.get_close_matches(name, cands, n=1, cutoff=0.6)
    if not close:
        close_l = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)
        close = [lower[c] for c in close_l]
    return f"did you mean '{close[0]}'?" if close else None
