"""The Box (interval) domain in centre/radius form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from absnet.transformers.tensor_ops import TensorOps


@dataclass(frozen=True)
class Box:
    """The set {center + radius ⊙ η : η ∈ [-1, 1]^n}; ``radius`` ≥ 0, both shaped (N, *s)."""

    center: Any
    radius: Any

    kind = "box"

    def lower(self, ops: TensorOps) -> Any:
        return ops.sub(self.center, self.radius)

    def upper(self, ops: TensorOps) -> Any:
        return ops.add(self.center, self.radius)

    def total_radius(self, ops: TensorOps) -> Any:
        return self.radius

    @staticmethod
    def from_bounds(ops: TensorOps, lower: Any, upper: Any) -> Box:
        """The box [lower, upper] (elementwise, lower ≤ upper)."""
        half = ops.constant(0.5, lower)
        return Box(ops.mul(ops.add(lower, upper), half), ops.mul(ops.sub(upper, lower), half))
