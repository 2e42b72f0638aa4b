"""Training engines: what one step of ``absc train`` runs on.

The trainer owns the loop (data, schedules, random streams, tests, checkpoints); an engine owns
one optimisation step on a batch. ``torch`` (the default) computes the goal's loss with the torch
backend and steps a ``torch.optim`` optimiser; ``onnxruntime``
(:class:`absnet.backends.onnx.engine.OnnxEngine`) runs an exported training-step graph. Every
engine keeps the trainer's ``net`` and ``optimizer`` as the state of record at epoch ends and
before checkpoints (:meth:`sync`), so checkpoints, tests and ``--resume`` are the same whichever
engine wrote them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from absnet.diagnostics import AbsnetError, Diagnostic

ENGINES = ("torch", "onnxruntime")


class Engine(Protocol):
    """One training step on a batch, and syncing the trainer's net/optimiser with the engine's state."""

    def step(self, ctx: Any, x: torch.Tensor, y: torch.Tensor, lr: float,
             check: Callable[[float], None]) -> tuple[float, int]:
        """Update the parameters on ``(x, y)``; return the batch-mean loss before the update and how
        many examples the clean forward (training mode) classified correctly. ``check(loss)`` is
        called, before any update, when the loss is not finite (it raises)."""
        ...

    def sync(self) -> None:
        """Write the engine's parameters and optimiser state into the trainer's net and optimiser."""
        ...

    def load(self) -> None:
        """Read the trainer's net and optimiser (after a restore) into the engine's state."""
        ...


class TorchEngine:
    """The goal's loss by the torch backend, autograd, optional norm clipping, ``optimizer.step()``.

    BatchNorm running statistics move on the clean forward only (``net.update_buffers``)."""

    name = "torch"

    def __init__(self, net: Any, optimizer: torch.optim.Optimizer, goal: Any, grad_clip: float | None = None):
        self.net, self.optimizer, self.goal, self.grad_clip = net, optimizer, goal, grad_clip

    def step(self, ctx: Any, x: torch.Tensor, y: torch.Tensor, lr: float,
             check: Callable[[float], None]) -> tuple[float, int]:
        from absnet.goals.loss import goal_loss

        net = self.net
        net.update_buffers = True
        with torch.no_grad():
            correct = int((net(x).argmax(dim=1) == y).sum())
        net.update_buffers = False
        try:
            loss, _ = goal_loss(self.goal, ctx, x, y)
        finally:
            net.update_buffers = True
        value = float(loss.detach())
        if not torch.isfinite(loss.detach()):
            check(value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
        self.optimizer.step()
        return value, correct

    def sync(self) -> None:
        pass

    def load(self) -> None:
        pass


def build_engine(name: str, net: Any, optimizer: torch.optim.Optimizer, cfg: Any, *, device: str = "cpu",
                 log: Callable[[str], None] | None = None) -> Engine:
    """The engine called ``name`` for a trainer's ``net``, ``optimizer`` and config ``cfg``."""
    if name == "torch":
        return TorchEngine(net, optimizer, cfg.goal, cfg.grad_clip)
    if name == "onnxruntime":
        from absnet.backends.onnx.engine import OnnxEngine

        if torch.device(device).type != "cpu":
            raise AbsnetError(Diagnostic("E606", f"--engine onnxruntime runs on the CPU, not on --device {device}",
                                         help="drop --device, or train with --engine torch on the GPU"))
        return OnnxEngine(net, optimizer, cfg, log=log)
    import difflib

    close = difflib.get_close_matches(name, ENGINES, n=1)
    raise AbsnetError(Diagnostic("E606", f"unknown training engine {name!r}",
                                 help=f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(ENGINES)}"))
