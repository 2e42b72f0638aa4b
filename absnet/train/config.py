"""Resolve a ``train`` block into a :class:`TrainConfig`: the dataset, goal, tests, optimiser and schedules.

Every setting is checked against a typed table, never evaluated as Python; all problems are
reported at once with the span of the offending value. ``--set key=value`` overrides are parsed
with the same grammar and replace (or, for ``data.batch=32``-style keys, amend) the block's
settings before anything is resolved.

>>> text = '''train T {
...   network N
...   data digits(batch=32)
...   epsilon 0.1
...   goal Mix(a=Point(), b=Box(), bw=0.5)
... }
... network N { input [1, 8, 8] range [0, 1] Flatten() Linear(10) }'''
>>> cfg = build_config(text, overrides=["epochs=2", "data.batch=16"])
>>> cfg.data.batch, cfg.epochs, str(cfg.goal), [str(t) for t in cfg.tests]
(16, 2, 'Mix(a=Point(), b=Box(), bw=0.5)', ['MI_FGSM(k=20, r=2)', 'HBox()'])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic, SourceMap, did_you_mean
from absnet.goals.schedules import Schedule, as_schedule
from absnet.grammar import ast
from absnet.grammar.evaluate import Slot, bind_args, describe, evaluate
from absnet.grammar.parser import parse_expr
from absnet.passes.resolve import TRAIN_KEYS, TrainSpec, resolve_train

DEFAULT_TESTS = ("MI_FGSM(k=20, r=2)", "HBox()")
DEFAULT_OPTIMIZER = "Adam(lr=0.001)"


# --------------------------------------------------------------------------- typed call tables


@dataclass(frozen=True)
class P:
    """A parameter of a data/optimizer/lr_schedule call: ``kind`` int, number, bool, ints, str, numbers."""

    name: str
    kind: str
    default: Any = None
    required: bool = False
    low: float | None = None  # inclusive lower bound for numbers
    choices: tuple[str, ...] = ()


_DATA_PARAMS = (
    P("batch", "int", 64, low=1), P("test_batch", "int", 256, low=1),
    P("augment", "str", None, choices=("none", "flip", "crop", "crop_flip")),
    P("train_size", "int", None, low=1), P("test_size", "int", None, low=1),
)
OPTIMIZERS: dict[str, tuple[P, ...]] = {
    "Adam": (P("lr", "number", 0.001, low=0), P("betas", "numbers", (0.9, 0.999)),
             P("weight_decay", "number", 0.0, low=0), P("eps", "number", 1e-8, low=0)),
    "AdamW": (P("lr", "number", 0.001, low=0), P("betas", "numbers", (0.9, 0.999)),
              P("weight_decay", "number", 0.01, low=0), P("eps", "number", 1e-8, low=0)),
    "SGD": (P("lr", "number", 0.1, low=0), P("momentum", "number", 0.9, low=0),
            P("nesterov", "bool", False), P("weight_decay", "number", 0.0, low=0)),
}
LR_SCHEDULES: dict[str, tuple[P, ...]] = {
    "Constant": (),
    "MultiStep": (P("milestones", "ints", None, required=True), P("gamma", "number", 0.1, low=0)),
    "Step": (P("step", "int", 10, low=1), P("gamma", "number", 0.5, low=0), P("start", "int", 0, low=0)),
    "Cosine": (P("min_lr", "number", 0.0, low=0),),
}
#: augmentation used when the data call does not say (standard for the 32×32 colour sets)
DEFAULT_AUGMENT = {"cifar10": "crop_flip", "cifar100": "crop_flip", "svhn": "crop"}


#: help for arguments users carry over from other optimisers
_HINTS = {
    ("Adam", "momentum"): "Adam's betas play the role of momentum; for SGD with momentum write SGD(momentum=0.9)",
    ("AdamW", "momentum"): "AdamW's betas play the role of momentum; for SGD with momentum write SGD(momentum=0.9)",
    ("SGD", "betas"): "betas belong to Adam/AdamW; SGD takes momentum=... and nesterov=true|false",
}


@dataclass(frozen=True)
class DataConfig:
    name: str
    batch: int = 64
    test_batch: int = 256
    augment: str = "none"
    train_size: int | None = None
    test_size: int | None = None


@dataclass(frozen=True)
class OptimizerConfig:
    name: str
    args: Mapping[str, Any]

    def build(self, params: Any) -> Any:
        import torch

        a = dict(self.args)
        if "betas" in a:
            a["betas"] = tuple(a["betas"])
        return {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "SGD": torch.optim.SGD}[self.name](params, **a)

    def __str__(self) -> str:
        return _show(self.name, self.args)


@dataclass(frozen=True)
class LRSchedule:
    """A learning-rate multiplier per epoch, stepped once per epoch (a pure function of the epoch,
    so resuming needs no scheduler state)."""

    name: str = "Constant"
    args: Mapping[str, Any] = field(default_factory=dict)

    def lr(self, base: float, completed: int, epochs: int) -> float:
        """The learning rate for the epoch after ``completed`` epochs (0-based) of ``epochs``."""
        a = self.args
        if self.name == "MultiStep":
            return base * float(a["gamma"]) ** sum(1 for m in a["milestones"] if completed >= m)
        if self.name == "Step":
            return base * float(a["gamma"]) ** (max(0, completed - a["start"]) // a["step"])
        if self.name == "Cosine":
            lo = float(a["min_lr"])
            return lo + (base - lo) * (1 + math.cos(math.pi * completed / max(epochs, 1))) / 2
        return base

    def __str__(self) -> str:
        return _show(self.name, self.args)


@dataclass
class TrainConfig:
    """Everything ``absc train`` needs, resolved and checked."""

    name: str
    file: str
    text: str
    network: str
    network_args: Mapping[str, Any]
    data: DataConfig
    epsilon: Schedule
    test_epsilon: float
    goal: Any  # absnet.goals.base.Goal
    tests: list[Any]
    optimizer: OptimizerConfig
    lr_schedule: LRSchedule
    grad_clip: float | None
    epochs: int
    seed: int
    test_every: int
    module: ast.Module | None = None
    overrides: tuple[str, ...] = ()
    accumulate: int = 1  # micro-batches per optimiser step
    sync_bn: bool = False  # BatchNorm batch statistics over every process's part of the batch

    def to_json(self) -> dict[str, Any]:
        """The resolved configuration as written to ``resolved.json``."""
        return {
            "train": self.name, "file": self.file, "network": self.network,
            "network_args": dict(self.network_args), "data": asdict(self.data),
            "epsilon": str(self.epsilon), "test_epsilon": self.test_epsilon, "goal": str(self.goal),
            "tests": [str(t) for t in self.tests], "optimizer": str(self.optimizer),
            "lr_schedule": str(self.lr_schedule), "grad_clip": self.grad_clip, "epochs": self.epochs,
            "seed": self.seed, "test_every": self.test_every, "overrides": list(self.overrides),
            # only when set, so runs written before the setting existed still resume
            **({"accumulate": self.accumulate} if self.accumulate != 1 else {}),
            **({"sync_bn": True} if self.sync_bn else {}),
        }


def _show(name: str, args: Mapping[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:g}"
        if isinstance(v, list | tuple):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return describe(v)

    inner = ", ".join(f"{k}={fmt(v)}" for k, v in args.items())
    return f"{name}({inner})"


# --------------------------------------------------------------------------- resolution


def build_config(
    source: ast.Module | str, name: str | None = None, *, file: str = "<string>",
    overrides: Sequence[str] = (),
) -> TrainConfig:
    """Resolve the ``train`` block ``name`` (None: the only/last one) with ``--set`` overrides.

    Raises:
        AbsnetError: every problem found, with the source lines (overrides quote themselves).
    """
    from absnet.frontend import _module

    module = _module(source, file)
    sources = module.sources or SourceMap()
    trains = module.trains()
    if name is None:
        own = module.own(ast.TrainDef) or list(trains.values())
        if not own:
            raise AbsnetError(Diagnostic("E201", f"{module.file} defines no train block",
                                         help="add one: train Name { network ... data ... goal ... }"), sources)
        train = own[-1]
    elif name not in trains:
        raise AbsnetError(Diagnostic("E201", f"unknown train block '{name}'", None,
                                     notes=(f"train blocks: {', '.join(trains) or 'none'}",),
                                     help=did_you_mean(name, trains)), sources)
    else:
        train = trains[name]
    try:
        train = apply_overrides(train, overrides, sources)
    except AbsnetError as e:
        raise e.with_sources(sources) from None
    spec, diags = resolve_train(train, module.networks())
    parts, more = resolve_settings(spec)
    diags = diags + more
    if diags:
        raise AbsnetError(diags, sources)
    text = sources.texts.get(module.file, "")
    return TrainConfig(name=spec.name, file=module.file, text=text, module=module, overrides=tuple(overrides),
                       **parts)


def check_train(train: ast.TrainDef, networks: Mapping[str, ast.NetworkDef]) -> list[Diagnostic]:
    """All problems of a ``train`` block (keys, network, goals, tests, data, optimiser, schedules)."""
    spec, diags = resolve_train(train, networks)
    return diags + resolve_settings(spec)[1]


def apply_overrides(train: ast.TrainDef, overrides: Sequence[str], sources: SourceMap) -> ast.TrainDef:
    """Replace settings from ``key=value`` strings (``data.batch=32`` amends one argument of a call)."""
    items = list(train.items)
    for text in overrides:
        if "=" not in text:
            raise AbsnetError(Diagnostic("E216", f"--set expects KEY=VALUE, got '{text}'",
                                         help="e.g. --set epochs=3 or --set data.batch=32"))
        key, value = (s.strip() for s in text.split("=", 1))
        top, _, arg = key.partition(".")
        if top not in TRAIN_KEYS:
            raise AbsnetError(Diagnostic("E216", f"--set: unknown train setting '{top}'",
                                         notes=(f"settings: {', '.join(TRAIN_KEYS)}",),
                                         help=did_you_mean(top, TRAIN_KEYS)))
        if top == "test" and not arg and value:  # several test goals: HBox(), PGD(k=20)
            value = f"({value},)"
        expr = parse_expr(value, f"<--set {key}>", sources) if value else None
        if expr is None:
            raise AbsnetError(Diagnostic("E206", f"--set {key}= needs a value"))
        at = next((j for j, it in enumerate(items) if isinstance(it, ast.Setting) and it.key == top), None)
        if arg:
            old = items[at].values[0] if at is not None else None  # type: ignore[union-attr]
            if not isinstance(old, ast.Call | ast.Name):
                raise AbsnetError(Diagnostic("E206", f"--set {key}: the train block has no '{top}' call to amend",
                                             help=f"set the whole value: --set '{top}=Name({arg}={value})'"))
            call = old if isinstance(old, ast.Call) else ast.Call(old.name, (), old.span, old.span)
            args = (*(a for a in call.args if a.name != arg), ast.Arg(arg, expr, expr.span, expr.span))
            expr = replace(call, args=args)
        values = tuple(parse_list(expr)) if top == "test" and not arg else (expr,)
        setting = ast.Setting(top, values, expr.span, expr.span)
        if at is None:
            items.append(setting)
        else:
            items[at] = setting
    return replace(train, items=tuple(items))


def parse_list(expr: ast.Expr) -> list[ast.Expr]:
    """``--set test=HBox(),PGD()`` parses as a tuple: its items are the values."""
    return list(expr.items) if isinstance(expr, ast.TupleExpr) else [expr]


def resolve_settings(spec: TrainSpec) -> tuple[dict[str, Any], list[Diagnostic]]:
    """Resolve the call-valued settings of a checked :class:`TrainSpec` into :class:`TrainConfig` fields."""
    from absnet.goals.catalog import check_test_goal, parse_goal, resolve_goal

    diags: list[Diagnostic] = []
    out: dict[str, Any] = {"network": spec.network, "network_args": dict(spec.network_args)}

    def attempt(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except AbsnetError as e:
            diags.extend(e.diagnostics)
            return None

    missing = [(k, ex) for k, ex in (("data", "data mnist(batch=128)"), ("epsilon", "epsilon 0.1"),
                                      ("goal", "goal Mix(a=Point(), b=Box(), bw=0.5)"))
               if not spec.settings.get(k)]
    if missing:
        names = " and ".join(", ".join(k for k, _ in missing).rsplit(", ", 1))
        diags.append(Diagnostic("E205", f"train {spec.name} does not give its {names}", spec.span,
                                notes=tuple(f"e.g. {ex}" for _, ex in missing),
                                help="add the missing line" + ("s" if len(missing) > 1 else "")))
    if spec.data is not None:
        out["data"] = attempt(_data_config, spec.data)
    out["epsilon"] = as_schedule(spec.epsilon if spec.epsilon is not None else 0.0)
    if spec.goals:
        out["goal"] = attempt(resolve_goal, spec.goals[0])
    tests = []
    if spec.tests:
        for t in spec.tests:
            g = attempt(resolve_goal, t)
            if g is not None and attempt(check_test_goal, g, t.span) is not False:
                tests.append(g)
    else:
        tests = [parse_goal(t) for t in DEFAULT_TESTS]
    out["tests"] = tests
    out["optimizer"] = attempt(_optimizer, spec.optimizer) if spec.optimizer is not None else \
        OptimizerConfig("Adam", _defaults(OPTIMIZERS["Adam"]))
    lr = spec.settings.get("lr_schedule", (None,))[0]
    out["lr_schedule"] = attempt(_lr_schedule, lr) if lr is not None else LRSchedule()
    out["grad_clip"] = spec.grad_clip
    out["accumulate"] = spec.accumulate if spec.accumulate is not None else 1
    out["sync_bn"] = bool(spec.sync_bn)
    out["test_every"] = spec.test_every if spec.test_every is not None else 1
    out["test_epsilon"] = spec.test_epsilon if spec.test_epsilon is not None else out["epsilon"].bounds()[1]
    out["epochs"] = spec.epochs if spec.epochs is not None else 10
    out["seed"] = spec.seed if spec.seed is not None else 1
    return out, diags


def _defaults(params: Sequence[P]) -> dict[str, Any]:
    return {p.name: p.default for p in params if not p.required}


def _bind(expr: ast.Expr, table: Mapping[str, Sequence[P]], what: str) -> tuple[str, dict[str, Any]]:
    """Bind a ``Name(args)`` (or bare ``Name``) against one entry of ``table``."""
    call = expr if isinstance(expr, ast.Call) else ast.Call(expr.name, (), expr.span, expr.span)  # type: ignore[union-attr]
    params = table.get(call.name)
    if params is None:
        raise AbsnetError(Diagnostic("E201", f"unknown {what} '{call.name}'", call.name_span,
                                     notes=(f"{what}s: {', '.join(table)}",), help=did_you_mean(call.name, table)))
    slots = [Slot(p.name, p.required, default_text=None if p.required else describe(p.default)) for p in params]
    bound, diags = bind_args(call, slots)
    diags = [replace(d, help=_HINTS[(call.name, d.message.rsplit("'", 2)[-2])])
             if d.code == "E202" and (call.name, d.message.rsplit("'", 2)[-2]) in _HINTS else d for d in diags]
    values = _defaults(params)
    for p in params:
        arg = bound.get(p.name)
        if arg is None:
            continue
        try:
            values[p.name] = _typed(call.name, p, arg.value)
        except AbsnetError as e:
            diags.extend(e.diagnostics)
    if diags:
        raise AbsnetError(diags)
    return call.name, values


def _typed(owner: str, p: P, expr: ast.Expr) -> Any:
    v = evaluate(expr, {}, "this train block")
    bad = None
    if v is None and not p.required:
        return None
    if p.kind == "int":
        bad = isinstance(v, bool) or not isinstance(v, int)
    elif p.kind == "number":
        bad = isinstance(v, bool) or not isinstance(v, int | float)
    elif p.kind == "bool":
        bad = not isinstance(v, bool)
    elif p.kind == "str":
        bad = not isinstance(v, str) or (p.choices and v not in p.choices)
    elif p.kind in ("ints", "numbers"):
        kinds = int if p.kind == "ints" else int | float
        bad = not isinstance(v, list | tuple) or any(isinstance(x, bool) or not isinstance(x, kinds) for x in v)
    if not bad and p.low is not None and isinstance(v, int | float) and v < p.low:
        bad = True
    if bad:
        want = {"int": "an integer", "number": "a number", "bool": "true or false", "ints": "a list of integers",
                "numbers": "a list of numbers", "str": "a string"}[p.kind]
        if p.choices:
            want = "one of " + ", ".join(f'"{c}"' for c in p.choices)
        if p.low is not None:
            want += f" >= {p.low:g}"
        raise AbsnetError(Diagnostic("E206", f"argument '{p.name}' of {owner} expects {want}, got {describe(v)}",
                                     expr.span))
    return float(v) if p.kind == "number" else (tuple(v) if p.kind in ("ints", "numbers") else v)


def _data_config(expr: ast.Expr) -> DataConfig:
    from absnet.data import DATASETS

    table = {name: _DATA_PARAMS for name in DATASETS}
    name, values = _bind(expr, table, "dataset")
    if values.get("augment") is None:
        values["augment"] = DEFAULT_AUGMENT.get(name, "none")
    return DataConfig(name, **values)


def _optimizer(expr: ast.Expr) -> OptimizerConfig:
    name, values = _bind(expr, OPTIMIZERS, "optimizer")
    if name == "SGD" and values["nesterov"] and values["momentum"] <= 0:
        raise AbsnetError(Diagnostic("E206", "SGD with nesterov=true needs momentum > 0", expr.span))
    return OptimizerConfig(name, values)


def _lr_schedule(expr: ast.Expr) -> LRSchedule:
    name, values = _bind(expr, LR_SCHEDULES, "learning-rate schedule")
    if name == "MultiStep" and list(values["milestones"]) != sorted(values["milestones"]):
        raise AbsnetError(Diagnostic("E206", "MultiStep milestones must be increasing", expr.span))
    return LRSchedule(name, values)


__all__ = ["DataConfig", "LRSchedule", "OptimizerConfig", "TrainConfig", "build_config", "check_train"]
