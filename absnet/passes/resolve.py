"""Resolve names and arguments: DSL calls → catalog ops with typed attributes, parameters → values.

Rules:

- A layer call ``Name(pos, key=value)`` is looked up in the op catalog (:mod:`absnet.ir.ops`).
  Positional arguments bind to the op's attributes in declaration order; keywords match an
  attribute's name or one of its aliases. Each value is evaluated against the parameters in scope
  and checked with ``Attr.coerce``; omitted attributes take the catalog default.
- An attribute of kind ``schedule`` may hold a schedule call; it is resolved with
  :func:`absnet.goals.schedules.resolve_schedule` and stored as a ``Schedule`` object.
- An ``enum``/``relu`` attribute also accepts a bare choice name (``relu=NIPS``).
- Network and block parameters bind like call arguments; defaults may use earlier parameters.
- ``train`` settings are checked against :data:`TRAIN_KEYS` but not executed.

Codes: E201 unknown name (layer, block, network, schedule), E202 unknown keyword argument,
E204 given twice, E205 missing required argument, E206 wrong value, E207 unknown parameter name,
E208 too many positional arguments, E209 positional after keyword, E210 misplaced or malformed
``input``, E211 defined twice, E212 structure op used as a layer (or branches on a layer),
E213 bad arithmetic, E214 import failure, E215 recursive block, E216 unknown train setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic, Span, did_you_mean
from absnet.goals.schedules import Const, Schedule, resolve_schedule
from absnet.grammar import ast
from absnet.grammar.evaluate import UNKNOWN, Slot, bind_args, contains_unknown, describe, evaluate
from absnet.ir.ops import RELU_VARIANTS, AttrError, OpSpec

#: attributes that must be > 0 (beyond their type); ``padding`` must be >= 0
_POSITIVE = {"out_features", "out_channels", "kernel_size", "stride", "dilation", "groups", "output_size",
             "num_correlate", "num_decorrelate", "k"}
MAX_REPEAT = 10_000
#: train settings written as Name or Name(...)
_CALL_KEYS = ("data", "optimizer", "goal", "test", "network", "lr_schedule")


def op_slots(spec: OpSpec) -> list[Slot]:
    """The argument slots of an op (its attributes in positional order)."""
    return [
        Slot(a.name, a.required, a.aliases, None if a.required else describe(a.default)) for a in spec.attrs
    ]


def param_slots(params: Sequence[ast.Param]) -> list[Slot]:
    """The argument slots of a network or block."""
    return [Slot(p.name, p.default is None) for p in params]


def _attr_value(spec: OpSpec, name: str, expr: ast.Expr, env: Mapping[str, Any], where: str) -> Any:
    attr = spec.attr_index[name]
    if attr.kind == "schedule" and isinstance(expr, ast.Call):
        return resolve_schedule(expr, env, where)
    if attr.kind in ("enum", "relu") and isinstance(expr, ast.Name) and expr.name not in env:
        choices = attr.choices if attr.kind == "enum" else RELU_VARIANTS
        if expr.name in choices:
            return expr.name
    return evaluate(expr, env, where)


def resolve_op_call(
    call: ast.Call, spec: OpSpec, env: Mapping[str, Any], where: str = ""
) -> tuple[dict[str, Any] | None, list[Diagnostic]]:
    """Bind and check the arguments of a call to ``spec``.

    Returns:
        The complete attributes (defaults filled in, values coerced) — or None when there were
        problems or a value is not known yet — and the problems found.
    """
    bound, diags = bind_args(call, op_slots(spec), spec.name)
    attrs = spec.default_attrs()
    complete = True
    for name, arg in bound.items():
        try:
            value = _attr_value(spec, name, arg.value, env, where)
        except AbsnetError as e:
            diags.extend(e.diagnostics)
            continue
        if contains_unknown(value):
            complete = False
            continue
        attr = spec.attr_index[name]
        try:
            attrs[name] = attr.coerce(value)
        except AttrError as e:
            diags.append(Diagnostic(
                "E206", f"wrong value for argument '{name}' of {spec.name}: {e}", arg.value.span,
                help=_kind_help(attr.kind),
            ))
            continue
        problem = _range_problem(spec, name, attrs[name])
        if problem:
            diags.append(Diagnostic("E206", problem, arg.value.span))
    if diags or not complete:
        return None, diags
    return {a.name: attrs[a.name] for a in spec.attrs}, diags


def _kind_help(kind: str) -> str | None:
    return {
        "pair": "write one integer (3) or two ([3, 5])",
        "ints": "write a list such as [1, 28, 28]",
        "floats": "write a number or a list such as [0.5, 0.5, 0.5]",
        "str": "strings are written in double quotes",
        "schedule": "write a number or a schedule such as Lin(0, 1, 10)",
    }.get(kind)


def _range_problem(spec: OpSpec, name: str, value: Any) -> str | None:
    vals = value if isinstance(value, tuple) else (value,)
    if name in _POSITIVE and any(isinstance(v, int) and v <= 0 for v in vals):
        return f"argument '{name}' of {spec.name} must be positive, got {describe(value)}"
    if name == "padding" and any(v < 0 for v in vals):
        return f"argument 'padding' of {spec.name} must not be negative, got {describe(value)}"
    if name == "p" and not 0.0 <= value < 1.0:
        return f"argument 'p' of {spec.name} must be in [0, 1), got {describe(value)}"
    return None


# --------------------------------------------------------------------------- parameters


def default_env(
    params: Sequence[ast.Param], given: Mapping[str, Any], where: str
) -> tuple[dict[str, Any], list[Diagnostic]]:
    """Parameter values: ``given`` ones, else defaults (which may use earlier parameters), else
    :data:`UNKNOWN` (a missing required value is reported by whoever binds the call)."""
    env: dict[str, Any] = {}
    diags: list[Diagnostic] = []
    for p in params:
        if p.name in given:
            env[p.name] = given[p.name]
        elif p.default is not None:
            try:
                env[p.name] = evaluate(p.default, env, where)
            except AbsnetError as e:
                diags.extend(e.diagnostics)
                env[p.name] = UNKNOWN
        else:
            env[p.name] = UNKNOWN
    return env, diags


def call_env(
    call: ast.Call, params: Sequence[ast.Param], what: str, caller_env: Mapping[str, Any], caller_where: str
) -> tuple[dict[str, Any], list[Diagnostic]]:
    """The parameter values a block (or network) receives from ``call``."""
    bound, diags = bind_args(call, param_slots(params), what)
    given: dict[str, Any] = {}
    for name, arg in bound.items():
        try:
            given[name] = evaluate(arg.value, caller_env, caller_where)
        except AbsnetError as e:
            diags.extend(e.diagnostics)
            given[name] = UNKNOWN
    env, more = default_env(params, given, what)
    return env, diags + more


def args_env(
    params: Sequence[ast.Param], args: Mapping[str, Any], what: str, span: Span | None
) -> tuple[dict[str, Any], list[Diagnostic]]:
    """The parameter values of a network instantiated from Python ``args``."""
    names = [p.name for p in params]
    diags: list[Diagnostic] = []
    for k, v in args.items():
        if k not in names:
            sig = ", ".join(names) if names else "no parameters"
            diags.append(Diagnostic("E202", f"{what} has no parameter '{k}'", span,
                                    notes=(f"{what} takes: {sig}",), help=did_you_mean(k, names)))
        elif not _plain(v):
            diags.append(Diagnostic("E206", f"parameter '{k}' of {what} must be a number, string, bool, "
                                    f"list or tuple, got {type(v).__name__}", span))
    env, more = default_env(params, {k: v for k, v in args.items() if k in names}, what)
    for p in params:
        if p.default is None and p.name not in args:
            diags.append(Diagnostic("E205", f"{what} needs a value for its parameter '{p.name}'", span,
                                    help=f"pass it, e.g. args={{'{p.name}': ...}}"))
    return env, diags + more


def _plain(v: Any) -> bool:
    if isinstance(v, list | tuple):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, bool | int | float | str)


def duplicate_params(params: Sequence[ast.Param], what: str) -> list[Diagnostic]:
    """E211 for a parameter declared twice."""
    seen: dict[str, ast.Param] = {}
    out = []
    for p in params:
        if p.name in seen:
            out.append(Diagnostic("E211", f"parameter '{p.name}' of {what} is declared twice", p.span,
                                  notes=(f"first declared at {seen[p.name].span}",)))
        seen.setdefault(p.name, p)
    return out


# --------------------------------------------------------------------------- train blocks


@dataclass(frozen=True)
class TrainKey:
    """A setting a ``train`` block may contain."""

    many: bool  # may take several values / appear several times
    doc: str


TRAIN_KEYS: dict[str, TrainKey] = {
    "network": TrainKey(False, "the network to train: Name or Name(param=value, ...)"),
    "data": TrainKey(False, "the dataset, e.g. mnist(batch=128, test_batch=500)"),
    "epsilon": TrainKey(False, "the ambient width in input units: a number or a schedule"),
    "goal": TrainKey(False, "the training goal, e.g. LinMix(a=IFGSM(k=2), b=Box(), bw=0.1)"),
    "test": TrainKey(True, "test goals/analyses, e.g. PGD(k=20), HBox()"),
    "test_epsilon": TrainKey(False, "the width the tests use (default: the largest value of epsilon)"),
    "test_every": TrainKey(False, "run the tests every n epochs (default 1; 0: only at the end)"),
    "optimizer": TrainKey(False, "the optimiser, e.g. Adam(lr=0.001) or SGD(lr=0.1, momentum=0.9)"),
    "lr_schedule": TrainKey(False, "the learning-rate schedule, e.g. MultiStep(milestones=[15, 25])"),
    "grad_clip": TrainKey(False, "clip the global gradient norm to this value (default: no clipping)"),
    "sync_bn": TrainKey(False, "true: BatchNorm's batch statistics are over the global batch of every process "
                               "(default false: each process's own)"),
    "accumulate": TrainKey(False, "sum the gradients of n micro-batches (each of data batch) per optimiser step "
                                  "(default 1)"),
    "epochs": TrainKey(False, "the number of epochs (a positive integer)"),
    "seed": TrainKey(False, "the random seed (an integer)"),
}


@dataclass(frozen=True)
class TrainSpec:
    """A checked (not executed) ``train`` block. Goals, tests, data and optimizer stay expressions."""

    name: str
    span: Span
    settings: Mapping[str, tuple[ast.Expr, ...]]
    network: str | None = None
    network_args: Mapping[str, Any] = field(default_factory=dict)
    epsilon: float | Schedule | None = None
    epochs: int | None = None
    seed: int | None = None
    test_every: int | None = None
    grad_clip: float | None = None
    accumulate: int | None = None
    sync_bn: bool | None = None
    test_epsilon: float | None = None

    @property
    def goals(self) -> tuple[ast.Expr, ...]:
        return self.settings.get("goal", ())

    @property
    def tests(self) -> tuple[ast.Expr, ...]:
        return self.settings.get("test", ())

    @property
    def data(self) -> ast.Expr | None:
        return self.settings.get("data", (None,))[0]

    @property
    def optimizer(self) -> ast.Expr | None:
        return self.settings.get("optimizer", (None,))[0]


def resolve_train(
    train: ast.TrainDef, networks: Mapping[str, ast.NetworkDef]
) -> tuple[TrainSpec, list[Diagnostic]]:
    """Check a ``train`` block: known keys, the network exists, simple values have the right type."""
    diags: list[Diagnostic] = []
    settings: dict[str, tuple[ast.Expr, ...]] = {}
    first: dict[str, ast.Setting] = {}
    for s in train.settings:
        key = TRAIN_KEYS.get(s.key)
        if key is None:
            diags.append(Diagnostic("E216", f"unknown train setting '{s.key}'", s.key_span,
                                    notes=(f"settings: {', '.join(TRAIN_KEYS)}, import",),
                                    help=did_you_mean(s.key, TRAIN_KEYS)))
            continue
        if s.key in first and not key.many:
            diags.append(Diagnostic("E204", f"setting '{s.key}' is given twice", s.key_span,
                                    notes=(f"first given at {first[s.key].key_span}",)))
            continue
        if len(s.values) > 1 and not key.many:
            diags.append(Diagnostic("E206", f"setting '{s.key}' takes one value, got {len(s.values)}",
                                    s.values[1].span))
            continue
        first.setdefault(s.key, s)
        settings[s.key] = settings.get(s.key, ()) + s.values
    out: dict[str, Any] = {}
    for key, values in settings.items():
        for v in values:
            if key in _CALL_KEYS and not isinstance(v, ast.Name | ast.Call):
                diags.append(Diagnostic("E206", f"setting '{key}' expects a name or a call", v.span,
                                        help=TRAIN_KEYS[key].doc))
                break
        else:
            try:
                _train_value(key, values[0], networks, out)
            except AbsnetError as e:
                diags.extend(e.diagnostics)
    if "network" not in first:
        diags.append(Diagnostic("E205", f"train {train.name} does not say which network to train",
                                train.name_span, help="add a line such as: network ConvSmall"))
    return TrainSpec(train.name, train.span, settings, **out), diags


def _train_value(key: str, v: ast.Expr, networks: Mapping[str, ast.NetworkDef], out: dict[str, Any]) -> None:
    if key == "network":
        assert isinstance(v, ast.Name | ast.Call)
        net = networks.get(v.name)
        span = v.span if isinstance(v, ast.Name) else v.name_span
        if net is None:
            raise AbsnetError(Diagnostic(
                "E201", f"unknown network '{v.name}'", span,
                notes=(f"networks visible here: {', '.join(networks) or 'none (import a file?)'}",),
                help=did_you_mean(v.name, networks),
            ))
        out["network"] = net.name
        if isinstance(v, ast.Call):
            env, diags = call_env(v, net.params, f"network {net.name}", {}, "this train block")
            if diags:
                raise AbsnetError(diags)
            given = {a.name for a in v.args if a.name} | {p.name for p in net.params[: len(v.positional)]}
            out["network_args"] = {k: val for k, val in env.items() if k in given}
    elif key == "epsilon":
        sched = resolve_schedule(v, {}, "this train block")
        if sched.bounds()[0] < 0:
            raise AbsnetError(Diagnostic("E206", "epsilon must not be negative", v.span))
        out["epsilon"] = sched.c if isinstance(sched, Const) else sched
    elif key in ("epochs", "seed", "test_every", "accumulate"):
        val = evaluate(v, {}, "this train block")
        low = 1 if key in ("epochs", "accumulate") else 0
        if isinstance(val, bool) or not isinstance(val, int) or val < low:
            kind = "a positive integer" if low else "a non-negative integer"
            msg = f"setting '{key}' expects {kind}, got {describe(val)}"
            raise AbsnetError(Diagnostic("E206", msg, v.span))
        out[key] = val
    elif key == "sync_bn":
        val = evaluate(v, {}, "this train block")
        if not isinstance(val, bool):
            raise AbsnetError(Diagnostic("E206", f"setting 'sync_bn' expects true or false, got {describe(val)}",
                                         v.span))
        out[key] = val
    elif key in ("grad_clip", "test_epsilon"):
        val = evaluate(v, {}, "this train block")
        inclusive = key == "test_epsilon"  # a zero test width is allowed, a zero clip norm is not
        if isinstance(val, bool) or not isinstance(val, int | float) or val < 0 or (val == 0 and not inclusive):
            want = ">= 0" if inclusive else "> 0"
            msg = f"setting '{key}' expects a number {want}, got {describe(val)}"
            raise AbsnetError(Diagnostic("E206", msg, v.span))
        out[key] = float(val)
