"""Training differentiates through every rule: gradients must be finite, also for degenerate sets
(zero radii and generators: u = l, where a careless 0/0 in an unselected branch poisons autograd)."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
import torch
from _rule_harness import CASES, Case, analysis_for, make_attrs, make_ctx, make_inputs, make_params, run_rule

from absnet.backends.torch.ops import TorchOps
from absnet.domains.box import Box
from absnet.domains.linear import LinearValue
from absnet.domains.zonotope import Zonotope


def _leaves(v: Any, degenerate: bool) -> tuple[Any, list[torch.Tensor]]:
    """A copy of ``v`` whose tensors are autograd leaves; degenerate: radii and generators zero."""
    leaves: list[torch.Tensor] = []

    def leaf(t: torch.Tensor | None, spread: bool = True) -> torch.Tensor | None:
        if t is None:
            return None
        t = (t * 0.0 if degenerate and spread else t.clone()).detach().requires_grad_(True)
        leaves.append(t)
        return t

    if isinstance(v, Box):
        return Box(leaf(v.center, False), leaf(v.radius)), leaves
    return v.with_(center=leaf(v.center, False), box=leaf(v.box), gens=leaf(v.gens)), leaves


@pytest.mark.parametrize("degenerate", [False, True], ids=["generic", "degenerate"])
@pytest.mark.parametrize("domain", ["box", "zonotope"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_gradients_are_finite(case: Case, domain: str, degenerate: bool) -> None:
    g = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))
    attrs = make_attrs(case.op, case.attrs)
    params = make_params(case.op, case.shapes[0], attrs, g)
    for relu in ("Boxy", "Switch", "Smooth", "NIPS") if case.op in ("ReLU", "LeakyReLU") else ("Boxy",):
        xs, _ = make_inputs(domain, case.shapes, "hybrid" if domain == "zonotope" else "box", relu, g)
        pairs = [_leaves(x, degenerate) for x in xs]
        aux: list[Any] = []
        ops = TorchOps(torch.Generator().manual_seed(0))
        ctx = make_ctx(case, ops, params, analysis_for(domain, False, relu), True, aux_losses=aux)
        out = run_rule(case.op, domain, ctx, *[p[0] for p in pairs])
        assert isinstance(out, Box | Zonotope | LinearValue)  # ToLinear starts a linear segment
        loss = (out.upper(ops) - out.lower(ops)).sum() + out.center.sum()
        for _, value in aux:
            loss = loss + value.sum()
        loss.backward()
        for _, leaves in pairs:
            for t in leaves:
                finite = t.grad is None or torch.isfinite(t.grad).all()
                assert finite, f"{case.id} {relu}: non-finite gradient"
