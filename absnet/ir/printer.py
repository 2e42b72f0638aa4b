"""A stable text dump of the IR (used by ``absc show ir`` and golden tests)."""

from __future__ import annotations

from typing import Any

from absnet.ir.graph import IRGraph


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return f'"{v}"'
    if v is None:
        return "none"
    return str(v)


def print_graph(graph: IRGraph, *, meta: tuple[str, ...] = ("shape",)) -> str:
    """One line per node in topological order: ``%id = Op(inputs) {attrs}  # layer path : meta``."""
    lines = [f"graph {graph.name} {{"]
    for n in graph.nodes():
        attrs = ", ".join(f"{k}={_fmt(v)}" for k, v in n.attrs.items())
        ins = ", ".join(f"%{i}" for i in n.inputs)
        line = f"  %{n.id} = {n.op}({ins})"
        if attrs:
            line += f" {{{attrs}}}"
        extra = [f"layer {n.key}"] if n.path else []
        extra += [f"{m}={_fmt(n.meta[m])}" for m in meta if m in n.meta]
        if extra:
            line += "  # " + ", ".join(extra)
        lines.append(line)
    lines.append(f"  return %{graph.output_id}")
    lines.append("}")
    return "\n".join(lines)
