"""Named analyses (what users write as ``domain="HBox()"``) and the domain kinds they carry.

Domain kinds are what flows on an IR edge and what rules are registered for: ``point`` (a concrete
tensor), ``box`` (centre/radius) and ``zonotope`` (hybrid or pure zonotope). The analyses are
exactly DiffAI's (reference/diffai.md §1.8): they differ in how the input region is encoded, whether
the value is hybrid or pure, and the ReLU transformer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic, Span, did_you_mean
from absnet.ir.ops import RELU_VARIANTS

DOMAIN_KINDS = ("point", "box", "zonotope")


@dataclass(frozen=True)
class Analysis:
    """A named analysis: how the input set is encoded and which transformers run."""

    name: str
    kind: str  # the domain kind of the input value: point | box | zonotope
    pure: bool = False  # pure zonotope (Z*) vs hybrid (H*)
    relu: str = "Boxy"
    doc: str = ""

    def __str__(self) -> str:
        base = ANALYSES.get(self.name)
        if base is not None and base.relu != self.relu:
            return f'{self.name}(relu="{self.relu}")'
        return f"{self.name}()"


ANALYSES: dict[str, Analysis] = {
    a.name: a
    for a in (
        Analysis("Point", "point", doc="the concrete network (no abstraction)"),
        Analysis("Box", "box", doc="interval arithmetic (IBP); directives may add generators"),
        Analysis("HBox", "zonotope", False, "Boxy", "hybrid zonotope, one generator per input, Boxy ReLU"),
        Analysis("HSwitch", "zonotope", False, "Switch", "hybrid zonotope, Switch ReLU"),
        Analysis("HSmooth", "zonotope", False, "Smooth", "hybrid zonotope, Smooth ReLU"),
        Analysis("HNIPS", "zonotope", False, "NIPS", "hybrid zonotope, DeepZ ReLU (slack in box radii)"),
        Analysis("ZBox", "zonotope", True, "Boxy", "pure zonotope, Boxy ReLU"),
        Analysis("ZSwitch", "zonotope", True, "Switch", "pure zonotope, Switch ReLU"),
        Analysis("ZNIPS", "zonotope", True, "NIPS", "pure zonotope, DeepZ ReLU (= DeepZ)"),
        Analysis("ZSmooth", "zonotope", True, "Smooth", "pure zonotope, Smooth ReLU"),
    )
}
ALIASES = {"IBP": "Box", "DeepZ": "ZNIPS"}


def make_analysis(name: str, kwargs: Mapping[str, Any] | None = None, span: Span | None = None) -> Analysis:
    """Resolve ``Name(relu=...)`` to an :class:`Analysis`; raise a located E2xx error otherwise."""
    kwargs = dict(kwargs or {})
    canon = ALIASES.get(name, name)
    if canon not in ANALYSES:
        hint = did_you_mean(name, list(ANALYSES) + list(ALIASES))
        raise AbsnetError(
            Diagnostic(
                "E201", f"unknown analysis '{name}'", span,
                notes=(f"analyses: {', '.join(ANALYSES)} (aliases: IBP = Box, DeepZ = ZNIPS)",),
                help=hint,
            )
        )
    a = ANALYSES[canon]
    relu = kwargs.pop("relu", None)
    if kwargs:
        bad = next(iter(kwargs))
        raise AbsnetError(
            Diagnostic("E202", f"{canon}() has no argument '{bad}'", span,
                       help=did_you_mean(bad, ["relu"]) or "the only argument of an analysis is relu=")
        )
    if relu is not None:
        if a.kind != "zonotope" or relu not in RELU_VARIANTS:
            choices = ", ".join(RELU_VARIANTS)
            raise AbsnetError(
                Diagnostic("E203", f"{canon}() cannot take relu={relu!r}", span,
                           help=f"relu= applies to the H*/Z* analyses and is one of {choices}")
            )
        a = replace(a, relu=relu)
    return a
