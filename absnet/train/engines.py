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
from absnet.goals.attacks import autocast

ENGINES = ("torch", "onnxruntime")


class Engine(Protocol):
    """One training step on a batch, and syncing the trainer's net/optimiser with the engine's state."""

    def step(self, ctx: Any, x: torch.Tensor, y: torch.Tensor, lr: float,
             check: Callable[[float], None], total: int | None = None) -> tuple[float, int]:
        """Update the parameters on ``(x, y)``, this process's part of a global batch of ``total``
        examples (default ``len(x)``); return the global batch-mean loss before the update and how
        many examples the clean forward (training mode) classified correctly. ``check(loss)`` is
        called, before any update, when the loss is not finite (it raises)."""
        ...

    def sync(self) -> None:
        """Write the engine's parameters and optimiser state into the trainer's net and optimiser."""
        ...

    def load(self) -> None:
        """Read the trainer's net and optimiser (after a restore) into the engine's state."""
        ...


class GoalLoss(torch.nn.Module):
    """The goal's training loss as a module's ``forward``, for DistributedDataParallel to wrap.

    Goal losses push values through ``net.propagate`` (not ``net.forward``), which DDP would not
    see; wrapping the whole loss makes DDP's forward/backward hooks cover every abstract pass.
    Returns ``(loss, loss · weight)``: the batch-mean loss for reporting and the term to
    backpropagate. Under DDP every parameter is touched (× 0), so the gradient reduction also
    fires when a goal skips a layer or a batch part is empty."""

    def __init__(self, net: Any, goal: Any, touch_all: bool = False):
        super().__init__()
        self.net, self.goal, self.touch_all = net, goal, touch_all
        self.ctx: Any = None  # the GoalContext of the current step (not an argument: DDP may copy arguments)

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        from absnet.goals.loss import goal_loss

        if x.shape[0]:
            loss, _ = goal_loss(self.goal, self.ctx, x, y)
        elif self.net.stat_reduce is not None:
            # synchronised BatchNorm: an empty part still runs every pass, so that its collectives (forward
            # and backward) meet the other ranks'; its mean loss over no examples (NaN) contributes 0
            loss, _ = goal_loss(self.goal, self.ctx, x, y)
            loss = torch.nan_to_num(loss, nan=0.0)
        else:  # an empty part of a global batch (more ranks than examples left): it only joins the reduction
            loss = torch.zeros((), dtype=x.dtype, device=x.device)
        scaled = loss * weight
        if self.touch_all:
            params = [p for p in self.net.parameters() if p.requires_grad]
            if params:
                scaled = scaled + 0.0 * torch.stack([p.reshape(-1)[0] for p in params]).sum()
        return loss, scaled


class TorchEngine:
    """The goal's loss by the torch backend, autograd, optional norm clipping, ``optimizer.step()``.

    ``accumulate`` k: the step's batch is cut into k micro-batches whose gradients are summed with
    weight (micro-batch size / step size), i.e. 1/k for equal parts, before one optimiser step: the
    same update as one batch k times larger (CROWN-IBP's code dropped every other gradient,
    reference/crown_ibp.md §1.16). Several processes: the module is wrapped in
    DistributedDataParallel, micro-batches but the last run under ``no_sync``, and each rank's
    term is weighted by its share of the global batch, so the averaged gradient is the gradient of
    the global batch mean. BatchNorm running statistics move on the clean forward of each
    micro-batch only (``net.update_buffers``); under DDP rank 0's statistics are broadcast."""

    name = "torch"

    def __init__(self, net: Any, optimizer: torch.optim.Optimizer, goal: Any, grad_clip: float | None = None,
                 accumulate: int = 1):
        from absnet.train.distributed import info

        self.net, self.optimizer, self.goal, self.grad_clip = net, optimizer, goal, grad_clip
        self.accumulate = max(1, int(accumulate))
        self.world = info().world
        self.module = GoalLoss(net, goal, touch_all=self.world > 1)
        self.ddp: Any = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # device_ids=None: the module lives on one device already; DDP must not move the inputs
            self.ddp = DistributedDataParallel(self.module, device_ids=None)

    def step(self, ctx: Any, x: torch.Tensor, y: torch.Tensor, lr: float,
             check: Callable[[float], None], total: int | None = None) -> tuple[float, int]:
        """One optimiser step on this rank's part ``(x, y)`` of a global batch of ``total`` examples
        (default: ``len(x)``); returns the global batch-mean loss and the global count of correct
        clean predictions."""
        from contextlib import nullcontext

        from absnet.train.distributed import all_reduce_sum

        net = self.net
        total = x.shape[0] if total is None else total
        sync = net.stat_reduce is not None  # every rank runs the same passes (empty ones too): collectives meet
        pairs = [(a, b) for a, b in zip(x.tensor_split(self.accumulate), y.tensor_split(self.accumulate))
                 if a.shape[0] or sync] or [(x, y)]  # an empty rank part still joins the gradient reduction once
        run = self.ddp if self.ddp is not None else self.module
        self.module.ctx = ctx
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = 0
        for j, (xm, ym) in enumerate(pairs):
            n = xm.shape[0]
            if n or sync:
                net.update_buffers = True
                with torch.no_grad(), autocast(xm.device, getattr(ctx, "amp", None)):
                    correct += int((net(xm).argmax(dim=1) == ym).sum())
            net.update_buffers = False
            last = j == len(pairs) - 1
            try:
                with nullcontext() if last or self.ddp is None else self.ddp.no_sync():
                    loss, scaled = run(xm, ym, n * self.world / max(total, 1))
                    scaled.backward()
            finally:
                net.update_buffers = True
            loss_sum += float(loss.detach()) * n
        stats = torch.stack([loss_sum, torch.tensor(float(correct), dtype=torch.float64)])
        stats = all_reduce_sum(stats)
        value = float(stats[0]) / max(total, 1)
        if value != value or value in (float("inf"), float("-inf")):  # checked on every rank, before any update
            check(value)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
        self.optimizer.step()
        return value, round(float(stats[1]))

    def sync(self) -> None:
        pass

    def load(self) -> None:
        pass


def build_engine(name: str, net: Any, optimizer: torch.optim.Optimizer, cfg: Any, *, device: str = "cpu",
                 log: Callable[[str], None] | None = None) -> Engine:
    """The engine called ``name`` for a trainer's ``net``, ``optimizer`` and config ``cfg``."""
    if name == "torch":
        return TorchEngine(net, optimizer, cfg.goal, cfg.grad_clip, getattr(cfg, "accumulate", 1))
    if name == "onnxruntime":
        from absnet.backends.onnx.engine import OnnxEngine
        from absnet.train.distributed import info

        if info().world > 1:
            raise AbsnetError(Diagnostic("E608", f"--engine onnxruntime trains in one process, but this job has "
                                         f"{info().world}", help="drop --nproc (or torchrun), or use --engine torch"))
        if getattr(cfg, "accumulate", 1) != 1:
            raise AbsnetError(Diagnostic("E606", "--engine onnxruntime does not accumulate gradients (accumulate "
                                         f"{cfg.accumulate})", help="use --engine torch, or drop 'accumulate'"))

        if torch.device(device).type != "cpu":
            raise AbsnetError(Diagnostic("E606", f"--engine onnxruntime runs on the CPU, not on --device {device}",
                                         help="drop --device, or train with --engine torch on the GPU"))
        return OnnxEngine(net, optimizer, cfg, log=log)
    import difflib

    close = difflib.get_close_matches(name, ENGINES, n=1)
    raise AbsnetError(Diagnostic("E606", f"unknown training engine {name!r}",
                                 help=f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(ENGINES)}"))
