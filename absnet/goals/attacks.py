"""Attacks: goals that produce a point, the adversarial image found by an iterated sign attack.

``MI_FGSM`` is the momentum iterative attack of reference/diffai.md §3.4 with the fixes of §9.4:
random restarts are uniform in the whole ε-ball (both directions), the momentum normalises each
example's gradient by that example's own L1 norm (so examples never interact), and every step is
projected onto the ε-ball *and* clipped to the network's input range. ``PGD`` is MI_FGSM without
momentum, ``IFGSM`` is PGD with r = 1 (step w/k), and ``FGSM`` is IFGSM(k=1).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.goals.base import POINT, Goal, GoalContext, Term, Width, resolve_width, width_tensor
from absnet.goals.schedules import Schedule, as_schedule


def attack(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, w: Width, *, r: float, k: int, mu: float,
    should_end: bool = True, restart: int | None = None, generator: torch.Generator | None = None,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """Maximise the cross-entropy of label ``y`` over the L∞ ball of radius ``w`` around ``x``.

    For k iterations: (at iteration 0 and every ⌊k/restart⌋ iterations, when ``restart`` is set,
    move the still-active examples to a uniform random point of the ball); g ← mu·g + ∇/‖∇‖₁ with
    the L1 norm per example; x ← x + (r·w/k)·sgn⁺(g) for active examples; project onto the ball and
    clip to ``net.input_range``. With ``should_end`` an example stops for good once the network
    misclassifies it (measured before the step). Gradients are taken with respect to the input
    only (parameter ``.grad`` is never touched); the network runs in whatever mode it is in. With
    ``amp`` (bfloat16 or float16) each forward and its gradient run under ``torch.autocast``: the
    attack point itself stays in the input's dtype.

    Returns:
        The attack points, detached, inside the ball and the input range.
    """
    lo, hi = net.input_range
    x0 = x.detach()
    eps = width_tensor(w, x0).expand_as(x0)
    step = eps * (float(r) / k)
    unit = (x0.shape[0],) + (1,) * (x0.dim() - 1)
    xa = x0.clone()
    g = torch.zeros_like(x0)
    active = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
    every = max(1, k // restart) if restart else 0
    for i in range(k):
        if every and i % every == 0:
            start = (x0 + rand_sym_like(generator, x0) * eps).clamp(lo, hi)
            xa = torch.where(active.view(unit), start, xa)
        with torch.enable_grad(), autocast(x0.device, amp):
            xv = xa.detach().requires_grad_(True)
            logits = net(xv)
            loss = F.cross_entropy(logits.float(), y.long(), reduction="sum")
            (grad,) = torch.autograd.grad(loss, xv)
        grad = grad.to(x0.dtype)
        norm = grad.abs().reshape(grad.shape[0], -1).sum(dim=1).view(unit)
        g = mu * g + grad / torch.where(norm > 0, norm, torch.ones_like(norm))
        if should_end:
            active = active & (logits.detach().argmax(dim=1) == y)
        sign = torch.where(g >= 0, 1.0, -1.0).to(x0.dtype)  # sgn⁺(0) = +1
        xa = xa + step * sign * active.view(unit).to(x0.dtype)
        xa = torch.minimum(torch.maximum(xa, x0 - eps), x0 + eps).clamp(lo, hi)
    return xa.detach()


def autocast(device: torch.device, amp: torch.dtype | None) -> Any:
    """``torch.autocast`` on ``device`` in ``amp``, or a no-op context when ``amp`` is None."""
    if amp is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


def rand_sym_like(generator: torch.Generator | None, x: torch.Tensor) -> torch.Tensor:
    """Uniform samples in [−1, 1] shaped like ``x``, drawn on the CPU from ``generator``."""
    u = torch.rand(tuple(x.shape), generator=generator, dtype=x.dtype)
    return (2 * u - 1).to(x.device)


class Attack(Goal):
    """A goal whose value is the attack point (its loss: cross-entropy on the point)."""

    produces_point = True
    single = True
    supports_between = False

    def __init__(
        self, name: str = "MI_FGSM", w: Schedule | float | None = None, r: float = 20.0, k: int = 100,
        mu: float = 0.8, should_end: bool = True, restart: int | None = None,
    ):
        self.name = name
        self.w = None if w is None else as_schedule(w)
        self.r, self.k, self.mu = float(r), int(k), float(mu)
        self.should_end = should_end
        self.restart = restart

    def point(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> torch.Tensor:
        width = resolve_width(self.w, ctx, w)
        return attack(ctx.net, x, y, width, r=self.r, k=self.k, mu=self.mu, should_end=self.should_end,
                      restart=self.restart, generator=ctx.generator, amp=ctx.amp)

    def terms(self, ctx: GoalContext, x: torch.Tensor, y: torch.Tensor, w: Width | None = None) -> list[Term]:
        return [Term(1.0, self.point(ctx, x, y, w), POINT, self)]

    def between(self, ctx: GoalContext, o1: torch.Tensor, o2: torch.Tensor, y: torch.Tensor) -> list[Term]:
        raise AbsnetError(Diagnostic("E206", f"the attack {self} has no region between two images"))


def mi_fgsm(w: Schedule | float | None = None, r: float = 20.0, k: int = 100, mu: float = 0.8,
            should_end: bool = True, restart: int | None = None) -> Attack:
    """``MI_FGSM``: momentum iterative FGSM (step r·w/k)."""
    return Attack("MI_FGSM", w, r, k, mu, should_end, restart)


def pgd(r: float = 5.0, k: int = 5, w: Schedule | float | None = None, should_end: bool = True,
        restart: int | None = None) -> Attack:
    """``PGD``: MI_FGSM with mu = 0."""
    return Attack("PGD", w, r, k, 0.0, should_end, restart)


def ifgsm(k: int = 5, w: Schedule | float | None = None, should_end: bool = True,
          restart: int | None = None) -> Attack:
    """``IFGSM``: PGD with r = 1 (step w/k)."""
    return Attack("IFGSM", w, 1.0, k, 0.0, should_end, restart)


def fgsm(w: Schedule | float | None = None, should_end: bool = True) -> Attack:
    """``FGSM``: IFGSM(k=1), one step of size w."""
    return Attack("FGSM", w, 1.0, 1, 0.0, should_end, None)


__all__ = ["Attack", "attack", "autocast", "fgsm", "ifgsm", "mi_fgsm", "pgd"]
