"""Named analyses (what users write as ``domain="HBox()"``) and the domain kinds they carry.

Domain kinds are what flows on an IR edge and what rules are registered for: ``point`` (a concrete
tensor), ``box`` (centre/radius), ``zonotope`` (hybrid or pure zonotope) and ``linear`` (a value
known symbolically as linear bounds over its segment's input set, bounded by back-substitution).
DiffAI's analyses (reference/diffai.md §1.8) differ in how the input region is encoded, whether the
value is hybrid or pure, and the ReLU transformer. The linear-relaxation analyses
(reference/crown_ibp.md §1.4, §1.10, §2) differ in where intermediate bounds come from
(back-substitution or IBP), the lower ReLU slope, and whether lower slopes are optimised (α-CROWN).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic, Span, did_you_mean
from absnet.ir.ops import RELU_VARIANTS, SLOPES

DOMAIN_KINDS = ("point", "box", "zonotope", "linear")


@dataclass(frozen=True)
class Analysis:
    """A named analysis: how the input set is encoded and which transformers run."""

    name: str
    kind: str  # the domain kind of the input value: point | box | zonotope
    pure: bool = False  # pure zonotope (Z*) vs hybrid (H*)
    relu: str = "Boxy"
    doc: str = ""
    # linear-relaxation analyses only
    slope: str = "adaptive"  # lower ReLU slope: one of SLOPES
    intermediate: str = "crown"  # intermediate bounds by back-substitution ("crown") or IBP ("ibp")
    intersect: bool = True  # intersect back-substituted intermediate bounds with the IBP box
    alpha_iters: int = 0  # α-CROWN: gradient steps on the lower slopes (0: plain CROWN)
    alpha_lr: float = 0.5
    proj: int = 0  # WongKolter(proj=k): random-projection estimate (training only, not sound)

    @property
    def sound(self) -> bool:
        """Whether bounds of this analysis are certificates (random projections are estimates)."""
        return self.proj == 0

    def __str__(self) -> str:
        base = ANALYSES.get(self.name)
        if base is None:
            return f"{self.name}()"
        fields = [(k, _FIELDS.get(k, k)) for k in ARGS.get(self.name, ())]
        args = [f"{k}={_show(getattr(self, f))}" for k, f in fields if getattr(self, f) != getattr(base, f)]
        if base.relu != self.relu:
            args.insert(0, f'relu="{self.relu}"')
        return f"{self.name}({', '.join(args)})"


def _show(v: Any) -> str:
    return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


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
        Analysis("CROWN", "linear", doc="linear bounds by back-substitution at every layer (quadratic in depth)"),
        Analysis("CROWN_IBP", "linear", intermediate="ibp",
                 doc="IBP intermediate bounds, back-substitution from the output only (CROWN-IBP)"),
        Analysis("DeepPoly", "linear", intersect=False,
                 doc="back-substitution at every layer, area-minimising lower slope, no IBP intersection"),
        Analysis("FastLin", "linear", slope="same_slope", intersect=False,
                 doc="back-substitution with the same slope above and below (Fast-Lin)"),
        Analysis("WongKolter", "linear", slope="same_slope", intersect=False,
                 doc="the Wong-Kolter dual bound (= FastLin); proj=k: random-projection estimate for training"),
        Analysis("AlphaCROWN", "linear", alpha_iters=20,
                 doc="CROWN with the lower ReLU slopes optimised by gradient steps (never looser than CROWN)"),
    )
}
ALIASES = {"IBP": "Box", "DeepZ": "ZNIPS"}
#: the keyword arguments each analysis takes (besides relu= for the H*/Z* family)
ARGS: dict[str, tuple[str, ...]] = {
    "CROWN": ("slope",),
    "CROWN_IBP": ("slope",),
    "DeepPoly": (),
    "FastLin": (),
    "WongKolter": ("proj",),
    "AlphaCROWN": ("iters", "lr", "slope"),
}
_FIELDS = {"iters": "alpha_iters", "lr": "alpha_lr"}


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
    allowed = ARGS.get(canon, ())
    for key, value in kwargs.items():
        if key not in allowed:
            choices = ["relu"] if a.kind == "zonotope" else list(allowed)
            raise AbsnetError(
                Diagnostic("E202", f"{canon}() has no argument '{key}'", span,
                           help=did_you_mean(key, choices) or (
                               f"{canon}() takes {', '.join(f'{c}=' for c in choices)}" if choices
                               else f"{canon}() takes no arguments"))
            )
        a = replace(a, **{_FIELDS.get(key, key): _check_arg(canon, key, value, span)})
    if relu is not None:
        if a.kind != "zonotope" or relu not in RELU_VARIANTS:
            choices = ", ".join(RELU_VARIANTS)
            raise AbsnetError(
                Diagnostic("E203", f"{canon}() cannot take relu={relu!r}", span,
                           help=f"relu= applies to the H*/Z* analyses and is one of {choices}")
            )
        a = replace(a, relu=relu)
    return a


def _check_arg(name: str, key: str, value: Any, span: Span | None) -> Any:
    """Check one argument of a linear-relaxation analysis (E203 with what was expected)."""
    def bad(expected: str) -> AbsnetError:
        return AbsnetError(Diagnostic("E203", f"{name}() cannot take {key}={value!r}", span,
                                      help=f"{key}= is {expected}"))

    if key == "slope":
        if value not in SLOPES:
            raise bad("one of " + ", ".join(f'"{s}"' for s in SLOPES))
        return value
    if key in ("iters", "proj"):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "iters" else 0):
            raise bad("a positive integer" if key == "iters" else "a non-negative integer (0: exact)")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise bad("a positive number")
    return float(value)
