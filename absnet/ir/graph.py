"""The IR: a DAG of op nodes over ``networkx.DiGraph``.

A :class:`Node` carries its op name (a catalog entry), frozen attributes, the DSL span it came from,
its ``path`` (the layer position in the DSL, used to name parameters) and ``meta``, where passes
store what they infer (``shape``, ``domain``, ``cost``). Edges run from producer to consumer; the
ordered producer list of a node is ``node.inputs`` (order matters for Concat).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import networkx as nx

from absnet.diagnostics import Span
from absnet.ir.ops import CATALOG, OpSpec


def freeze(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return a read-only view of a copy of ``attrs``."""
    return MappingProxyType(dict(attrs))


@dataclass
class Node:
    """One op application in the IR."""

    id: str
    op: str
    attrs: Mapping[str, Any]
    inputs: tuple[str, ...]
    span: Span | None = None
    path: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> OpSpec:
        return CATALOG[self.op]

    @property
    def key(self) -> str:
        """The state_dict prefix of this node's parameters, e.g. ``"3"`` or ``"5.1.0"``."""
        return ".".join(self.path)

    def describe(self) -> str:
        """Human name for messages: ``Conv2d (layer 3)``."""
        return f"{self.op} (layer {self.key})" if self.path else self.op


class IRGraph:
    """A network: one Input node, op nodes, one output node."""

    def __init__(self, name: str = "net", source_file: str | None = None):
        self.name = name
        self.source_file = source_file
        self.g = nx.DiGraph()
        self.input_id: str | None = None
        self.output_id: str | None = None
        self.params: dict[str, Any] = {}  # network parameters after instantiation (for printing)
        self._count = 0

    # ------------------------------------------------------------------ building
    def add(
        self,
        op: str,
        attrs: Mapping[str, Any] | None = None,
        inputs: Sequence[str] = (),
        *,
        span: Span | None = None,
        path: Sequence[str] = (),
    ) -> str:
        """Append a node applying ``op`` to ``inputs``; return its id."""
        nid = f"n{self._count}"
        self._count += 1
        node = Node(nid, op, freeze(attrs or {}), tuple(inputs), span, tuple(path))
        self.g.add_node(nid, node=node)
        for src in inputs:
            self.g.add_edge(src, nid)
        if op == "Input":
            self.input_id = nid
        self.output_id = nid
        return nid

    def set_output(self, nid: str) -> None:
        self.output_id = nid

    # ------------------------------------------------------------------ reading
    def node(self, nid: str) -> Node:
        return self.g.nodes[nid]["node"]

    def __getitem__(self, nid: str) -> Node:
        return self.node(nid)

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def nodes(self) -> Iterator[Node]:
        """Nodes in a deterministic topological order (creation order breaks ties)."""
        order = nx.lexicographical_topological_sort(self.g, key=lambda n: int(n[1:]))
        for nid in order:
            yield self.node(nid)

    def consumers(self, nid: str) -> list[Node]:
        return [self.node(s) for s in sorted(self.g.successors(nid), key=lambda n: int(n[1:]))]

    @property
    def input(self) -> Node:
        assert self.input_id is not None, "graph has no Input node"
        return self.node(self.input_id)

    @property
    def output(self) -> Node:
        assert self.output_id is not None, "graph is empty"
        return self.node(self.output_id)

    def copy(self) -> IRGraph:
        """A structural copy: new Node objects (attrs shared, frozen), meta copied shallowly."""
        out = IRGraph(self.name, self.source_file)
        out.g = nx.DiGraph()
        for n in self.nodes():
            m = Node(n.id, n.op, n.attrs, n.inputs, n.span, n.path, dict(n.meta))
            out.g.add_node(n.id, node=m)
        out.g.add_edges_from(self.g.edges)
        out.input_id, out.output_id, out._count = self.input_id, self.output_id, self._count
        return out

    def replace_uses(self, old: str, new: str) -> None:
        """Make every consumer of ``old`` read ``new`` instead."""
        for c in self.consumers(old):
            c.inputs = tuple(new if i == old else i for i in c.inputs)
            self.g.remove_edge(old, c.id)
            self.g.add_edge(new, c.id)
        if self.output_id == old:
            self.output_id = new

    def remove(self, nid: str) -> None:
        """Remove a node that has exactly one input, rewiring its consumers to that input."""
        node = self.node(nid)
        assert len(node.inputs) == 1, f"cannot bypass {node.describe()} with {len(node.inputs)} inputs"
        self.replace_uses(nid, node.inputs[0])
        self.g.remove_node(nid)

    def insert_after(self, nid: str, op: str, attrs: Mapping[str, Any], *, meta: dict | None = None) -> str:
        """Insert a unary node right after ``nid``, taking over all its consumers."""
        src = self.node(nid)
        new = f"n{self._count}"
        self._count += 1
        node = Node(new, op, freeze(attrs), (nid,), src.span, src.path, dict(meta or {}))
        consumers = self.consumers(nid)
        was_output = self.output_id == nid
        self.g.add_node(new, node=node)
        for c in consumers:
            c.inputs = tuple(new if i == nid else i for i in c.inputs)
            self.g.remove_edge(nid, c.id)
            self.g.add_edge(new, c.id)
        self.g.add_edge(nid, new)
        if was_output:
            self.output_id = new
        return new

    # ------------------------------------------------------------------ convenience
    @classmethod
    def sequential(
        cls,
        input_shape: Sequence[int],
        layers: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        low: float = 0.0,
        high: float = 1.0,
        name: str = "net",
    ) -> IRGraph:
        """Build a chain from ``(op, attrs)`` pairs; attrs are coerced and defaulted.

        >>> g = IRGraph.sequential([4], [("Linear", {"out_features": 3}), ("ReLU", {})])
        >>> [n.op for n in g.nodes()]
        ['Input', 'Linear', 'ReLU']
        """
        g = cls(name)
        cur = g.add("Input", {"shape": tuple(input_shape), "low": low, "high": high})
        for i, (op, attrs) in enumerate(layers):
            cur = g.add(op, complete_attrs(op, attrs), [cur], path=(str(i),))
        return g


def complete_attrs(op: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Coerce given attributes and fill defaults (for programmatic construction)."""
    spec = CATALOG[op]
    out = spec.default_attrs()
    for k, v in attrs.items():
        a = spec.attr_index[k]
        out[a.name] = a.coerce(v)
    missing = [a.name for a in spec.attrs if a.required and a.name not in out]
    if missing:
        raise TypeError(f"{op} needs {', '.join(missing)}")
    return out
