"""The rule table: one abstract transformer per (op, domain kind).

Rules are registered with :func:`transformer` and looked up by the backends and by
``passes/infer_domains.py``. ``out`` names the domain kind a rule produces (directives such as
CorrMaxK turn a box into a zonotope). ``absc ops`` prints the support matrix from this table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from absnet.ir.domains import DOMAIN_KINDS, Analysis
from absnet.ir.graph import Node
from absnet.ir.ops import Shape
from absnet.transformers.tensor_ops import TensorOps


@dataclass
class RuleContext:
    """What a rule may read besides its input values. Everything here is static except
    ``params`` (facade values of the node's parameters and buffers)."""

    ops: TensorOps
    node: Node
    params: Mapping[str, Any]
    analysis: Analysis
    training: bool = False
    in_shapes: tuple[Shape, ...] = ()
    out_shape: Shape = ()
    time: float = 0.0
    #: (weight, loss value) pairs recorded by DeepLoss, blended into the training loss by goals
    aux_losses: list[tuple[Any, Any]] = field(default_factory=list)
    #: called as set_buffer(name, value) to update running statistics in training mode
    set_buffer: Callable[[str, Any], None] | None = None
    #: sums a tensor over every process of a distributed run (differentiably): synchronised BatchNorm
    reduce_stats: Callable[[Any], Any] | None = None

    @property
    def attrs(self) -> Mapping[str, Any]:
        return self.node.attrs

    @property
    def name(self) -> str:
        """A stable identity for generator blocks created by this node."""
        return self.node.id


RuleFn = Callable[..., Any]


@dataclass(frozen=True)
class Rule:
    op: str
    domain: str
    fn: RuleFn
    out: str
    doc: str


RULES: dict[tuple[str, str], Rule] = {}


def transformer(op: str, domain: str, *, out: str | None = None) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn(ctx, *inputs) -> value`` as the rule for ``op`` on ``domain``."""
    assert domain in DOMAIN_KINDS, domain

    def deco(fn: RuleFn) -> RuleFn:
        key = (op, domain)
        assert key not in RULES, f"duplicate rule for {key}"
        RULES[key] = Rule(op, domain, fn, out or domain, (fn.__doc__ or "").strip())
        return fn

    return deco


def load_rules() -> dict[tuple[str, str], Rule]:
    """Import every rule module (registration happens at import) and return the table."""
    import absnet.transformers.activations
    import absnet.transformers.affine
    import absnet.transformers.backward
    import absnet.transformers.directives
    import absnet.transformers.pooling
    import absnet.transformers.relaxations
    import absnet.transformers.structure  # noqa: F401

    return RULES


def lookup(op: str, domain: str) -> Rule | None:
    load_rules()
    return RULES.get((op, domain))


def supported_domains(op: str) -> list[str]:
    load_rules()
    return [d for d in DOMAIN_KINDS if (op, d) in RULES]
