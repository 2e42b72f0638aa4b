"""Rewrite a typed graph into the form the backends execute for one mode.

Rules:
- ``Identity`` and ``IdentLoss`` are removed (their consumers read their input).
- nodes inactive in this mode are removed: in eval mode ``Dropout``, ``DeepLoss`` and every
  directive with ``only_train=true`` (reference/diffai.md §2).
- directives on ``point`` values are removed (they are identities on concrete tensors).
Requires ``infer_domains`` (reads ``meta["domain_in"]``).
"""

from __future__ import annotations

from absnet.ir.graph import IRGraph
from absnet.passes.base import Pass, PassResult
from absnet.passes.infer_domains import is_active


class Decompose(Pass):
    name = "decompose"

    def __init__(self, training: bool = False):
        self.training = training

    def run(self, graph: IRGraph) -> PassResult:
        changed = False
        for node in list(graph.nodes()):
            if node.op == "Input":
                continue
            point_directive = node.spec.category == "directive" and node.meta.get("domain_in") == "point"
            if not is_active(node, self.training) or point_directive:
                graph.remove(node.id)
                changed = True
        return PassResult(graph, changed)
