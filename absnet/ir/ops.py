"""THE op catalog: every layer, structure op and directive the language knows.

An :class:`OpSpec` gives an op's typed attributes (positional order = declaration order, with
defaults), its shape rule, its parameters and a one-line doc. Names written in the DSL are resolved
against this table, so adding a layer never changes the grammar. Shapes here are per example
(no batch axis): ``(C, H, W)`` or ``(N,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Shape = tuple[int, ...]
Attrs = Mapping[str, Any]

REQUIRED: Any = object()
RELU_VARIANTS = ("Boxy", "BoxySound", "Switch", "Smooth", "NIPS")
MAX_TYPES = ("ub", "only_beta", "head_beta")
#: lower ReLU slopes of the linear-relaxation analyses (reference/crown_ibp.md §1.4)
SLOPES = ("adaptive", "same_slope", "zero_lb", "one_lb")


class ShapeError(Exception):
    """Raised by a shape rule; ``infer_shapes`` turns it into a located E3xx diagnostic."""

    def __init__(self, message: str, help: str | None = None, code: str = "E301"):
        super().__init__(message)
        self.message = message
        self.help = help
        self.code = code


class AttrError(Exception):
    """Raised when an attribute value has the wrong type; resolve turns it into E2xx."""


@dataclass(frozen=True)
class Attr:
    """A typed attribute. ``kind`` is one of: int, float, bool, str, pair (int or 2 ints),
    opt_pair (pair or None), ints (list of ints), floats (list of floats), schedule (number or a
    schedule call), relu (a ReLU variant name or None), enum (one of ``choices``)."""

    name: str
    kind: str
    default: Any = REQUIRED
    doc: str = ""
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def coerce(self, value: Any) -> Any:
        """Check and normalise a parsed value; raise AttrError with what was expected."""
        k = self.kind
        if k == "int":
            if isinstance(value, bool) or not _is_int(value):
                raise AttrError(f"expected an integer, got {_show(value)}")
            return int(value)
        if k == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise AttrError(f"expected a number, got {_show(value)}")
            return float(value)
        if k == "bool":
            if not isinstance(value, bool):
                raise AttrError(f"expected true or false, got {_show(value)}")
            return value
        if k == "str":
            if not isinstance(value, str):
                raise AttrError(f"expected a string, got {_show(value)}")
            return value
        if k in ("pair", "opt_pair"):
            if value is None and k == "opt_pair":
                return None
            if _is_int(value) and not isinstance(value, bool):
                return (int(value), int(value))
            if isinstance(value, list | tuple) and len(value) == 2 and all(_is_int(v) for v in value):
                return (int(value[0]), int(value[1]))
            raise AttrError(f"expected an integer or a pair of integers, got {_show(value)}")
        if k == "ints":
            if isinstance(value, list | tuple) and all(_is_int(v) and not isinstance(v, bool) for v in value):
                return tuple(int(v) for v in value)
            raise AttrError(f"expected a list of integers, got {_show(value)}")
        if k == "floats":
            if isinstance(value, int | float) and not isinstance(value, bool):
                return (float(value),)
            if isinstance(value, list | tuple) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value
            ):
                return tuple(float(v) for v in value)
            raise AttrError(f"expected a number or a list of numbers, got {_show(value)}")
        if k == "schedule":
            if isinstance(value, bool):
                raise AttrError(f"expected a number or a schedule such as Lin(0, 1, 10), got {_show(value)}")
            if isinstance(value, int | float):
                return float(value)
            return value  # a schedule call expression; the resolve pass validates it
        if k == "relu":
            if value is None:
                return None
            if isinstance(value, str) and value in RELU_VARIANTS:
                return value
            raise AttrError(f"expected one of {', '.join(RELU_VARIANTS)}, got {_show(value)}")
        if k == "enum":
            if isinstance(value, str) and value in self.choices:
                return value
            raise AttrError(f"expected one of {', '.join(self.choices)}, got {_show(value)}")
        raise AssertionError(f"unknown attribute kind {k}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) or (isinstance(v, float) and v.is_integer())


def _show(v: Any) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float | list | tuple) or v is None:
        return repr(v)
    return type(v).__name__


@dataclass(frozen=True)
class ParamSpec:
    """A learnable parameter (or buffer) of a layer: its shape and how it is initialised.

    ``init`` is ``fan_in`` (uniform in ±1/sqrt(fan_in), PyTorch's and DiffAI's default),
    ``zeros`` or ``ones``. ``fan_in`` is the fan-in used by that init.
    """

    shape: Shape
    init: str = "fan_in"
    fan_in: int = 1
    buffer: bool = False


@dataclass(frozen=True)
class OpSpec:
    """One op of the catalog."""

    name: str
    category: str  # input | layer | activation | pooling | structure | directive
    attrs: tuple[Attr, ...]
    shape_fn: Callable[[Sequence[Shape], Attrs], Shape]
    doc: str
    params_fn: Callable[[Shape, Attrs], dict[str, ParamSpec]] | None = None
    arity: int | None = 1  # None: any number of inputs (branches)
    aliases: tuple[str, ...] = ()
    random: bool = False  # draws random numbers in training mode
    attr_index: dict[str, Attr] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for a in self.attrs:
            self.attr_index[a.name] = a
            for al in a.aliases:
                self.attr_index[al] = a

    def params(self, in_shape: Shape, attrs: Attrs) -> dict[str, ParamSpec]:
        return self.params_fn(in_shape, attrs) if self.params_fn else {}

    def default_attrs(self) -> dict[str, Any]:
        return {a.name: a.default for a in self.attrs if not a.required}


# --------------------------------------------------------------------------- shape helpers


def _one(shapes: Sequence[Shape]) -> Shape:
    return shapes[0]


def _need_rank(op: str, s: Shape, rank: int, help: str | None = None) -> None:
    if len(s) != rank:
        want = {1: "[features]", 3: "[channels, height, width]"}.get(rank, f"rank {rank}")
        raise ShapeError(f"{op} expects an input of shape {want}, but it receives {list(s)}", help)


def _conv_out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _pool_stride(attrs: Attrs) -> tuple[int, int]:
    return attrs["stride"] if attrs.get("stride") is not None else attrs["kernel_size"]


def linear_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    s = _one(shapes)
    _need_rank("Linear", s, 1, "insert Flatten() before Linear")
    return (a["out_features"],)


def linear_params(s: Shape, a: Attrs) -> dict[str, ParamSpec]:
    p = {"weight": ParamSpec((a["out_features"], s[0]), "fan_in", s[0])}
    if a["bias"]:
        p["bias"] = ParamSpec((a["out_features"],), "fan_in", s[0])
    return p


def conv2d_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    s = _one(shapes)
    _need_rank("Conv2d", s, 3, "Conv2d works on images; remove the Flatten() before it")
    c, h, w = s
    g = a["groups"]
    if c % g or a["out_channels"] % g:
        raise ShapeError(
            f"Conv2d groups={g} must divide both the input channels ({c}) and out_channels "
            f"({a['out_channels']})"
        )
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = a["kernel_size"], a["stride"], a["padding"], a["dilation"]
    oh, ow = _conv_out(h, kh, sh, ph, dh), _conv_out(w, kw, sw, pw, dw)
    if oh < 1 or ow < 1:
        raise ShapeError(
            f"Conv2d with kernel {kh}x{kw} does not fit the input of spatial size {h}x{w} "
            f"(padding {ph}x{pw}); the output would be {oh}x{ow}",
            "use a smaller kernel or more padding",
        )
    return (a["out_channels"], oh, ow)


def conv2d_params(s: Shape, a: Attrs) -> dict[str, ParamSpec]:
    kh, kw = a["kernel_size"]
    cin = s[0] // a["groups"]
    fan = cin * kh * kw
    p = {"weight": ParamSpec((a["out_channels"], cin, kh, kw), "fan_in", fan)}
    if a["bias"]:
        p["bias"] = ParamSpec((a["out_channels"],), "fan_in", fan)
    return p


def same_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    return _one(shapes)


def flatten_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    return (math.prod(_one(shapes)),)


def reshape_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    s = _one(shapes)
    n = math.prod(s)
    want = list(a["shape"])
    if want.count(-1) > 1:
        raise ShapeError("Reshape allows at most one -1 in its shape", code="E302")
    known = math.prod(v for v in want if v != -1)
    if -1 in want:
        if known == 0 or n % known:
            raise ShapeError(f"Reshape cannot fit {n} elements ({list(s)}) into {want}", code="E302")
        want[want.index(-1)] = n // known
    if math.prod(want) != n:
        raise ShapeError(f"Reshape cannot turn {list(s)} ({n} elements) into {want}", code="E302")
    return tuple(want)


def normalize_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    s = _one(shapes)
    if len(a["mean"]) != len(a["std"]):
        raise ShapeError(f"Normalize has {len(a['mean'])} means but {len(a['std'])} stds", code="E302")
    ch = s[0] if len(s) == 3 else 1
    if len(a["mean"]) not in (1, ch):
        raise ShapeError(
            f"Normalize has {len(a['mean'])} channel constants but the input {list(s)} has {ch} channels",
            f"give 1 or {ch} values to mean and std",
        )
    if any(v == 0 for v in a["std"]):
        raise ShapeError("Normalize std must not contain 0", code="E302")
    return s


def avgpool_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    s = _one(shapes)
    _need_rank("AvgPool2d", s, 3)
    (kh, kw), (sh, sw), (ph, pw) = a["kernel_size"], _pool_stride(a), a["padding"]
    oh, ow = _conv_out(s[1], kh, sh, ph), _conv_out(s[2], kw, sw, pw)
    if oh < 1 or ow < 1:
        raise ShapeError(f"AvgPool2d kernel {kh}x{kw} does not fit the input {list(s)}")
    return (s[0], oh, ow)


def maxpool_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    s = _one(shapes)
    _need_rank("MaxPool2d", s, 3)
    (kh, kw), (sh, sw), (ph, pw) = a["kernel_size"], _pool_stride(a), a["padding"]
    if ph * 2 > kh or pw * 2 > kw:
        raise ShapeError("MaxPool2d padding must be at most half the kernel size", code="E302")
    oh, ow = _conv_out(s[1], kh, sh, ph), _conv_out(s[2], kw, sw, pw)
    if oh < 1 or ow < 1:
        raise ShapeError(f"MaxPool2d kernel {kh}x{kw} does not fit the input {list(s)}")
    return (s[0], oh, ow)


def adaptive_avgpool_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    s = _one(shapes)
    _need_rank("AdaptiveAvgPool2d", s, 3)
    oh, ow = a["output_size"]
    if oh > s[1] or ow > s[2] or oh < 1 or ow < 1:
        raise ShapeError(f"AdaptiveAvgPool2d output {oh}x{ow} must be between 1x1 and the input {s[1]}x{s[2]}")
    return (s[0], oh, ow)


def batchnorm_shape(rank: int, name: str) -> Callable[[Sequence[Shape], Attrs], Shape]:
    def rule(shapes: Sequence[Shape], a: Attrs) -> Shape:
        s = _one(shapes)
        if len(s) != rank:
            raise ShapeError(
                f"{name} expects an input of rank {rank} per example, but it receives {list(s)}",
                "use BatchNorm1d after Linear and BatchNorm2d after Conv2d",
            )
        return s

    return rule


def batchnorm_params(s: Shape, a: Attrs) -> dict[str, ParamSpec]:
    c = (s[0],)
    p = {
        "running_mean": ParamSpec(c, "zeros", buffer=True),
        "running_var": ParamSpec(c, "ones", buffer=True),
    }
    if a["affine"]:
        p["weight"] = ParamSpec(c, "ones")
        p["bias"] = ParamSpec(c, "zeros")
    return p


def add_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    first = shapes[0]
    for i, s in enumerate(shapes[1:], 1):
        if s != first:
            raise ShapeError(
                f"Add needs every branch to produce the same shape, but branch 0 gives {list(first)} "
                f"and branch {i} gives {list(s)}",
                "make the branches end in the same shape (e.g. a 1x1 Conv2d on the shortcut)",
            )
    return first


def concat_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    ax = a["axis"] - 1  # the DSL counts the batch axis
    rank = len(shapes[0])
    if not 0 <= ax < rank:
        raise ShapeError(f"Concat axis={a['axis']} is out of range for branches of shape {list(shapes[0])}")
    for i, s in enumerate(shapes):
        if len(s) != rank or any(s[d] != shapes[0][d] for d in range(rank) if d != ax):
            raise ShapeError(
                f"Concat(axis={a['axis']}) needs branches that agree except on axis {a['axis']}, "
                f"but branch 0 gives {list(shapes[0])} and branch {i} gives {list(s)}"
            )
    out = list(shapes[0])
    out[ax] = sum(s[ax] for s in shapes)
    return tuple(out)


def corrmaxpool2d_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    s = _one(shapes)
    _need_rank("CorrMaxPool2D", s, 3, "place CorrMaxPool2D before Flatten(), or use CorrMaxK on flat values")
    kh, kw = a["kernel_size"]
    if s[1] < kh or s[2] < kw:
        raise ShapeError(f"CorrMaxPool2D kernel {kh}x{kw} is larger than the image {list(s)}")
    return s


def corrmaxpool3d_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    s = _one(shapes)
    _need_rank("CorrMaxPool3D", s, 3, "place CorrMaxPool3D before Flatten(), or use CorrMaxK on flat values")
    k = a["kernel_size"]
    if min(s) < k:
        raise ShapeError(f"CorrMaxPool3D kernel {k} is larger than the value {list(s)}")
    return s


def elu_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    if a["alpha"] < 0:
        raise ShapeError(f"ELU alpha must be non-negative (got {a['alpha']}); with alpha < 0 it is not monotone",
                         code="E302")
    return _one(shapes)


def input_shape(shapes: Sequence[Shape], a: Attrs) -> Shape:
    return tuple(a["shape"])


# --------------------------------------------------------------------------- the catalog

_ONLY_TRAIN_T = Attr("only_train", "bool", True, "apply only in training mode")
_ONLY_TRAIN_F = Attr("only_train", "bool", False, "apply only in training mode")
_RELU = Attr("relu", "relu", None, "switch the ReLU transformer from here on", aliases=("customRelu",))


def _op(name: str, category: str, attrs: tuple[Attr, ...], shape_fn: Callable, doc: str, **kw: Any) -> OpSpec:
    return OpSpec(name, category, attrs, shape_fn, doc, **kw)


_K = Attr("kernel_size", "pair", REQUIRED, "window size", aliases=("kernel",))
_BIAS = Attr("bias", "bool", True, "learn an additive bias")

CATALOG_LIST: tuple[OpSpec, ...] = (
    _op(
        "Input", "input",
        (Attr("shape", "ints"), Attr("low", "float", 0.0), Attr("high", "float", 1.0)),
        input_shape, "the network input and its valid value range",
    ),
    # layers
    _op("Linear", "layer", (Attr("out_features", "int", doc="output features"), _BIAS),
        linear_shape, "dense layer y = Wx + b on a flat input", params_fn=linear_params),
    _op("Conv2d", "layer", (
        Attr("out_channels", "int"), _K, Attr("stride", "pair", (1, 1)), Attr("padding", "pair", (0, 0)),
        Attr("dilation", "pair", (1, 1)), Attr("groups", "int", 1), _BIAS),
        conv2d_shape, "2-D convolution (zero padding)", params_fn=conv2d_params),
    _op("Normalize", "layer", (Attr("mean", "floats"), Attr("std", "floats")),
        normalize_shape, "per-channel (x - mean) / std"),
    _op("BatchNorm1d", "layer", (Attr("eps", "float", 1e-5), Attr("momentum", "float", 0.1),
                                 Attr("affine", "bool", True)),
        batchnorm_shape(1, "BatchNorm1d"), "batch normalisation of features (per feature)",
        params_fn=batchnorm_params),
    _op("BatchNorm2d", "layer", (Attr("eps", "float", 1e-5), Attr("momentum", "float", 0.1),
                                 Attr("affine", "bool", True)),
        batchnorm_shape(3, "BatchNorm2d"), "batch normalisation of images (per channel)",
        params_fn=batchnorm_params),
    _op("Dropout", "layer", (Attr("p", "float", 0.5),), same_shape,
        "zero elements with probability p while training; identity in eval mode", random=True),
    _op("Identity", "layer", (), same_shape, "no-op"),
    _op("Flatten", "layer", (), flatten_shape, "flatten to [features]"),
    _op("Reshape", "layer", (Attr("shape", "ints"),), reshape_shape, "reshape (one entry may be -1)"),
    # activations
    _op("ReLU", "activation", (), same_shape, "max(x, 0)"),
    _op("LeakyReLU", "activation", (Attr("negative_slope", "float", 0.01),), same_shape,
        "x if x > 0 else negative_slope * x"),
    _op("Sigmoid", "activation", (), same_shape, "1 / (1 + exp(-x))"),
    _op("Tanh", "activation", (), same_shape, "tanh(x)"),
    _op("Softplus", "activation", (), same_shape, "log(1 + exp(x))"),
    _op("ELU", "activation", (Attr("alpha", "float", 1.0),), elu_shape, "x if x > 0 else alpha * (exp(x) - 1)"),
    # pooling
    _op("AvgPool2d", "pooling", (_K, Attr("stride", "opt_pair", None), Attr("padding", "pair", (0, 0))),
        avgpool_shape, "average pooling (zeros of the padding count in the average)"),
    _op("AdaptiveAvgPool2d", "pooling", (Attr("output_size", "pair"),), adaptive_avgpool_shape,
        "average pooling to a fixed output size"),
    _op("MaxPool2d", "pooling", (_K, Attr("stride", "opt_pair", None), Attr("padding", "pair", (0, 0))),
        maxpool_shape, "max pooling (stride defaults to the kernel size)"),
    # structure
    _op("Add", "structure", (), add_shape, "sum of parallel branches (an empty branch is the identity)",
        arity=None),
    _op("Concat", "structure", (Attr("axis", "int", 1, "axis counting the batch axis; 1 = channels"),),
        concat_shape, "concatenation of parallel branches", arity=None),
    # directives (reference/diffai.md §2)
    _op("ToZono", "directive", (_RELU, _ONLY_TRAIN_F), same_shape,
        "turn every box radius into its own generator; the value becomes a pure zonotope"),
    _op("CorrelateAll", "directive", (_RELU, _ONLY_TRAIN_F), same_shape,
        "the same as ToZono: correlate every element"),
    _op("ToHZono", "directive", (_RELU, _ONLY_TRAIN_F), same_shape,
        "turn a pure zonotope back into a hybrid zonotope (box radii stay box radii)"),
    _op("Concretize", "directive", (_ONLY_TRAIN_T,), same_shape,
        "fold every generator into the box radii (decorrelate all)"),
    _op("CorrRand", "directive", (Attr("num_correlate", "int", aliases=("k",)), _ONLY_TRAIN_T), same_shape,
        "correlate num_correlate elements chosen at random", random=True),
    _op("CorrMaxK", "directive", (Attr("num_correlate", "int", aliases=("k",)), _ONLY_TRAIN_T), same_shape,
        "correlate the num_correlate elements with the largest upper bound"),
    _op("CorrMaxPool2D", "directive",
        (_K, _ONLY_TRAIN_T, Attr("max_type", "enum", "head_beta", choices=MAX_TYPES)),
        corrmaxpool2d_shape, "correlate the top-scoring element of each k x k window of each channel"),
    _op("CorrMaxPool3D", "directive",
        (Attr("kernel_size", "int", aliases=("kernel",)), _ONLY_TRAIN_T,
         Attr("max_type", "enum", "only_beta", choices=MAX_TYPES)),
        corrmaxpool3d_shape, "correlate the top-scoring element of each k x k x k block"),
    _op("CorrFix", "directive", (Attr("k", "int"), _ONLY_TRAIN_T), same_shape,
        "correlate k evenly spaced fixed elements"),
    _op("DecorrRand", "directive", (Attr("num_decorrelate", "int", aliases=("k",)), _ONLY_TRAIN_T), same_shape,
        "fold num_decorrelate randomly chosen generators into the box radii", random=True),
    _op("DecorrMin", "directive",
        (Attr("num_decorrelate", "int", aliases=("k",)), _ONLY_TRAIN_T, Attr("num_to_keep", "bool", False)),
        same_shape, "fold the generators with the least L1 mass into the box radii "
        "(num_to_keep=true: keep the num_decorrelate largest instead)"),
    _op("ToLinear", "directive",
        (Attr("slope", "enum", None, "lower ReLU slope from here on (default: the analysis's, else adaptive)",
              choices=SLOPES),
         Attr("intermediate", "enum", None, "intermediate bounds by back-substitution (crown) or IBP (ibp)",
              choices=("crown", "ibp")),
         _ONLY_TRAIN_F), same_shape,
        "from here on, bound by back-substitution of linear bounds over the box reached here (CROWN family)"),
    _op("DeepLoss", "directive", (Attr("bw", "schedule", 0.01), Attr("act", "enum", "relu", choices=("relu",))),
        same_shape, "add bw * deep_loss(value here) to the training loss (training only)"),
    _op("IdentLoss", "directive", (Attr("bw", "schedule", 0.01), Attr("act", "enum", "relu", choices=("relu",))),
        same_shape, "identity (keeps a model's layout when a DeepLoss is removed)"),
)

CATALOG: dict[str, OpSpec] = {op.name: op for op in CATALOG_LIST}
for _spec in CATALOG_LIST:
    for _alias in _spec.aliases:
        CATALOG[_alias] = _spec

#: names users may call as layers/directives (Input and the block ops are written with syntax)
CALLABLE_OPS = tuple(n for n, s in CATALOG.items() if s.category not in ("input", "structure"))
BLOCK_OPS = ("Add", "Concat")


def lookup(name: str) -> OpSpec | None:
    """Return the op called ``name``, or None."""
    return CATALOG.get(name)
