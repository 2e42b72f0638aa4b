"""Add/Concat align generators by block identity (reference/diffai.md §9.4), checked directly."""

from __future__ import annotations

import torch
from _rule_harness import DT, analysis_for, c, make_ctx, run_rule

from absnet.backends.torch.ops import TorchOps
from absnet.domains.box import Box
from absnet.domains.zonotope import Zonotope

OPS = TorchOps()


def _branches() -> tuple[Zonotope, Zonotope]:
    """x with block "in"; branch 1 = x + fresh block "b1"; branch 2 = −x + fresh block "b2"
    with the opposite generators: pairing b1 with b2 by position would cancel them (unsound)."""
    g = torch.Generator().manual_seed(0)
    center = torch.randn(1, 3, generator=g, dtype=DT)
    shared = torch.randn(1, 2, 3, generator=g, dtype=DT)
    fresh = torch.randn(1, 2, 3, generator=g, dtype=DT)
    b1 = Zonotope(center, None, torch.cat([shared, fresh], 1), (("in", 2), ("b1", 2)))
    b2 = Zonotope(-center, None, torch.cat([-shared, -fresh], 1), (("in", 2), ("b2", 2)))
    return b1, b2


def test_add_keeps_fresh_blocks_of_equal_size_apart() -> None:
    b1, b2 = _branches()
    ctx = make_ctx(c("Add", (3,), (3,)), OPS, {}, analysis_for("zonotope"), False)
    out = run_rule("Add", "zonotope", ctx, b1, b2)
    assert out.blocks == (("in", 2), ("b1", 2), ("b2", 2))
    torch.testing.assert_close(out.center, torch.zeros(1, 3, dtype=DT))
    torch.testing.assert_close(out.gens[:, :2], torch.zeros(1, 2, 3, dtype=DT))  # x − x cancels exactly
    torch.testing.assert_close(out.gens[:, 2:4], b1.gens[:, 2:])
    torch.testing.assert_close(out.gens[:, 4:], b2.gens[:, 2:])


def test_concat_zero_pads_missing_blocks_and_keeps_radii_in_centre_order() -> None:
    b1, b2 = _branches()
    b1 = b1.with_(box=torch.full((1, 3), 0.1, dtype=DT))
    box = Box(torch.ones(1, 2, dtype=DT), torch.full((1, 2), 0.7, dtype=DT))
    ctx = make_ctx(c("Concat", (3,), (3,), (2,), axis=1), OPS, {}, analysis_for("zonotope"), False)
    out = run_rule("Concat", "zonotope", ctx, b1, b2, box)
    assert out.blocks == (("in", 2), ("b1", 2), ("b2", 2))
    assert out.gens.shape == (1, 6, 8)
    torch.testing.assert_close(out.box, torch.tensor([[0.1] * 3 + [0.0] * 3 + [0.7] * 2], dtype=DT))
    torch.testing.assert_close(out.gens[:, 2:4, 3:], torch.zeros(1, 2, 5, dtype=DT))  # b1 only in branch 1
    torch.testing.assert_close(out.gens[:, 4:6, 3:6], b2.gens[:, 2:])
