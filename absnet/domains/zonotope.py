"""The hybrid zonotope (DiffAI's HybridZonotope) and the pure zonotope, one dataclass.

γ(c, b, E) = { c + b ⊙ η + Σ_i ε_i e_i : η ∈ [-1,1]^n, ε ∈ [-1,1]^k } (reference/diffai.md §0).
Generators are laid out (N, k, *s), batch first, so an affine layer maps centre and generators
with one batched op. ``blocks`` names the groups of generators along axis 1 in order: two values
share a noise symbol exactly when they hold the same block at the same offset within it. Adding
or concatenating values aligns generators by block identity, never by position (diffai.md §9.4).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from absnet.transformers.tensor_ops import TensorOps

GenBlock = tuple[str, int]  # (identity, number of generators)


@dataclass(frozen=True)
class Zonotope:
    """A (hybrid) zonotope. ``box`` or ``gens`` may be None (absent = zero).

    ``pure``: a pure zonotope turns box radii into fresh generators after every nonlinearity;
    a hybrid one keeps them as box radii. ``relu``: the ReLU transformer in force
    (Boxy, BoxySound, Switch, Smooth, NIPS).
    """

    center: Any
    box: Any | None
    gens: Any | None
    blocks: tuple[GenBlock, ...] = ()
    pure: bool = False
    relu: str = "Boxy"

    kind = "zonotope"

    @property
    def k(self) -> int:
        return sum(n for _, n in self.blocks)

    def gen_radius(self, ops: TensorOps) -> Any | None:
        """Σ_i |e_i| (N, *s), or None without generators."""
        if self.gens is None:
            return None
        return ops.sum(ops.abs(self.gens), [1])

    def total_radius(self, ops: TensorOps) -> Any:
        """b + Σ_i |e_i|; zeros when the value is a point."""
        r = self.gen_radius(ops)
        if self.box is not None:
            r = self.box if r is None else ops.add(r, self.box)
        return ops.zeros_like(self.center) if r is None else r

    def lower(self, ops: TensorOps) -> Any:
        return ops.sub(self.center, self.total_radius(ops))

    def upper(self, ops: TensorOps) -> Any:
        return ops.add(self.center, self.total_radius(ops))

    def with_(self, **changes: Any) -> Zonotope:
        return replace(self, **changes)
