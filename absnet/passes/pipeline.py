"""The compiler pipeline: source → IR → checked IR → AbstractNetwork.

Order: resolve and lower (``absnet.frontend``) → infer_shapes → infer_domains (every DiffAI
analysis, train and eval mode, for ``check``; the linear-relaxation analyses when asked for, since
DiffAI's directives have no linear rules) → decompose and estimate_cost (per analysis, in the
backends).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic, SourceMap
from absnet.ir.domains import ANALYSES, Analysis
from absnet.ir.graph import IRGraph
from absnet.passes.infer_domains import InferDomains
from absnet.passes.infer_shapes import InferShapes

#: the analyses every network must support (checked at compile time)
CHECKED = tuple(a for a in ANALYSES.values() if a.kind != "linear")


def check_graph(graph: IRGraph, analyses: Iterable[Analysis] | None = None) -> IRGraph:
    """Infer shapes, then type the graph under every analysis of ``analyses`` (default
    :data:`CHECKED`) in both modes; raise all errors."""
    InferShapes().run(graph)
    found: dict[tuple, Diagnostic] = {}
    for a in analyses if analyses is not None else CHECKED:
        for training in (False, True):
            try:
                InferDomains(a, training).run(graph.copy())
            except AbsnetError as e:
                for d in e.diagnostics:
                    found.setdefault((d.code, d.span, d.message), d)
    if found:
        raise AbsnetError(list(found.values()))
    return graph


def lower(
    text: str, *, file: str = "<string>", network: str | None = None, args: Mapping[str, Any] | None = None
) -> tuple[IRGraph, SourceMap]:
    """Parse and lower one network of ``text`` to a shaped, domain-checked IR graph."""
    from absnet import frontend

    sources = SourceMap()
    sources.add(file, text)
    try:
        module = frontend.parse_source(text, file)
        sources = module.sources
        graph = frontend.lower_network(module, network=network, args=args, file=file)
        check_graph(graph)
    except AbsnetError as e:
        if e.sources is None:
            raise e.with_sources(sources) from None
        raise
    return graph, sources


def check_text(
    text: str, file: str = "<string>", analyses: Iterable[Analysis] = ()
) -> tuple[list[Diagnostic], SourceMap]:
    """Every problem of a file (what ``absc check`` reports): front end, then shapes and domains of
    every network with its default parameters, under the DiffAI analyses and ``analyses``. Returns
    the diagnostics and the sources to render."""
    from absnet import frontend

    diags, sources = frontend.collect_diagnostics(text, file)
    if diags:
        return diags, sources
    module = frontend.parse_source(text, file)
    for name in frontend.list_networks(module, file=file):
        try:
            check_graph(frontend.lower_network(module, network=name, file=file), (*CHECKED, *analyses))
        except AbsnetError as e:
            diags.extend(e.diagnostics)
    return diags, module.sources
