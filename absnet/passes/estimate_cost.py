"""Predict, per node, the number of generators and the memory a value takes under an analysis.

Rules (mirroring the transformers' static generator bookkeeping):
- zonotope analyses start with one generator per input element; Box with none.
- on a pure zonotope every nonlinearity (activations, MaxPool2d) adds one generator per element.
- ToZono/CorrelateAll add one per element; CorrMaxK/CorrRand add num_correlate; CorrFix adds about k;
  CorrMaxPool2D/3D add one per window; Concretize drops all; DecorrMin/DecorrRand keep k - n
  (or n with num_to_keep).
- Add/Concat keep the union of their inputs' generator groups.
- linear analyses (CROWN family) have no generators: a value holds its interval box (2 per element)
  and, during the output's back-substitution, coefficients for 2·outputs objective rows per element;
  intermediate back-substitutions are chunked to a fixed budget (ABSNET_CROWN_CHUNK_MIB), not counted.
Sets ``meta["generators"]`` and ``meta["bytes_per_example"]``; :func:`estimate` sums a report and
warns (does not fail) when one batch would exceed a memory budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from absnet.ir.domains import Analysis
from absnet.ir.graph import IRGraph, Node
from absnet.passes.base import Pass, PassResult

NONLINEAR = {"ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softplus", "ELU", "MaxPool2d"}


@dataclass(frozen=True)
class CostReport:
    analysis: str
    max_generators: int
    peak_bytes_per_example: int
    total_bytes_per_example: int

    def batch_bytes(self, batch: int) -> int:
        return self.total_bytes_per_example * batch

    def describe(self, batch: int = 1) -> str:
        gib = self.batch_bytes(batch) / 2**30
        return (f"{self.analysis}: up to {self.max_generators} generators, about {gib:.2f} GiB "
                f"of values for a batch of {batch}")


class EstimateCost(Pass):
    name = "estimate_cost"

    def __init__(self, analysis: Analysis, training: bool = False, dtype_bytes: int = 4):
        self.analysis = analysis
        self.training = training
        self.dtype_bytes = dtype_bytes

    def run(self, graph: IRGraph) -> PassResult:
        blocks: dict[str, dict[str, int]] = {}
        rows = 2 * math.prod(graph.output.meta["shape"])
        for node in graph.nodes():
            n = math.prod(node.meta["shape"])
            b = self._blocks(node, n, [blocks[i] for i in node.inputs], graph)
            blocks[node.id] = b
            k = sum(b.values())
            node.meta["generators"] = k
            abstract = self.analysis.kind != "point"
            if self.analysis.kind == "linear":
                k = 1 + rows  # the box, then one coefficient per objective row
            node.meta["bytes_per_example"] = n * (1 + k + (1 if abstract else 0)) * self.dtype_bytes
        return PassResult(graph, False)

    def _blocks(self, node: Node, n: int, ins: list[dict[str, int]], graph: IRGraph) -> dict[str, int]:
        a = self.analysis
        if node.op == "Input":
            return {"input": n} if a.kind == "zonotope" else {}
        if a.kind in ("point", "linear"):
            return {}
        merged: dict[str, int] = {}
        for b in ins:
            merged.update(b)
        op, at = node.op, node.attrs
        active = self.training or not at.get("only_train", False)
        if op in NONLINEAR and a.pure and a.kind == "zonotope":
            merged[node.id] = n
        elif not active:
            pass
        elif op in ("ToZono", "CorrelateAll"):
            merged[node.id] = n
        elif op in ("CorrMaxK", "CorrRand"):
            merged[node.id] = min(at["num_correlate"], n)
        elif op == "CorrFix":
            merged[node.id] = len(range(0, n, math.ceil(n / at["k"])))
        elif op == "CorrMaxPool2D":
            c, h, w = node.meta["shape"]
            kh, kw = at["kernel_size"]
            merged[node.id] = c * (h // kh) * (w // kw)
        elif op == "CorrMaxPool3D":
            kk = at["kernel_size"]
            merged[node.id] = math.prod(s // kk for s in node.meta["shape"])
        elif op == "Concretize":
            merged = {}
        elif op in ("DecorrMin", "DecorrRand"):
            k = sum(merged.values())
            d = at["num_decorrelate"]
            keep = min(d, k) if at.get("num_to_keep") else max(k - d, 0)
            merged = {node.id: keep} if keep else {}
        return merged


def estimate(graph: IRGraph, analysis: Analysis, training: bool = False, dtype_bytes: int = 4) -> CostReport:
    """Run the cost estimate on a shaped graph and summarise it."""
    EstimateCost(analysis, training, dtype_bytes).run(graph)
    nodes = list(graph.nodes())
    return CostReport(
        str(analysis),
        max(n.meta["generators"] for n in nodes),
        max(n.meta["bytes_per_example"] for n in nodes),
        sum(n.meta["bytes_per_example"] for n in nodes),
    )


def parameter_count(graph: IRGraph) -> int:
    """Number of learnable parameters (buffers excluded) of a shaped graph."""
    return sum(
        math.prod(p.shape)
        for node in graph.nodes()
        if node.inputs
        for p in node.spec.params(node.meta["in_shapes"][0], node.attrs).values()
        if not p.buffer
    )
