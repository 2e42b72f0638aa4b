"""Type every edge with the domain kind it carries under one analysis.

Rules:
- ``Input`` carries the analysis's kind (point, box or zonotope).
- a node's input kind is the join of its inputs' kinds (point < box < zonotope); a rule registered
  for ``(op, kind)`` gives the output kind (e.g. CorrMaxK turns a box into a zonotope).
- directives with ``only_train`` are skipped (identity) in eval mode.
- a node with no rule for its input kind is an E401 error naming the layer, the kind, the kinds the
  op supports and a fix; every such node is reported at once (after a linear-kind error, typing
  goes on as if the suggested Concretize() were there).
Sets ``node.meta["domain_in"]`` and ``node.meta["domain"]``.
"""

from __future__ import annotations

from absnet.diagnostics import DiagnosticBag
from absnet.ir.domains import DOMAIN_KINDS, Analysis
from absnet.ir.graph import IRGraph, Node
from absnet.passes.base import Pass, PassResult
from absnet.transformers.registry import lookup, supported_domains


def is_active(node: Node, training: bool) -> bool:
    """Whether a node does anything in this mode (only_train directives are eval-mode identities)."""
    if node.op in ("IdentLoss", "Identity"):
        return False
    if node.op == "DeepLoss" or node.op == "Dropout":
        return training
    return training or not node.attrs.get("only_train", False)


def join(kinds: list[str]) -> str:
    return max(kinds, key=DOMAIN_KINDS.index)


class InferDomains(Pass):
    name = "infer_domains"

    def __init__(self, analysis: Analysis, training: bool = False):
        self.analysis = analysis
        self.training = training

    def run(self, graph: IRGraph) -> PassResult:
        bag = DiagnosticBag()
        for node in graph.nodes():
            if node.op == "Input":
                node.meta["domain"] = self.analysis.kind
                continue
            kinds = [graph[i].meta.get("domain") for i in node.inputs]
            if any(k is None for k in kinds):
                continue
            kind = join(kinds)
            node.meta["domain_in"] = kind
            if not is_active(node, self.training):
                node.meta["domain"] = kind
                continue
            rule = lookup(node.op, kind)
            if rule is None:
                have = supported_domains(node.op)
                bag.error(
                    "E401",
                    f"{node.describe()} has no transformer for {kind} values, "
                    f"which {self.analysis} carries here",
                    node.span,
                    notes=[f"{node.op} supports: {', '.join(have) or 'no abstract domain'}"],
                    help=_fix(kind, have),
                )
                if kind == "linear" and "box" in have:  # go on as the suggested Concretize() would
                    fallback = lookup(node.op, "box")
                    node.meta["domain"] = fallback.out if fallback is not None else None
                continue
            node.meta["domain"] = rule.out
        bag.raise_if_any()
        return PassResult(graph, False)


def _fix(kind: str, have: list[str]) -> str:
    if "box" in have and kind == "linear":
        return ("insert Concretize(only_train=false) before this layer to continue from the box of the "
                "linear bounds reached there (ToLinear() after it resumes back-substitution)")
    if "box" in have and kind == "zonotope":
        return "insert Concretize(only_train=false) before this layer, or analyse with Box()"
    return f"analyse with an analysis that carries {' or '.join(have)} values here"
