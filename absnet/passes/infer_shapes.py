"""Infer the per-example shape of every node.

Rules:
- ``Input``: its ``shape`` attribute.
- every other node: the catalog shape rule of its op applied to its inputs' shapes.
- a node whose input failed gets no shape (no cascade of follow-up errors).
Every shape error in the graph is reported at once, as E3xx naming the layer and the shapes.
Sets ``node.meta["shape"]`` and ``node.meta["in_shapes"]``.
"""

from __future__ import annotations

from absnet.diagnostics import DiagnosticBag
from absnet.ir.graph import IRGraph
from absnet.ir.ops import ShapeError
from absnet.passes.base import Pass, PassResult


class InferShapes(Pass):
    name = "infer_shapes"

    def run(self, graph: IRGraph) -> PassResult:
        bag = DiagnosticBag()
        for node in graph.nodes():
            ins = [graph[i].meta.get("shape") for i in node.inputs]
            if any(s is None for s in ins):
                continue
            node.meta["in_shapes"] = tuple(ins)
            try:
                node.meta["shape"] = tuple(node.spec.shape_fn(ins, node.attrs))
            except ShapeError as e:
                notes = [f"input shape{'s' if len(ins) > 1 else ''}: {', '.join(str(list(s)) for s in ins)}"]
                bag.error(e.code, f"{node.describe()}: {e.message}", node.span, notes=notes, help=e.help)
        bag.raise_if_any()
        return PassResult(graph, False)
