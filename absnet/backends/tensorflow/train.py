"""Certified-training steps natively in TensorFlow: the goal's loss under ``tf.GradientTape`` and an
optimiser update of ``tf.Variable``s with torch.optim's formulas.

The loss is the ONNX training step's (``backends/onnx/train_step.py``): the batch mean of the goal's
per-example loss, computed by the same training-mode plan, rules and facade loss functions
(``goals/losses.py``: ``point_cross_entropy`` for ``Point()``, ``abstract_loss`` for ``Box()``,
``HBox()``, ``ZNIPS()`` and the rest of the HBox/Z family). Trainable parameters are
``tf.Variable``s initialised from the network's ``state_dict``; buffers (BatchNorm running
statistics) are constants and are not updated, as in the ONNX step.

Optimisers, torch.optim semantics (weight_decay λ: g ← ∇ + λθ; a parameter without a gradient is
skipped, as torch skips ``p.grad is None``):
- ``sgd``: b ← μ·b + g (b starts at 0, so the first step is b = g); θ ← θ − lr·b, or with
  ``nesterov`` θ ← θ − lr·(g + μ·b);
- ``adam``: t ← t + 1; m ← m + (1 − β₁)(g − m); v ← β₂v + (1 − β₂)g²;
  θ ← θ − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + eps), the bias corrections in float64 as torch's;
- ``adamw``: Adam with decoupled decay, θ ← θ·(1 − lr·λ) before the Adam step (g not decayed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from absnet.backends.onnx.export import propagate
from absnet.backends.onnx.train_step import OPTIMIZERS, _goal, _number
from absnet.backends.tensorflow.analysis import check_supported, tf_parameters, to_tf
from absnet.backends.tensorflow.ops import TfOps, require_tensorflow
from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.goals.abstract import AbstractGoal
from absnet.goals.base import Goal
from absnet.goals.losses import abstract_loss, point_cross_entropy
from absnet.goals.regions import PointGoal
from absnet.transformers import margins as M


def _error(message: str, help: str | None = None) -> AbsnetError:
    return AbsnetError(Diagnostic("E505", message, help=help))


class TfTrainer:
    """Train ``net``'s parameters for ``goal`` in TensorFlow; ``step(x, y, lr, epsilon)`` returns the loss.

    ``net`` is left untouched: its ``state_dict`` seeds the variables; read the trained values with
    :meth:`parameters` (trainable ones) or :meth:`state_dict` (all, to ``net.load_state_dict``).
    With ``jit`` (default) a step is a ``tf.function`` traced once per batch shape.

    >>> import absnet, pytest
    >>> _ = pytest.importorskip("tensorflow")
    >>> net = absnet.compile_source("network N { input [2] range [-1, 1]  Linear(3) ReLU() Linear(2) }")
    >>> tr = TfTrainer(net, goal="Box()", optimizer="adam")
    >>> loss = tr.step([[0.0, 0.5], [0.5, 0.0]], [0, 1], lr=0.01, epsilon=0.1)
    >>> loss > 0, sorted(tr.parameters())[0]
    (True, 'layers.0.bias')
    """

    def __init__(self, net: Any, goal: Goal | str = "Box()", optimizer: str = "sgd", momentum: float = 0.9,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *, weight_decay: float = 0.0,
                 nesterov: bool = False, seed: int = 0, jit: bool = True):
        tf = require_tensorflow()
        if optimizer not in OPTIMIZERS:
            raise _error(f"unknown optimizer {optimizer!r}", help="use 'sgd', 'adam' or 'adamw'")
        if len(net.output_shape) != 1:
            raise _error(f"training needs flat outputs (classes), but {net.name} outputs {list(net.output_shape)}")
        self.net, self.goal, self.optimizer = net, _goal(goal), optimizer
        self.momentum, self.nesterov, self.betas, self.eps = momentum, nesterov, betas, eps
        self.weight_decay = weight_decay
        self._loss_args = self._check_goal(self.goal)
        self.classes = int(net.output_shape[0])
        self.ops = TfOps(seed=seed)
        self.variables: dict[str, Any] = {
            k: tf.Variable(p.detach().cpu().float().numpy(), name=k.replace(".", "_"))
            for k, p in net.named_parameters() if p.requires_grad}
        self.params = tf_parameters(net, self.variables)
        self.slots: dict[str, Any] = {}
        for k, v in self.variables.items():
            if optimizer == "sgd" and momentum:
                self.slots[f"{k}.momentum_buffer"] = tf.Variable(tf.zeros_like(v))
            elif optimizer in ("adam", "adamw"):
                self.slots[f"{k}.exp_avg"] = tf.Variable(tf.zeros_like(v))
                self.slots[f"{k}.exp_avg_sq"] = tf.Variable(tf.zeros_like(v))
        self.steps = tf.Variable(0.0, dtype=tf.float64)  # Adam's t
        self._step = tf.function(self._train_step, autograph=False) if jit else self._train_step

    @staticmethod
    def _check_goal(goal: Goal) -> dict[str, Any]:
        if isinstance(goal, PointGoal) and goal.name == "Point":
            return {}
        if not isinstance(goal, AbstractGoal):
            raise _error(f"{goal} has no TensorFlow training step yet: supported are Point() and the abstract goals "
                         "(Box, HBox, HSwitch, HSmooth, HNIPS, ZBox, ZSwitch, ZNIPS, ZSmooth)",
                         help="train this goal with absc train (torch)")
        if goal.w is not None:
            raise _error(f"{goal} sets its own width w: the TensorFlow step takes the width as its epsilon argument",
                         help=f"use {goal.name}() and pass epsilon to step()")
        check_supported(goal.analysis)
        try:
            tot, width = _number(goal.tot_weight, "tot_weight"), _number(goal.width_weight, "width_weight")
        except AbsnetError as e:
            raise _error(e.diagnostics[0].message, help=e.diagnostics[0].help) from None
        return {"cross": goal.cross_loss, "log_loss": goal.log_loss, "pow_loss": goal.pow_loss,
                "tot_weight": tot, "width_weight": width}

    # ------------------------------------------------------------------ the step
    def loss(self, x: Any, label: Any, epsilon: Any) -> Any:
        """The batch-mean training loss of the goal (a scalar tensor), differentiable in the variables."""
        tf = require_tensorflow()
        ops, net = self.ops, self.net
        onehot = tf.one_hot(label, self.classes, dtype=x.dtype)
        aux: list[tuple[Any, Any]] = []
        if not self._loss_args:  # Point()
            out = propagate(net, x, net.analysis("Point()"), ops, training=True, params=self.params, aux=aux,
                            time=0.0)
            per = point_cross_entropy(ops, out, onehot)
        else:
            a = self.goal.analysis  # type: ignore[attr-defined]
            lo, hi = M.input_bounds(ops, x, epsilon, *net.input_range)
            out = propagate(net, M.abstract_input(ops, lo, hi, a), a, ops, training=True, params=self.params,
                            aux=aux, time=0.0)
            per = abstract_loss(ops, out, onehot, **self._loss_args)
        if aux:
            raise _error("DeepLoss regularisers are not part of the TensorFlow training step yet",
                         help="train this network with absc train (torch)")
        return tf.reduce_mean(per)

    def _train_step(self, x: Any, label: Any, epsilon: Any, lr: Any) -> Any:
        tf = require_tensorflow()
        names = list(self.variables)
        with tf.GradientTape() as tape:
            loss = self.loss(x, label, epsilon)
        grads = tape.gradient(loss, [self.variables[k] for k in names])
        lr32 = tf.cast(lr, tf.float32)
        if self.optimizer in ("adam", "adamw"):
            t = self.steps.assign_add(1.0)
            b1, b2 = (tf.constant(b, tf.float64) for b in self.betas)
            size = tf.cast(lr / (1.0 - tf.pow(b1, t)), tf.float32)
            bc2 = tf.cast(tf.sqrt(1.0 - tf.pow(b2, t)), tf.float32)
        for k, g in zip(names, grads):
            if g is None:  # torch skips parameters whose grad is None
                continue
            p = self.variables[k]
            if self.weight_decay and self.optimizer == "adamw":  # decoupled: θ ← θ·(1 − lr·λ) first
                p.assign(p * (1.0 - lr32 * self.weight_decay))
            elif self.weight_decay:
                g = g + p * self.weight_decay
            if self.optimizer == "sgd":
                d = g
                if self.momentum:
                    buf = self.slots[f"{k}.momentum_buffer"]
                    b = buf.assign(buf * self.momentum + g)
                    d = g + b * self.momentum if self.nesterov else b
                p.assign_sub(lr32 * d)
            else:
                m, v = self.slots[f"{k}.exp_avg"], self.slots[f"{k}.exp_avg_sq"]
                m_new = m.assign(m + (g - m) * (1.0 - self.betas[0]))
                v_new = v.assign(v * self.betas[1] + g * g * (1.0 - self.betas[1]))
                p.assign_sub(size * m_new / (tf.sqrt(v_new) / bc2 + self.eps))
        return loss

    def step(self, x: Any, y: Any, lr: float, epsilon: float = 0.0) -> float:
        """One training step on the batch ``(x, y)``; returns the loss before the update."""
        tf = require_tensorflow()
        x = to_tf(x)
        if tuple(x.shape[1:]) != tuple(self.net.input_shape):
            raise AbsnetError(Diagnostic(
                "E601", f"network {self.net.name} expects inputs of shape [N, "
                f"{', '.join(map(str, self.net.input_shape))}], but got {list(x.shape)}"))
        loss = self._step(x, to_tf(y, tf.int64), to_tf(epsilon), tf.constant(lr, tf.float64))
        return float(loss)

    # ------------------------------------------------------------------ results
    def parameters(self) -> dict[str, Any]:
        """The current trainable parameters as torch tensors keyed like ``state_dict``."""
        import torch

        return {k: torch.from_numpy(v.numpy().copy()) for k, v in self.variables.items()}

    def state_dict(self) -> Mapping[str, Any]:
        """``net.state_dict()`` with the trained parameters in place (buffers as they were)."""
        return {**self.net.state_dict(), **self.parameters()}
