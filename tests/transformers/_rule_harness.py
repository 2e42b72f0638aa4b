"""Shared machinery for the rule tests: the per-op sample table, abstract inputs, sampling inside
them, and running a rule through a RuleContext. Everything is float64. (The linear domain's inputs
and checks are in test_linear_rules.py; here a linear value only needs its bounds.)"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from absnet.backends.torch.ops import TorchOps
from absnet.domains.box import Box
from absnet.domains.linear import LinearValue, bounds, lower_bound
from absnet.domains.zonotope import Zonotope
from absnet.ir.domains import ANALYSES, Analysis
from absnet.ir.graph import Node, freeze
from absnet.ir.ops import CATALOG, REQUIRED, Shape
from absnet.transformers.registry import RULES, RuleContext, load_rules

DT = torch.float64
N = 2  # examples per batch
TOL = 1e-9
RELU_VARIANTS = ("Boxy", "BoxySound", "Switch", "Smooth", "NIPS")


@dataclass(frozen=True)
class Case:
    """One sample configuration: per-example input shapes and attributes."""

    op: str
    shapes: tuple[Shape, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    tag: str = ""

    @property
    def id(self) -> str:
        return f"{self.op}{'[' + self.tag + ']' if self.tag else ''}"


def c(op: str, *shapes: Shape, tag: str = "", **attrs: Any) -> Case:
    return Case(op, tuple(shapes), attrs, tag)


# One line per op of the catalog (the first case of an op is its main line); extra lines after.
CASES: tuple[Case, ...] = (
    c("Linear", (6,), out_features=4),
    c("Conv2d", (2, 5, 5), out_channels=3, kernel_size=3, stride=2, padding=1),
    c("Normalize", (2, 4, 4), mean=[0.1, -0.2], std=[0.5, -2.0]),
    c("BatchNorm1d", (6,)),
    c("BatchNorm2d", (2, 3, 3)),
    c("Dropout", (6,), p=0.4),
    c("Identity", (6,)),
    c("Flatten", (2, 3, 3)),
    c("Reshape", (2, 3, 3), shape=[3, -1]),
    c("ReLU", (8,)),
    c("LeakyReLU", (8,), negative_slope=0.1),
    c("Sigmoid", (8,)),
    c("Tanh", (8,)),
    c("Softplus", (8,)),
    c("ELU", (8,)),
    c("AvgPool2d", (2, 5, 5), kernel_size=3, stride=2, padding=1),
    c("AdaptiveAvgPool2d", (2, 5, 5), output_size=(2, 3)),
    c("MaxPool2d", (2, 5, 5), kernel_size=3, stride=2, padding=1),
    c("Add", (6,), (6,), (6,)),
    c("Concat", (2, 3, 3), (1, 3, 3), axis=1),
    c("ToZono", (2, 3, 3), relu="NIPS"),
    c("CorrelateAll", (6,)),
    c("ToHZono", (6,), relu="Switch"),
    c("Concretize", (6,)),
    c("CorrRand", (2, 3, 3), num_correlate=5),
    c("CorrMaxK", (6,), num_correlate=3),
    c("CorrMaxPool2D", (2, 5, 5), kernel_size=2),
    c("CorrMaxPool3D", (4, 5, 5), kernel_size=2, max_type="ub"),
    c("CorrFix", (2, 3, 3), k=4),
    c("DecorrRand", (6,), num_decorrelate=2),
    c("DecorrMin", (6,), num_decorrelate=2),
    c("ToLinear", (6,)),
    c("DeepLoss", (6,)),
    c("IdentLoss", (6,)),
    # extra configurations
    c("Conv2d", (4, 4, 6), tag="groups", out_channels=2, kernel_size=(2, 3), dilation=(1, 2), groups=2,
      bias=False),
    c("BatchNorm2d", (2, 3, 3), tag="noaffine", affine=False),
    c("LeakyReLU", (8,), tag="negative", negative_slope=-0.5),
    c("LeakyReLU", (8,), tag="steep", negative_slope=1.5),
    c("ELU", (8,), tag="alpha1.5", alpha=1.5),
    c("AvgPool2d", (2, 4, 4), tag="k2", kernel_size=2),
    c("MaxPool2d", (2, 4, 4), tag="k2", kernel_size=2),
    c("MaxPool2d", (1, 4, 5), tag="rect", kernel_size=(2, 3), stride=1, padding=(1, 1)),
    c("Concat", (2, 4), (2, 2), tag="axis2", axis=2),
    c("Add", (2, 3, 3), (2, 3, 3), tag="images"),
    c("CorrMaxPool2D", (2, 5, 5), tag="ub", kernel_size=2, max_type="ub"),
    c("CorrMaxK", (6,), tag="all", num_correlate=10),
    c("DecorrMin", (6,), tag="keep2", num_decorrelate=2, num_to_keep=True),
    c("DecorrMin", (6,), tag="keepall", num_decorrelate=9, num_to_keep=True),
    c("DecorrMin", (6,), tag="dropall", num_decorrelate=9),
    c("ToLinear", (2, 3, 3), tag="ibp", slope="zero_lb", intermediate="ibp"),
)

#: ops of the catalog without a rule, each with the reason
GAPS = {"Input": "the interpreter encodes the input region (transformers/margins.py); it has no rule"}
#: ops of the catalog without a rule for one domain kind only, each with the reason
DOMAIN_GAPS: dict[tuple[str, str], str] = {}

EXACT_DIRECTIVES = ("ToZono", "CorrelateAll", "ToHZono", "CorrRand", "CorrMaxK", "CorrMaxPool2D",
                    "CorrMaxPool3D", "CorrFix", "DeepLoss", "IdentLoss", "ToLinear")


def make_attrs(op: str, given: dict[str, Any]) -> dict[str, Any]:
    spec = CATALOG[op]
    given = dict(given)
    out = {}
    for a in spec.attrs:
        v = given.pop(a.name, a.default)
        assert v is not REQUIRED, f"{op}: attribute {a.name} is required"
        out[a.name] = None if v is None else a.coerce(v)  # None: "not given" (ToLinear's slope)
    assert not given, given
    return out


def make_params(op: str, in_shape: Shape, attrs: dict[str, Any],
                g: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for name, ps in CATALOG[op].params(in_shape, attrs).items():
        t = torch.randn(ps.shape, generator=g, dtype=DT)
        if name == "running_var":
            t = torch.rand(ps.shape, generator=g, dtype=DT) + 0.5
        elif name == "running_mean":
            t = t * 0.3
        elif name == "weight" and op.startswith("BatchNorm"):
            t = t + 0.2
        else:
            t = t / math.sqrt(ps.fan_in) * 1.5
        out[name] = t
    return out


class FixedNoiseOps(TorchOps):
    """TorchOps whose rand_like returns one fixed draw per element, tiled over stacked samples, so
    Dropout masks agree between the abstract rule (N, *s) and the point rule on (S·N, *s)."""

    def __init__(self, noise: torch.Tensor, generator: torch.Generator):
        super().__init__(generator)
        self.noise = noise

    def rand_like(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) == tuple(self.noise.shape[1:]) and x.shape[0] % self.noise.shape[0] == 0:
            reps = x.shape[0] // self.noise.shape[0]
            return self.noise.repeat(reps, *([1] * (x.dim() - 1)))
        return super().rand_like(x)


def make_ctx(case: Case, ops: TorchOps, params: dict[str, Any], analysis: Analysis, training: bool,
             **kw: Any) -> RuleContext:
    attrs = make_attrs(case.op, case.attrs)
    node = Node("n7", case.op, freeze(attrs), ())
    out_shape = CATALOG[case.op].shape_fn(list(case.shapes), attrs)
    return RuleContext(ops, node, params, analysis, training, case.shapes, out_shape, **kw)


def run_rule(op: str, domain: str, ctx: RuleContext, *xs: Any) -> Any:
    load_rules()
    return RULES[(op, domain)].fn(ctx, *xs)


def analysis_for(domain: str, pure: bool = False, relu: str = "Boxy") -> Analysis:
    if domain == "box":
        return replace(ANALYSES["Box"], relu=relu)
    if domain == "point":
        return ANALYSES["Point"]
    if domain == "linear":
        return ANALYSES["CROWN"]
    return replace(ANALYSES["HBox"], pure=pure, relu=relu)


# --------------------------------------------------------------------------- inputs and sampling


def _noise(s: int, shape: Sequence[int], g: torch.Generator) -> torch.Tensor:
    """S draws in [-1, 1]^shape: the first half are vertices (±1), the rest uniform."""
    half = s // 2
    corners = torch.randint(0, 2, (half, *shape), generator=g).to(DT) * 2 - 1
    uniform = torch.rand((s - half, *shape), generator=g, dtype=DT) * 2 - 1
    return torch.cat([corners, uniform])


Sampler = Callable[[int], list[torch.Tensor]]


def make_inputs(domain: str, shapes: Sequence[Shape], flavor: str, relu: str,
                g: torch.Generator) -> tuple[list[Any], Sampler]:
    """Abstract inputs and a sampler of concrete points inside them ((S, N, *s) per input).

    Zonotope flavors: ``hybrid`` (box radii + two shared generator blocks), ``pure`` (generators
    only), ``nogens`` (pure zonotope with box radii and no generators), ``mixed`` (several inputs,
    the last one a Box). Several inputs share the blocks x0/x1 through random linear maps and each
    adds a fresh block of two generators of its own (same size on purpose).
    """
    if domain == "box":
        boxes = [Box(torch.randn(N, *s, generator=g, dtype=DT),
                     torch.rand(N, *s, generator=g, dtype=DT) * 0.8) for s in shapes]

        def sample_box(n: int) -> list[torch.Tensor]:
            return [b.center + b.radius * _noise(n, b.center.shape, g) for b in boxes]

        return list(boxes), sample_box
    pure = flavor in ("pure", "nogens")
    with_gens = flavor != "nogens"
    base_m = 8
    base = torch.randn(N, 5, base_m, generator=g, dtype=DT) * 0.4
    values: list[Any] = []
    parts: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]] = []
    for i, s in enumerate(shapes):
        n = math.prod(s)
        center = torch.randn(N, *s, generator=g, dtype=DT)
        box = None if flavor == "pure" else torch.rand(N, *s, generator=g, dtype=DT) * 0.5
        if flavor == "mixed" and i == len(shapes) - 1:
            values.append(Box(center, box))
            parts.append((center, box, None, None))
            continue
        if not with_gens:
            values.append(Zonotope(center, box, None, (), pure, relu))
            parts.append((center, box, None, None))
            continue
        if len(shapes) == 1:
            shared = torch.randn(N, 5, *s, generator=g, dtype=DT) * 0.4
            fresh = None
        else:
            a = torch.randn(base_m, n, generator=g, dtype=DT) / math.sqrt(base_m)
            shared = (base @ a).reshape(N, 5, *s)
            fresh = torch.randn(N, 2, *s, generator=g, dtype=DT) * 0.3
        blocks: tuple[tuple[str, int], ...] = (("x0", 3), ("x1", 2))
        gens = shared
        if fresh is not None:
            gens = torch.cat([shared, fresh], 1)
            blocks = (*blocks, (f"fresh{i}", 2))
        values.append(Zonotope(center, box, gens, blocks, pure, relu))
        parts.append((center, box, shared, fresh))

    def sample_zono(n: int) -> list[torch.Tensor]:
        eps = _noise(n, (N, 5), g)
        out = []
        for center, box, shared, fresh in parts:
            p = center.expand(n, *center.shape).clone()
            if box is not None:
                p = p + box * _noise(n, center.shape, g)
            if shared is not None:
                p = p + torch.einsum("snk,nk...->sn...", eps, shared)
            if fresh is not None:
                p = p + torch.einsum("snk,nk...->sn...", _noise(n, (N, 2), g), fresh)
            out.append(p)
        return out

    return values, sample_zono


def bounds_of(ops: TorchOps, v: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(v, LinearValue):
        return bounds(ops, v)
    if isinstance(v, Box | Zonotope):
        return v.lower(ops), v.upper(ops)
    return v, v


def projected_bounds(v: Any, proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of flat(v) @ proj computed here (independently of the library): generators map
    exactly, box radii through |proj|; a linear value by back-substitution of the rows ±projᵀ."""
    if isinstance(v, LinearValue):
        spec = torch.cat([proj.T, -proj.T]).reshape(1, 2 * proj.shape[1], *v.shape)
        lb = lower_bound(TorchOps(), v, spec)
        return lb[:, : proj.shape[1]], -lb[:, proj.shape[1]:]
    if isinstance(v, Box):
        c, rad = v.center.flatten(1) @ proj, v.radius.flatten(1) @ proj.abs()
        return c - rad, c + rad
    c = v.center.flatten(1) @ proj
    rad = torch.zeros_like(c)
    if v.box is not None:
        rad = rad + v.box.flatten(1) @ proj.abs()
    if v.gens is not None:
        rad = rad + (v.gens.flatten(2) @ proj).abs().sum(1)
    return c - rad, c + rad


def assert_within(points: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, what: str) -> None:
    below = (lo - points).max().item()
    above = (points - hi).max().item()
    assert below <= TOL and above <= TOL, f"{what}: a sampled point lies outside by {max(below, above):.3g}"
