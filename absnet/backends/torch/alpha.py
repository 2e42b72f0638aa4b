"""α-CROWN in torch: optimise the lower ReLU slopes of a back-substitution by gradient ascent.

Every unstable ReLU's lower line y ≥ α·x is sound for any α ∈ [0, 1] (crown_ibp.md §1.4), so the
bound is a function of α that can be maximised. Slopes are per objective row and neuron, start at
CROWN's choice, take ``iters`` Adam steps on the summed bound and are projected back into [0, 1]
after each step. The best slopes seen for each row are kept (rows do not share slopes, so rows are
independent), hence the result is at least CROWN's bound on every row. Intermediate bounds are
those of the analysis (CROWN's); only the final back-substitution is optimised.
"""

from __future__ import annotations

from typing import Any

import torch

from absnet.domains.linear import Backward, LinearValue, lower_bound


def optimise_slopes(ops: Any, value: LinearValue, spec: torch.Tensor) -> torch.Tensor:
    """The α-CROWN lower bound (N, S) of spec·value; differentiable in the network's parameters."""
    a = value.analysis
    record = Backward(collect={})
    with torch.no_grad():
        start = lower_bound(ops, value, spec, record)
    assert record.collect is not None
    if not record.collect:
        return lower_bound(ops, value, spec)
    rows = start.shape[1]
    best_lb = start.detach()
    alphas: dict[str, torch.Tensor] = {}
    for node, (slope, _unstable) in record.collect.items():
        shape = (slope.shape[0], rows, *slope.shape[1:])
        alphas[node] = slope.detach().unsqueeze(1).expand(shape).clone().requires_grad_(True)
    best = {k: v.detach().clone() for k, v in alphas.items()}
    opt = torch.optim.Adam(list(alphas.values()), lr=a.alpha_lr)
    with torch.enable_grad():
        for _ in range(a.alpha_iters):
            lb = lower_bound(ops, value, spec, Backward(alpha=alphas))
            better = lb.detach() > best_lb
            for k, v in alphas.items():
                sel = better.reshape(*better.shape, *([1] * (v.dim() - 2)))
                best[k] = torch.where(sel, v.detach(), best[k])
            best_lb = torch.maximum(best_lb, lb.detach())
            grads = torch.autograd.grad(-lb.sum(), list(alphas.values()), allow_unused=True)
            for v, g in zip(alphas.values(), grads, strict=True):
                v.grad = torch.zeros_like(v) if g is None else g
            opt.step()
            with torch.no_grad():
                for v in alphas.values():
                    v.clamp_(0.0, 1.0)
    final = lower_bound(ops, value, spec, Backward(alpha=best))
    # the recomputation with the best slopes reproduces best_lb up to rounding; never report less
    return final + (best_lb - final.detach()).clamp_min(0)
