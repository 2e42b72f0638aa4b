"""``absc train --engine onnxruntime``: every optimisation step runs an exported training-step graph.

The trainer (``absnet/train/loop.py``) keeps the loop — data, ε and learning-rate schedules, random
streams, tests, checkpoints — and hands each batch to :class:`OnnxEngine`, which feeds it, ε, the
learning rate and the goal's weights now (a Mix/LinMix's schedules, :func:`goal_inputs`) to the
graph of :func:`export_train_step` in onnxruntime. The graph's parameters and optimiser state live
in the engine between steps; :meth:`OnnxEngine.sync` writes them into the trainer's torch network and
``torch.optim`` optimiser at epoch ends and before every checkpoint, in torch's own state layout,
so tests run on the trained weights and a checkpoint resumes under either engine.

What the graph supports is what :func:`export_train_step` supports (Point, the Box/HBox/Z family,
the linear-bound goals such as CROWN_IBP, and their DList/Mix/LinMix combinations; SGD, Adam,
AdamW; ``grad_clip``); anything else is E502
before the first step. BatchNorm's running statistics are graph inputs and outputs: they move on
the clean forward of each step, as under the torch engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from absnet.backends.onnx.export import graph_stats
from absnet.backends.onnx.train_step import OnnxTrainer, export_train_step, goal_inputs
from absnet.diagnostics import AbsnetError, Diagnostic

_OPTIMIZERS = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw"}


def _error(message: str, help: str) -> AbsnetError:
    return AbsnetError(Diagnostic("E502", f"--engine onnxruntime: {message}", help=help))


def _optimizer_args(cfg: Any) -> dict[str, Any]:
    """export_train_step's optimiser arguments for a train config's optimizer."""
    name, args = cfg.optimizer.name, dict(cfg.optimizer.args)
    if name not in _OPTIMIZERS:
        raise _error(f"optimizer {cfg.optimizer} has no training-step graph",
                     help="use SGD, Adam or AdamW, or train with --engine torch")
    out: dict[str, Any] = {"optimizer": _OPTIMIZERS[name], "weight_decay": float(args.get("weight_decay", 0.0))}
    if name == "SGD":
        out.update(momentum=float(args.get("momentum", 0.0)), nesterov=bool(args.get("nesterov", False)))
    else:
        out.update(betas=tuple(float(b) for b in args.get("betas", (0.9, 0.999))), eps=float(args.get("eps", 1e-8)))
    return out


class OnnxEngine:
    """Training steps in onnxruntime for a trainer's ``net``, torch ``optimizer`` and config ``cfg``."""

    name = "onnxruntime"

    def __init__(self, net: Any, optimizer: torch.optim.Optimizer, cfg: Any,
                 log: Callable[[str], None] | None = None):
        self.net, self.optimizer, self.goal = net, optimizer, cfg.goal
        self.opt = _optimizer_args(cfg)
        #: optimiser state per parameter: the graph's input suffix → torch's state key
        self.slots = ({"momentum_buffer": "momentum_buffer"} if self.opt["momentum"] else {}) \
            if self.opt["optimizer"] == "sgd" else {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}
        model = export_train_step(net, goal=cfg.goal, grad_clip=cfg.grad_clip, correct=True, **self.opt)
        self.trainer = OnnxTrainer(model, net, threads=torch.get_num_threads())
        self.params = [(k, p) for k, p in net.named_parameters() if p.requires_grad]
        self.buffers = [(k, b) for k, b in net.named_buffers() if k in self.trainer.state]
        if log is not None:
            props = {p.key: p.value for p in model.metadata_props}
            stats = graph_stats(model)
            log(f"engine onnxruntime: training-step graph of {stats['nodes']} nodes ({props['absnet.forward_nodes']} "
                f"forward, {props['absnet.backward_nodes']} backward), {stats['bytes'] / 1e6:.1f} MB")
        self.load()

    def step(self, ctx: Any, x: torch.Tensor, y: torch.Tensor, lr: float,
             check: Callable[[float], None], total: int | None = None) -> tuple[float, int]:
        # one process, no accumulation (build_engine refuses both): the batch is the whole step
        assert total is None or total == x.shape[0]
        tr = self.trainer
        extra = goal_inputs(self.goal, ctx) if tr.goal_inputs else None
        before = dict(tr.state)
        loss = tr.step(x.detach().cpu().numpy(), y.detach().cpu().numpy(), lr=lr, epsilon=float(ctx.epsilon),
                       goal=extra)
        if not math.isfinite(loss):
            tr.state = before  # the update computed from a non-finite loss is dropped
            check(loss)
        return loss, int(tr.last["correct"])

    def sync(self) -> None:
        st = self.trainer.state
        with torch.no_grad():
            for name, b in self.buffers:
                b.copy_(torch.from_numpy(st[name]))
            for name, p in self.params:
                p.copy_(torch.from_numpy(st[name]))
                if not self.slots:
                    continue
                state = self.optimizer.state[p]
                for suffix, key in self.slots.items():
                    state[key] = torch.from_numpy(st[f"{name}.{suffix}"].copy()).to(p.device)
                if "step" in st:
                    state["step"] = torch.tensor(float(st["step"]))

    def load(self) -> None:
        st = self.trainer.state
        for name, b in self.buffers:
            st[name] = b.detach().cpu().float().numpy().copy()
        for name, p in self.params:
            st[name] = p.detach().cpu().float().numpy().copy()
            state = self.optimizer.state.get(p, {})
            for suffix, key in self.slots.items():
                v = state.get(key)
                st[f"{name}.{suffix}"] = (np.zeros(st[name].shape, np.float32) if v is None
                                          else v.detach().cpu().float().numpy().copy())
            if "step" in st:
                step = state.get("step")
                st["step"] = np.array(0.0 if step is None else float(step), np.float32)
