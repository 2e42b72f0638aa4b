"""Pass infrastructure: a pass maps an IRGraph to a PassResult; a PassManager runs a list of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from absnet.ir.graph import IRGraph


@dataclass(frozen=True)
class PassResult:
    graph: IRGraph
    changed: bool


class Pass:
    """One rewrite or analysis over the IR. Subclasses document their rules in the docstring."""

    name = "pass"

    def run(self, graph: IRGraph) -> PassResult:  # pragma: no cover - interface
        raise NotImplementedError


class PassManager:
    """Run passes in order; with ``verify=True`` check graph invariants between passes."""

    def __init__(self, passes: Sequence[Pass], verify: bool = False):
        self.passes = list(passes)
        self.verify = verify

    def run(self, graph: IRGraph) -> IRGraph:
        for p in self.passes:
            graph = p.run(graph).graph
            if self.verify:
                verify_graph(graph)
        return graph


def verify_graph(graph: IRGraph) -> None:
    """Assert structural invariants: one Input, acyclic, edges match node.inputs, arities hold."""
    import networkx as nx

    assert graph.input_id is not None and graph.output_id is not None
    assert nx.is_directed_acyclic_graph(graph.g)
    inputs = [n for n in graph.nodes() if n.op == "Input"]
    assert len(inputs) == 1, "exactly one Input node"
    for n in graph.nodes():
        assert set(graph.g.predecessors(n.id)) == set(n.inputs), n.describe()
        arity = n.spec.arity
        if n.op != "Input" and arity is not None:
            assert len(n.inputs) == arity, f"{n.describe()} takes {arity} inputs"
