"""ONNX training-step graphs: loss, gradients and one optimiser update in one standalone graph.

The step is θ' = update(θ, s, ∇_θ L(θ; x, y, ε)), with L the batch mean of the goal's per-example
loss (``absnet.goals``: cross-entropy for ``Point()``; the HBox-family loss of the abstract output
for ``Box()``, ``HBox()``, ``ZNIPS()``, …; a DList/Mix/LinMix sums its members' losses weighted by
the graph input ``goal_weights``, which the caller evaluates from the goal's schedules at each step,
:func:`goal_inputs`; the linear-bound goals' CE(−lb, y), with CROWN_IBP's κ as leaf weights and a
scheduled β as the input ``goal_betas``), computed by the same rules, training-mode plan and loss
functions (``goals/losses.py``, facade-based) as the torch backend, staged with
:class:`~absnet.backends.onnx.grad.TrainOps`. Parameters are graph *inputs*, so nothing that depends
on them is constant-folded; ∇_θ L is reverse mode over the recorded nodes (``grad.py``).

Optimisers (torch.optim semantics, weight_decay λ, g ← ∇ + λθ):
- ``sgd``: b ← μ·b + g (b starts at 0, so the first step is b = g as in torch); θ ← θ − lr·b, or
  with ``nesterov`` θ ← θ − lr·(g + μ·b). State ``<p>.momentum_buffer`` (absent when μ = 0).
- ``adam``: t ← t + 1; m ← m + (1 − β₁)(g − m); v ← β₂v + (1 − β₂)g²;
  θ ← θ − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + eps), the bias corrections in float64 as torch does.
  State ``<p>.exp_avg``, ``<p>.exp_avg_sq`` and the scalar ``step`` (steps taken, float32).
- ``adamw``: Adam with decoupled decay, θ ← θ·(1 − lr·λ) before the Adam step (g not decayed).
``grad_clip`` c scales every gradient by min(1, c / (‖∇‖₂ + 1e-6)) before the decay, as
``torch.nn.utils.clip_grad_norm_`` does.

I/O contract (opset 17, batch axis N dynamic): inputs ``input`` (N, *shape) float32, ``label`` (N,)
int64, ``epsilon`` () float32 (unused by Point), ``lr`` () float32, for combinations
``goal_weights`` (L,) float32, for CROWN_IBP goals with a scheduled β ``goal_betas`` (B,), for
DeepLoss directives with a scheduled bw ``goal_deep`` (P,), then
every parameter by its ``state_dict`` key and every state tensor; outputs ``loss`` () and
``next.<name>`` for every parameter and state input (feed them back as ``<name>``), with
``gradients_out=True`` also ``grad.<param>``, with ``correct=True`` also ``correct`` () int64
(examples the clean forward in training mode classifies right) and BatchNorm running statistics
as inputs with their ``next.*`` outputs.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

from absnet.backends.onnx.emit import BatchDim, StagingError, Value, onnx_type
from absnet.backends.onnx.export import DEFAULT_OPSET, graph_stats, label_onehot, propagate, session, stage_parameters
from absnet.backends.onnx.grad import TrainOps, gradients
from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.goals.abstract import AbstractGoal
from absnet.goals.attacks import Attack
from absnet.goals.base import Goal, GoalContext, value_of
from absnet.goals.combinators import DList
from absnet.goals.linear import BETA_SKIP, CrownIbpGoal, LinearGoal, ibp_margin_lower, margin_cross_entropy
from absnet.goals.losses import abstract_loss, point_cross_entropy
from absnet.goals.regions import PointGoal
from absnet.goals.schedules import Const, Schedule, as_schedule
from absnet.transformers import margins as M

NEXT = "next."
DATA_INPUTS = ("input", "label", "epsilon", "lr")
WEIGHTS = "goal_weights"  # (L,) input of combinations: the weight of each of goal_leaves(goal) now
BETAS = "goal_betas"  # (B,) input: β of each CROWN_IBP leaf whose β is a schedule
DEEP = "goal_deep"  # (P,) input: the bw of each DeepLoss position whose bw is a schedule, now (≥ 0)
GOAL_INPUTS = (WEIGHTS, BETAS, DEEP)
CLEAN = PointGoal("Point")
OPTIMIZERS = ("sgd", "adam", "adamw")


def _error(message: str, help: str | None = None) -> AbsnetError:
    return AbsnetError(Diagnostic("E502", message, help=help))


def _goal(goal: Goal | str) -> Goal:
    if isinstance(goal, str):
        from absnet.goals.catalog import parse_goal

        return parse_goal(goal)
    return goal


def _number(s: Schedule | float | None, what: str) -> float | None:
    if s is None or isinstance(s, int | float):
        return s
    if isinstance(s, Const):
        return s.value(0.0, random.Random(0))
    raise _error(f"{what}={s} is a schedule: a training-step graph takes constant goal arguments",
                 help="use a number here; the graph's epsilon and lr inputs vary per step")


def _propagate(net: Any, value: Any, analysis: Any, ops: TrainOps, params: Mapping[str, Mapping[str, Value]],
               stats: dict[str, Value] | None = None, deep: list[tuple[Any, Any]] | None = None) -> Any:
    """``export.propagate`` in training mode with the parameters as graph inputs. With ``stats``, the
    running statistics this pass computes are put there by state_dict key (the key is the name of the
    buffer's graph input); DeepLoss's (bw, per-example loss) pairs go to ``deep``."""
    aux: list[tuple[Any, Any]] = []

    def setter(node_id: str) -> Any:
        def record(name: str, v: Value) -> None:
            assert stats is not None
            stats[params[node_id][name].name or name] = v

        return record

    out = propagate(net, value, analysis, ops, training=True, params=params, aux=aux, time=0.0,
                    set_buffer=None if stats is None else setter)
    if aux and deep is None:
        raise _error("DeepLoss regularisers on a clean pass are not part of training-step graphs",
                     help="train this network with absc train (torch)")
    if deep is not None:
        deep.extend(aux)
    return out


RUNNING = ("running_mean", "running_var")  # buffers a training step moves (BatchNorm)


def _parameters(net: Any, ops: TrainOps, running: bool) -> tuple[dict[str, dict[str, Value]], dict[str, Value],
                                                                  dict[str, Value]]:
    """Per node, its parameters as graph inputs (other buffers as constants); the trainable inputs
    by key; and, with ``running``, the running statistics as graph inputs by key (else constants)."""
    inputs: dict[str, Value] = {}
    buffers: dict[str, Value] = {}

    def stage(key: str, t: torch.Tensor) -> Value:
        if isinstance(t, torch.nn.Parameter) and t.requires_grad:
            inputs[key] = ops.input(key, tuple(t.shape), batched=False)
            return inputs[key]
        if running and key.rsplit(".", 1)[-1] in RUNNING:
            buffers[key] = ops.input(key, tuple(t.shape), batched=False)
            return buffers[key]
        return ops.known(t.detach().cpu().float().numpy(), hint=key)

    return stage_parameters(net, stage), inputs, buffers


def goal_leaves(goal: Goal) -> list[Goal]:
    """The goals whose losses a training-step graph sums: a DList's (Mix, LinMix) members, flattened;
    CROWN_IBP(kappa=κ) is the clean point (weight κ) and its region (weight 1 − κ)."""
    if isinstance(goal, DList):
        return [leaf for g, _ in goal.pairs for leaf in goal_leaves(g)]
    if isinstance(goal, CrownIbpGoal):
        return [CLEAN, goal]
    return [goal]


def _weights(goal: Goal, ctx: GoalContext) -> list[float]:
    if isinstance(goal, CrownIbpGoal):
        kappa = value_of(goal.kappa, ctx)
        assert kappa is not None
        return [kappa, 1.0 - kappa]
    if not isinstance(goal, DList):
        return [1.0]
    out: list[float] = []
    for (g, _), w in zip(goal.pairs, goal.weights(ctx)):
        out.extend(w * v for v in _weights(g, ctx)) if w > 0 else out.extend(0.0 for _ in goal_leaves(g))
    return out


def _betas(goal: Goal) -> list[CrownIbpGoal]:
    """The CROWN_IBP leaves whose β is a schedule (a graph input); a constant β is part of the graph."""
    return [g for g in goal_leaves(goal) if isinstance(g, CrownIbpGoal) and not isinstance(g.beta, Const)]


def goal_inputs(goal: Goal, ctx: GoalContext) -> dict[str, np.ndarray]:
    """What a step graph of ``goal`` takes besides the batch, ε and lr, at ``ctx``'s time: the weight
    of each of :func:`goal_leaves` (``goal_weights``, as ``DList.terms`` and CROWN_IBP's κ weigh
    them, schedules evaluated in the same order on ``ctx.rng``; a member weighing 0 now is not
    evaluated), the β of each CROWN_IBP with a scheduled β (``goal_betas``) and the bw (≥ 0) of each
    DeepLoss position with a scheduled bw (``goal_deep``)."""
    out = {}
    if isinstance(goal, DList) or len(goal_leaves(goal)) > 1:
        out[WEIGHTS] = np.asarray(_weights(goal, ctx), np.float32)
    betas = _betas(goal)
    if betas:
        out[BETAS] = np.asarray([value_of(g.beta, ctx) for g in betas], np.float32)
    bws = [as_schedule(bw) for bw in _deep_bws(ctx.net, goal)]
    scheduled = [bw for bw in bws if not isinstance(bw, Const)]
    if scheduled:
        out[DEEP] = np.asarray([max(bw.value(ctx.time, ctx.rng), 0.0) for bw in scheduled], np.float32)
    return out


def _linear_leaf(net: Any, goal: LinearGoal, ops: TrainOps, params: Mapping[str, Mapping[str, Value]], x: Value,
                 eps: Value, onehot: Value, betas: dict[int, Value], deep: list[tuple[Any, Any]]) -> Value:
    """CE(−lb, y) of the margin lower bounds over the ε-ball (``goals/linear.py``): the analysis's own
    for CROWN, DeepPoly, …; for CROWN_IBP β·CROWN-IBP + (1 − β)·IBP with the specification folded
    in. At ε = 0 every bound is exact, so this equals the clean cross-entropy torch uses there."""
    if goal.w is not None:
        raise _error(f"{goal} sets its own width w: a training-step graph takes the width as its epsilon input",
                     help=f"export {goal.name}() and feed epsilon")
    if goal.analysis.alpha_iters or goal.analysis.proj:
        raise _error(f"{goal} optimises or samples its bounds: it trains in the torch backend only",
                     help="train with CROWN_IBP(), CROWN() or IBP-style goals here")
    lo, hi = M.input_bounds(ops, x, eps, *net.input_range)
    out = _propagate(net, M.abstract_input(ops, lo, hi, goal.analysis), goal.analysis, ops, params, deep=deep)
    if not isinstance(goal, CrownIbpGoal):
        return margin_cross_entropy(ops, M.margin_lower(ops, out, onehot), onehot)
    beta: Any = betas.get(id(goal))
    if beta is None:
        beta = goal.beta.value(0.0)
        if beta < BETA_SKIP:
            return margin_cross_entropy(ops, ibp_margin_lower(ops, out, onehot), onehot)
        if beta > 1 - BETA_SKIP:
            return margin_cross_entropy(ops, M.margin_lower(ops, out, onehot), onehot)
    crown, ibp = M.margin_lower(ops, out, onehot), ibp_margin_lower(ops, out, onehot)
    mixed = ops.add(ops.mul(beta, crown), ops.mul(ops.sub(1.0, beta), ibp))
    return margin_cross_entropy(ops, mixed, onehot)


def _attack(net: Any, goal: Attack, ops: TrainOps, params: Mapping[str, Mapping[str, Value]], x: Value, eps: Value,
            label: Value, onehot: Value) -> Value:
    """``goals/attacks.attack`` unrolled: k sign steps of size r·ε/k on the cross-entropy's input gradient
    (each by reverse mode over that iteration's forward), momentum μ with per-example L1 normalisation,
    projection onto the ε-ball and the input range, examples stopping once misclassified
    (``should_end``). The result is detached, as torch's: no gradient flows through the attack."""
    if goal.w is not None:
        raise _error(f"{goal} sets its own width w: a training-step graph takes the width as its epsilon input",
                     help=f"export {goal.name}() and feed epsilon")
    if goal.restart:
        raise _error(f"{goal} restarts from random points: a training-step graph has no torch random stream",
                     help=f"use {goal.name}() without restart=, or train with --engine torch")
    lo, hi = net.input_range
    n = len(x.shape)
    unit = (-1,) + (1,) * (n - 1)
    step = ops.mul(eps, goal.r / goal.k)
    low, high = ops.sub(x, eps), ops.add(x, eps)
    point = net.analysis("Point()")
    xa, g, active = x, None, None
    for _ in range(goal.k):
        xv = ops.detach(xa)
        logits = _propagate(net, xv, point, ops, params)
        (grad,) = gradients(ops, ops.sum(point_cross_entropy(ops, logits, onehot), [0]), [xv])
        norm = ops.reshape(ops.sum(ops.abs(grad), list(range(1, n))), unit)
        scaled = ops.div(grad, ops.where(ops.greater(norm, 0.0), norm, 1.0))
        g = scaled if g is None or goal.mu == 0 else ops.add(ops.mul(g, goal.mu), scaled)
        move = ops.mul(step, ops.where(ops.greater(ops.neg(g), 0.0), -1.0, 1.0))  # sgn⁺(0) = +1
        if goal.should_end:
            best = ops.emit("ArgMax", [logits], (logits.shape[0],), np.int64, axis=1, keepdims=0)
            right = ops.emit("Equal", [best, label], best.shape, np.bool_)
            active = right if active is None else ops.emit("And", [active, right], right.shape, np.bool_)
            move = ops.where(ops.reshape(active, unit), move, 0.0)
        xa = ops.add(xa, move)
        xa = ops.minimum(ops.maximum(ops.minimum(ops.maximum(xa, low), high), lo), hi)
    return ops.detach(xa)


def _leaf_loss(net: Any, goal: Goal, ops: TrainOps, params: Mapping[str, Mapping[str, Value]], x: Value,
               eps: Value, label: Value, onehot: Value, logits: dict[str, Value], stats: dict[str, Value] | None,
               betas: dict[int, Value], deep: list[tuple[Any, Any]]) -> Value:
    """The per-example loss (N,) of one leaf goal. The first clean forward's logits are kept in
    ``logits`` and its running statistics in ``stats`` (if not None); an abstract pass's DeepLoss
    pairs go to ``deep``."""
    if isinstance(goal, PointGoal) and goal.name == "Point":
        first = "point" not in logits
        out = _propagate(net, x, net.analysis("Point()"), ops, params, stats if first else None)
        logits.setdefault("point", out)
        return point_cross_entropy(ops, out, onehot)
    if isinstance(goal, LinearGoal):
        return _linear_leaf(net, goal, ops, params, x, eps, onehot, betas, deep)
    if isinstance(goal, Attack):
        xa = _attack(net, goal, ops, params, x, eps, label, onehot)
        return point_cross_entropy(ops, _propagate(net, xa, net.analysis("Point()"), ops, params), onehot)
    if isinstance(goal, AbstractGoal):
        if goal.w is not None:
            raise _error(f"{goal} sets its own width w: a training-step graph takes the width as its epsilon input",
                         help=f"export {goal.name}() and feed epsilon")
        lo, hi = M.input_bounds(ops, x, eps, *net.input_range)
        out = _propagate(net, M.abstract_input(ops, lo, hi, goal.analysis), goal.analysis, ops, params, deep=deep)
        return abstract_loss(ops, out, onehot, cross=goal.cross_loss, log_loss=goal.log_loss, pow_loss=goal.pow_loss,
                             tot_weight=_number(goal.tot_weight, "tot_weight"),  # type: ignore[arg-type]
                             width_weight=_number(goal.width_weight, "width_weight"))  # type: ignore[arg-type]
    raise _error(f"{goal} has no training-step graph yet: supported are Point(), the abstract goals (Box, HBox, "
                 "HSwitch, HSmooth, HNIPS, ZBox, ZSwitch, ZNIPS, ZSmooth), the linear-bound goals (CROWN_IBP, "
                 "CROWN, DeepPoly, FastLin, …), the attacks without restarts (PGD, MI_FGSM, IFGSM, FGSM) and "
                 "their DList/Mix/LinMix combinations",
                 help="train this goal with absc train (torch)")


def _loss(net: Any, goal: Goal, ops: TrainOps, params: Mapping[str, Mapping[str, Value]],
          stats: dict[str, Value] | None = None) -> tuple[Value, Value | None]:
    """The batch-mean training loss of ``goal`` staged on the graph inputs input/label/epsilon (and
    ``goal_weights`` for a combination). With ``stats`` (a dict to fill), also the count of examples
    the clean forward (training mode) classifies right, and that forward's new running statistics
    in ``stats``: the forward torch's trainer runs with ``update_buffers`` on."""
    x = ops.input("input", tuple(net.input_shape))
    label = ops.input("label", (), np.int64)
    eps = ops.input("epsilon", (), batched=False)
    if len(net.output_shape) != 1:
        raise _error(f"training needs flat outputs (classes), but {net.name} outputs {list(net.output_shape)}")
    classes = int(net.output_shape[0])
    _, onehot = label_onehot(ops, label, classes, np.float32)
    leaves = goal_leaves(goal)
    logits: dict[str, Value] = {}
    scheduled = _betas(goal)
    beta_in = ops.input(BETAS, (len(scheduled),), batched=False) if scheduled else None
    betas = {id(g): ops.reshape(ops.slice(beta_in, 0, i, i + 1), ()) for i, g in enumerate(scheduled)}
    deeps: list[list[tuple[Any, Any]]] = [[] for _ in leaves]
    per = [_leaf_loss(net, leaf, ops, params, x, eps, label, onehot, logits, stats, betas, d)
           for leaf, d in zip(leaves, deeps)]
    total = per[0]
    weight: list[Any] = [1.0]
    if isinstance(goal, DList) or len(leaves) > 1:
        weights = ops.input(WEIGHTS, (len(leaves),), batched=False)
        weight = [ops.reshape(ops.slice(weights, 0, i, i + 1), ()) for i in range(len(leaves))]
        total = None
        for w, p in zip(weight, per):
            term = ops.mul(w, p)
            total = term if total is None else ops.add(total, term)
    total = _blend_deep_losses(net, goal, ops, total, weight, deeps)
    count = ops.emit("Cast", [ops.emit("Shape", [total], (1,), np.int64)], (1,), np.float32, to=onnx_type(np.float32))
    loss = ops.div(ops.sum(total, [0]), ops.reshape(count, ()))
    if stats is None:
        return loss, None
    out = logits.get("point")
    if out is None:
        out = _propagate(net, x, net.analysis("Point()"), ops, params, stats)
    best = ops.emit("ArgMax", [out], (out.shape[0],), np.int64, axis=1, keepdims=0)
    right = ops.emit("Cast", [ops.emit("Equal", [best, label], best.shape, np.bool_)], best.shape, np.int64,
                     to=onnx_type(np.int64))
    return loss, ops.emit("ReduceSum", [right], (), np.int64, keepdims=0)


def _deep_bws(net: Any, goal: Goal) -> list[Any]:
    """The bw of each DeepLoss position the goal's abstract passes record, in their order; E502 when the
    passes disagree (then torch's position-by-position sum is not defined)."""
    positions = None
    for leaf in goal_leaves(goal):
        analysis = getattr(leaf, "analysis", None)
        if analysis is None or analysis.kind == "point" or isinstance(leaf, Attack):
            continue
        steps, _ = net.plan(analysis, True)
        bws = [st.node.attrs["bw"] for st in steps if st.node.op == "DeepLoss"]
        if positions is not None and len(bws) != len(positions):
            raise _error(f"the goal {goal}'s abstract passes record different DeepLoss positions",
                         help="train this goal with absc train (torch)")
        positions = bws
    return positions or []


def _blend_deep_losses(net: Any, goal: Goal, ops: TrainOps, total: Value, weight: list[Any],
                       deeps: list[list[tuple[Any, Any]]]) -> Value:
    """``goal_loss``'s DeepLoss blend: per position in network order, L ← (1 − b)·L + b·Σ d over the
    abstract terms computed now (a leaf weighing 0 now is not computed in torch, so its d is masked);
    no blend when no abstract term is computed. Scheduled bws are the input ``goal_deep``."""
    bws = _deep_bws(net, goal)
    if not bws:
        return total
    scheduled = [i for i, bw in enumerate(bws) if not isinstance(as_schedule(bw), Const)]
    deep_in = ops.input(DEEP, (len(scheduled),), batched=False) if scheduled else None
    live = [w if isinstance(w, float) else ops.where(ops.greater(w, 0.0), 1.0, 0.0) for w in weight]
    any_live = None
    summed: list[Any] = [None] * len(bws)
    for w, d in zip(live, deeps):
        if not d:
            continue
        if len(d) != len(bws):
            raise _error("a pass recorded DeepLoss positions the plan does not show")
        any_live = w if any_live is None else ops.maximum(any_live, w)
        for i, (_, v) in enumerate(d):
            v = v if isinstance(w, float) else ops.mul(w, v)
            summed[i] = v if summed[i] is None else ops.add(summed[i], v)
    if any_live is None:
        return total
    for i, (bw, d) in enumerate(zip(bws, summed)):
        if i in scheduled:
            b = ops.reshape(ops.slice(deep_in, 0, scheduled.index(i), scheduled.index(i) + 1), ())
        else:
            b = max(float(as_schedule(bw).value(0.0)), 0.0)
            if b == 0.0:
                continue
        b = b if isinstance(any_live, float) and isinstance(b, float) else ops.mul(any_live, b)
        total = ops.add(ops.mul(ops.sub(1.0, b), total), ops.mul(b, d))
    return total


def _sgd(ops: TrainOps, p: Value, g: Value, lr: Value, name: str, momentum: float, nesterov: bool,
         state: dict[str, Value], out: dict[str, Value]) -> Value:
    if momentum == 0:
        return ops.sub(p, ops.mul(lr, g))
    buf = state[f"{name}.momentum_buffer"] = ops.input(f"{name}.momentum_buffer", p.shape, batched=False)
    b = out[f"{name}.momentum_buffer"] = ops.add(ops.mul(buf, momentum), g)
    return ops.sub(p, ops.mul(lr, ops.add(g, ops.mul(b, momentum)) if nesterov else b))


def _adam_scalars(ops: TrainOps, lr: Value, step: Value, betas: tuple[float, float]) -> tuple[Value, Value]:
    """lr/(1 − β₁ᵗ) and √(1 − β₂ᵗ) as float32, computed in float64 like torch's Python scalars."""
    f64 = onnx_type(np.float64)
    t = ops.emit("Cast", [step], (), np.float64, to=f64)

    def one_minus_pow(beta: float) -> Value:
        pw = ops.emit("Pow", [ops.known(np.array(beta, np.float64)), t], (), np.float64)
        return ops.sub(ops.known(np.array(1.0, np.float64)), pw)

    lr64 = ops.emit("Cast", [lr], (), np.float64, to=f64)
    size = ops.emit("Cast", [ops.div(lr64, one_minus_pow(betas[0]))], (), np.float32, to=onnx_type(np.float32))
    bc2 = ops.emit("Cast", [ops.sqrt(one_minus_pow(betas[1]))], (), np.float32, to=onnx_type(np.float32))
    return size, bc2


def _adam(ops: TrainOps, p: Value, g: Value, name: str, betas: tuple[float, float], eps: float,
          scalars: tuple[Value, Value], state: dict[str, Value], out: dict[str, Value]) -> Value:
    """One Adam update of ``p`` (AdamW's decay is applied to ``p`` before, by the caller)."""
    m_in = state[f"{name}.exp_avg"] = ops.input(f"{name}.exp_avg", p.shape, batched=False)
    v_in = state[f"{name}.exp_avg_sq"] = ops.input(f"{name}.exp_avg_sq", p.shape, batched=False)
    m = out[f"{name}.exp_avg"] = ops.add(m_in, ops.mul(ops.sub(g, m_in), 1.0 - betas[0]))
    v = out[f"{name}.exp_avg_sq"] = ops.add(ops.mul(v_in, betas[1]), ops.mul(ops.mul(g, g), 1.0 - betas[1]))
    size, bc2 = scalars
    denom = ops.add(ops.div(ops.sqrt(v), bc2), eps)
    return ops.sub(p, ops.mul(size, ops.div(m, denom)))


def _clip(ops: TrainOps, grads: list[Value], max_norm: float) -> list[Value]:
    """``torch.nn.utils.clip_grad_norm_``: every gradient times min(1, max_norm / (‖g‖₂ + 1e-6)), ‖g‖₂ over all."""
    total = None
    for g in grads:
        sq = ops.sum(ops.mul(g, g), list(range(len(g.shape))))
        total = sq if total is None else ops.add(total, sq)
    coef = ops.minimum(ops.div(max_norm, ops.add(ops.sqrt(total), 1e-6)), 1.0)
    return [ops.mul(g, coef) for g in grads]


def export_train_step(net: Any, path: str | Path | None = None, goal: Goal | str = "Box()", optimizer: str = "sgd",
                      momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *,
                      weight_decay: float = 0.0, nesterov: bool = False, grad_clip: float | None = None,
                      gradients_out: bool = False, correct: bool = False,
                      opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The ONNX training-step graph of ``net`` for ``goal`` and ``optimizer`` (module docstring).

    The graph is checked (``onnx.checker`` full check and strict shape inference) before it is
    returned. ``net`` is left untouched; its current weights only fix the parameter shapes.

    Raises:
        AbsnetError: E502 for a goal, layer or optimiser the training-step graph does not support.

    >>> import absnet
    >>> net = absnet.compile_source("network N { input [2] range [-1, 1]  Linear(3) ReLU() Linear(2) }")
    >>> model = export_train_step(net, goal="Box()", optimizer="adam")
    >>> [o.name for o in model.graph.output][:3]
    ['loss', 'next.layers.0.weight', 'next.layers.0.bias']
    """
    if optimizer not in OPTIMIZERS:
        raise _error(f"unknown optimizer {optimizer!r}", help="use 'sgd', 'adam' or 'adamw'")
    g_obj = _goal(goal)
    ops = TrainOps(opset=opset)
    per_node, params, buffers = _parameters(net, ops, running=correct)
    stats: dict[str, Value] | None = {} if correct else None
    try:
        loss, n_correct = _loss(net, g_obj, ops, per_node, stats)
        n_forward = len(ops.g.nodes)
        grads = gradients(ops, loss, list(params.values()))
        if grad_clip is not None:
            grads = _clip(ops, grads, grad_clip)
    except StagingError as e:
        raise _error(f"{g_obj} on {net.name}: {e}", help="train this network with absnet train (torch)") from None
    n_backward = len(ops.g.nodes) - n_forward
    lr = ops.input("lr", (), batched=False)
    state: dict[str, Value] = {}
    out: dict[str, Value] = {"loss": loss}
    if n_correct is not None:
        out["correct"] = n_correct
    nxt: dict[str, Value] = {}
    scalars = None
    if optimizer in ("adam", "adamw"):
        step = state["step"] = ops.input("step", (), batched=False)
        nxt["step"] = ops.add(step, 1.0)
        scalars = _adam_scalars(ops, lr, nxt["step"], betas)
    for (name, p), g in zip(params.items(), grads):
        if weight_decay and optimizer != "adamw":
            g = ops.add(g, ops.mul(p, weight_decay))
        if gradients_out:
            out[f"grad.{name}"] = g
        if optimizer == "sgd":
            nxt[name] = _sgd(ops, p, g, lr, name, momentum, nesterov, state, nxt)
        else:
            if weight_decay and optimizer == "adamw":  # decoupled: θ ← θ·(1 − lr·λ) before the Adam step
                p = ops.mul(p, ops.sub(1.0, ops.mul(lr, weight_decay)))
            nxt[name] = _adam(ops, p, g, name, betas, eps, scalars, state, nxt)  # type: ignore[arg-type]
    nxt.update({k: (stats or {}).get(k, v) for k, v in buffers.items()})
    out.update({NEXT + k: nxt[k] for k in [*params, *buffers, *state]})  # in the order of the inputs
    data = [*DATA_INPUTS, *(n for n in GOAL_INPUTS if n in ops.values)]
    inputs = [ops.values[n] for n in data] + list(params.values()) + list(buffers.values()) + list(state.values())
    g_ = ops.g
    for name, v in out.items():
        g_.nodes.append(helper.make_node("Identity", [g_.materialize(v)], [name], name=f"output_{name}"))
    graph = helper.make_graph(g_.nodes, f"{net.name}_train_step", [_value_info(v.name or "", v) for v in inputs],
                              [_value_info(n, v) for n, v in out.items()], initializer=g_.initializers,
                              doc_string=f"absnet training step of {net.name}: goal {g_obj}, optimizer {optimizer}")
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="absnet")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    hyper = {"momentum": momentum, "nesterov": nesterov} if optimizer == "sgd" else {"betas": list(betas), "eps": eps}
    helper.set_model_props(model, {
        "absnet.network": net.name, "absnet.goal": str(g_obj), "absnet.optimizer": optimizer,
        "absnet.optimizer_args": repr({**hyper, "weight_decay": weight_decay, "grad_clip": grad_clip}),
        "absnet.goal_leaves": repr([str(leaf) for leaf in goal_leaves(g_obj)]),
        "absnet.forward_nodes": str(n_forward), "absnet.backward_nodes": str(n_backward),
    })
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    if path is not None:
        onnx.save_model(model, str(path))
    return model


def _value_info(name: str, v: Value) -> onnx.ValueInfoProto:
    dims = ["N" if isinstance(d, BatchDim) else int(d) for d in v.shape]
    return helper.make_tensor_value_info(name, onnx_type(v.dtype), dims)


class OnnxTrainer:
    """Run a training-step graph in onnxruntime, feeding each step's ``next.*`` outputs back.

    Parameters start from ``net``'s state_dict, optimiser state from zeros (torch's too).

    >>> import absnet, numpy as np
    >>> net = absnet.compile_source("network N { input [2] range [-1, 1]  Linear(3) ReLU() Linear(2) }")
    >>> tr = OnnxTrainer(export_train_step(net, goal="Point()"), net)
    >>> loss = tr.step(np.zeros((4, 2), np.float32), np.zeros(4, np.int64), lr=0.1)
    >>> round(float(loss), 2) > 0
    True
    """

    def __init__(self, model: onnx.ModelProto, net: Any, threads: int | None = None):
        self.session = session(model, threads)
        sd = net.state_dict()
        self.state: dict[str, np.ndarray] = {}
        for i in model.graph.input:
            if i.name in DATA_INPUTS or i.name in GOAL_INPUTS:
                continue
            if i.name in sd:
                self.state[i.name] = sd[i.name].detach().cpu().float().numpy().copy()
            else:
                dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
                self.state[i.name] = np.zeros(dims, np.float32)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.goal_inputs = {i.name: i.type.tensor_type.shape.dim[0].dim_value for i in model.graph.input
                            if i.name in GOAL_INPUTS}
        self.last: dict[str, np.ndarray] = {}

    def step(self, x: Any, y: Any, lr: float, epsilon: float = 0.0, goal: Mapping[str, Any] | None = None) -> float:
        """One training step on the batch ``(x, y)``; returns the loss before the update. A graph
        with goal inputs (``goal_weights``, ``goal_betas``) takes them in ``goal``
        (:func:`goal_inputs` at the step's time)."""
        feeds = {"input": np.asarray(x, np.float32), "label": np.asarray(y, np.int64),
                 "epsilon": np.array(epsilon, np.float32), "lr": np.array(lr, np.float32), **self.state}
        given = dict(goal or {})
        for name, n in self.goal_inputs.items():
            if name not in given or np.shape(given[name]) != (n,):
                raise ValueError(f"this step graph takes {name} ({n} values): pass goal=goal_inputs(goal, ctx)")
            feeds[name] = np.asarray(given.pop(name), np.float32)
        if given:
            raise ValueError(f"this step graph has no input {', '.join(given)}")
        res = dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))
        for name in self.state:
            self.state[name] = res[NEXT + name]
        self.last = res
        return float(res["loss"])

    def parameters(self) -> dict[str, torch.Tensor]:
        """The current parameters as tensors keyed like ``state_dict`` (optimiser state left out)."""
        return {k: torch.from_numpy(v.copy()) for k, v in self.state.items()
                if k != "step" and not k.endswith((".momentum_buffer", ".exp_avg", ".exp_avg_sq"))}


def compile_train_target(net: Any, out_path: str | Path, goal: Goal | str = "Box()", optimizer: str = "sgd",
                         eps: float = 0.01, seed: int = 0) -> dict[str, Any]:
    """Write the training-step graph and smoke-test it against torch; stats for the CLI.

    The smoke test runs the step (with gradient outputs) in onnxruntime on a random batch of 2 and
    compares the loss and the gradients with torch's ``goal_loss`` and autograd on ``net`` (in
    training mode, running statistics left alone; ``net`` is not changed).

    Returns ``{"path", "goal", "optimizer", "nodes", "initializers", "bytes", "forward_nodes",
    "backward_nodes", "inputs", "outputs", "export_seconds", "smoke_loss", "smoke_loss_torch",
    "smoke_rel_diff", "smoke_grad_rel_diff"}``; the relative differences are to the torch loss and to
    the largest torch gradient entry.
    """
    from absnet.goals.base import GoalContext
    from absnet.goals.loss import goal_loss

    start = time.perf_counter()
    model = export_train_step(net, out_path, goal=goal, optimizer=optimizer)
    seconds = time.perf_counter() - start
    g = torch.Generator().manual_seed(seed)
    low, high = net.input_range
    x = low + (high - low) * torch.rand((2, *net.input_shape), generator=g)
    y = torch.randint(0, int(net.output_shape[0]), (2,), generator=g)
    trainer = OnnxTrainer(export_train_step(net, goal=goal, optimizer=optimizer, gradients_out=True), net)
    extra = goal_inputs(_goal(goal), GoalContext(net, 0.0, eps, random.Random(seed), torch.Generator()))
    loss = trainer.step(x.numpy(), y.numpy(), lr=0.0, epsilon=eps, goal=extra)
    was, buffers = net.training, net.update_buffers
    net.train()
    net.update_buffers = False
    try:
        ctx = GoalContext(net=net, time=0.0, epsilon=eps, rng=random.Random(seed), generator=g)
        ref_t, _ = goal_loss(_goal(goal), ctx, x, y)
        named = [(k, p) for k, p in net.named_parameters() if p.requires_grad]
        ref_g = torch.autograd.grad(ref_t, [p for _, p in named], allow_unused=True)
    finally:
        net.train(was)
        net.update_buffers = buffers
    ref = float(ref_t.detach())
    scale = max([float(t.abs().max()) for t in ref_g if t is not None] + [1e-12])
    gdiff = max([float(np.abs(trainer.last[f"grad.{k}"] - (0 if t is None else t.numpy())).max()) / scale
                 for (k, _), t in zip(named, ref_g)] + [0.0])
    props = {p.key: p.value for p in model.metadata_props}
    shape = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    return {
        "path": str(out_path), "goal": props["absnet.goal"], "optimizer": optimizer, **graph_stats(model),
        "forward_nodes": int(props["absnet.forward_nodes"]), "backward_nodes": int(props["absnet.backward_nodes"]),
        "inputs": {i.name: shape(i) for i in model.graph.input},
        "outputs": {o.name: shape(o) for o in model.graph.output},
        "export_seconds": seconds, "smoke_loss": loss, "smoke_loss_torch": ref,
        "smoke_rel_diff": abs(loss - ref) / max(abs(ref), 1e-12) if math.isfinite(ref) else math.nan,
        "smoke_grad_rel_diff": gdiff,
    }
