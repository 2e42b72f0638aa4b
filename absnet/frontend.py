"""The front half of the compiler: ``.absnet`` text → AST → checked names → :class:`IRGraph`.

>>> g = lower_network("network N(w=3) { input [4] Linear(w) ReLU() }", args={"w": 5})
>>> [(n.op, n.key) for n in g.nodes()]
[('Input', ''), ('Linear', '0'), ('ReLU', '1')]

Every function raises :class:`~absnet.diagnostics.AbsnetError` carrying all the problems found
and the text of every file involved, so ``str(err)`` quotes the offending lines.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic, DiagnosticBag, SourceMap, did_you_mean
from absnet.grammar import ast
from absnet.grammar.evaluate import evaluate
from absnet.grammar.parser import parse_expr, parse_text
from absnet.ir.domains import Analysis, make_analysis
from absnet.ir.graph import IRGraph
from absnet.ir.ops import lookup
from absnet.passes.lower import Lowerer, dedupe
from absnet.passes.resolve import TrainSpec, resolve_train

Source = ast.Module | str


# --------------------------------------------------------------------------- parsing


def parse_source(text: str, file: str = "<string>") -> ast.Module:
    """Parse ``text`` and, recursively, the files it imports.

    ``import "path"`` (at the top level or in a ``train`` block) is relative to the importing
    file's directory (the working directory for ``<string>``). A file is parsed once; import
    cycles are ignored. Imported networks and blocks are visible to the importer.

    Raises:
        AbsnetError: syntax errors (E1xx) and unreadable imports (E214).
    """
    return _parse(text, file, SourceMap(), {}, [])


def parse_file(path: str | os.PathLike[str]) -> ast.Module:
    """Read and parse a file (see :func:`parse_source`)."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        return parse_source(f.read(), path)


def _parse(
    text: str, file: str, sources: SourceMap, done: dict[str, ast.Module], stack: list[str]
) -> ast.Module:
    module = parse_text(text, file, sources)
    key = os.path.realpath(file) if not file.startswith("<") else file
    stack.append(key)
    imports: list[ast.Module] = []
    diags: list[Diagnostic] = []
    for imp in _imports(module):
        path = _import_path(file, imp.path)
        k = os.path.realpath(path)
        if k in stack:
            continue  # a cycle: that file is being parsed already
        if k not in done:
            try:
                with open(path, encoding="utf-8") as f:
                    sub_text = f.read()
            except OSError as e:
                diags.append(Diagnostic("E214", f'cannot import "{imp.path}": {e.strerror or e}', imp.span,
                                        notes=(f"looked for {path}",),
                                        help="import paths are relative to the importing file"))
                continue
            done[k] = _parse(sub_text, path, sources, done, stack)
        if done[k] not in imports:
            imports.append(done[k])
    stack.pop()
    if diags:
        raise AbsnetError(diags, sources)
    return ast.Module(file, module.items, tuple(imports), sources)


def _imports(module: ast.Module) -> list[ast.Import]:
    out: list[ast.Import] = []
    for it in module.items:
        if isinstance(it, ast.Import):
            out.append(it)
        elif isinstance(it, ast.TrainDef):
            out.extend(it.imports)
    return out


def _import_path(importer: str, rel: str) -> str:
    if os.path.isabs(rel):
        return rel
    base = "" if importer.startswith("<") else os.path.dirname(importer)
    return os.path.normpath(os.path.join(base, rel))


def _module(source: Source, file: str) -> ast.Module:
    return source if isinstance(source, ast.Module) else parse_source(source, file)


# --------------------------------------------------------------------------- lowering


def lower_network(
    source: Source, network: str | None = None, args: Mapping[str, Any] | None = None, file: str = "<string>"
) -> IRGraph:
    """Lower one network to an IR graph.

    Args:
        source: a parsed module or the text of one.
        network: the network's name; None picks the only/last network defined in the text (or,
            if it defines none, the last one it imports).
        args: values for the network's parameters, e.g. ``{"width": 200}``.
        file: the file name used in messages when ``source`` is text.

    Raises:
        AbsnetError: every problem found (unknown names, bad arguments, …), with source lines.
    """
    module = _module(source, file)
    nets, blocks = module.networks(), module.blocks()
    net = _pick_network(module, nets, network)
    bag = DiagnosticBag()
    graph = Lowerer(blocks, bag).network(net, args or {})
    if bag:
        raise AbsnetError(dedupe(bag.items), module.sources)
    return graph


def _pick_network(module: ast.Module, nets: dict[str, ast.NetworkDef], name: str | None) -> ast.NetworkDef:
    if name is None:
        own = module.own(ast.NetworkDef)
        if own:
            return own[-1]
        if nets:
            return list(nets.values())[-1]
        raise AbsnetError(Diagnostic("E201", f"{module.file} defines no network",
                                     help="define one: network Name { input [...] ... }"), module.sources)
    if name not in nets:
        raise AbsnetError(Diagnostic(
            "E201", f"unknown network '{name}'", None,
            notes=(f"networks in {module.file}: {', '.join(nets) or 'none'}",), help=did_you_mean(name, nets),
        ), module.sources)
    return nets[name]


def list_networks(source: Source, file: str = "<string>") -> list[str]:
    """Names of the networks visible in ``source`` (imported ones first), in definition order."""
    return list(_module(source, file).networks())


# --------------------------------------------------------------------------- checking


def collect_diagnostics(source: Source, file: str = "<string>") -> tuple[list[Diagnostic], SourceMap]:
    """Check everything in ``source`` and return all problems (empty when clean) and the sources.

    Networks are checked with their default parameters (parameters without one are left unknown),
    blocks on their own, train blocks against the visible networks. Syntax errors stop at the
    first one per file.
    """
    try:
        module = _module(source, file)
    except AbsnetError as e:
        return list(e.diagnostics), e.sources or SourceMap()
    diags: list[Diagnostic] = []
    nets, dup = module.definitions(ast.NetworkDef)
    blocks, dup_blocks = module.definitions(ast.BlockDef)
    diags += dup + dup_blocks + module.definitions(ast.TrainDef)[1]
    bag = DiagnosticBag()
    for b in blocks.values():
        if lookup(b.name) is not None:
            bag.error("E211", f"block '{b.name}' has the name of a built-in layer", b.name_span,
                      help="rename the block")
    for m in module.modules():
        for it in m.items:
            if isinstance(it, ast.NetworkDef):
                Lowerer(blocks, bag).network(it, check=True)
            elif isinstance(it, ast.BlockDef):
                Lowerer(blocks, bag).block(it)
            elif isinstance(it, ast.TrainDef):
                from absnet.train.config import check_train

                bag.extend(check_train(it, nets))
    diags.extend(bag.items)
    return dedupe(diags), module.sources


def check_source(source: Source, file: str = "<string>") -> ast.Module:
    """Check ``source`` completely; return the parsed module, or raise every problem at once.

    Raises:
        AbsnetError: all diagnostics, rendered with their source lines.
    """
    diags, sources = collect_diagnostics(source, file)
    if diags:
        raise AbsnetError(diags, sources)
    return _module(source, file)


# --------------------------------------------------------------------------- train blocks


def list_trains(source: Source, file: str = "<string>") -> list[str]:
    """Names of the ``train`` blocks visible in ``source``."""
    return list(_module(source, file).trains())


def get_train(source: Source, name: str | None = None, file: str = "<string>") -> TrainSpec:
    """The checked ``train`` block called ``name`` (None: the only/last one in the text).

    Goals, tests, data and optimizer are kept as expressions; ``epsilon`` is a number or a
    resolved schedule; ``network`` is checked to exist.
    """
    module = _module(source, file)
    nets, trains = module.networks(), module.trains()
    if name is None:
        own = module.own(ast.TrainDef) or list(trains.values())
        if not own:
            raise AbsnetError(Diagnostic("E201", f"{module.file} defines no train block"), module.sources)
        train = own[-1]
    elif name not in trains:
        raise AbsnetError(Diagnostic("E201", f"unknown train block '{name}'", None,
                                     help=did_you_mean(name, trains)), module.sources)
    else:
        train = trains[name]
    spec, diags = resolve_train(train, nets)
    if diags:
        raise AbsnetError(diags, module.sources)
    return spec


# --------------------------------------------------------------------------- analyses


def parse_analysis(text: str) -> Analysis:
    """Parse an analysis written in the DSL's syntax: ``"HBox()"``, ``'ZBox(relu="NIPS")'``, ``"Box"``.

    >>> parse_analysis('HBox(relu="NIPS")').relu
    'NIPS'
    """
    sources = SourceMap()
    file = "<domain>"
    try:
        expr = parse_expr(text.strip(), file, sources)
        if isinstance(expr, ast.Name):
            return make_analysis(expr.name, {}, expr.span)
        if not isinstance(expr, ast.Call):
            raise AbsnetError(Diagnostic("E206", f"expected an analysis such as HBox(), got '{text.strip()}'",
                                         expr.span))
        if expr.positional:
            raise AbsnetError(Diagnostic("E208", f"{expr.name}() takes only keyword arguments",
                                         expr.positional[0].span, help=f'e.g. {expr.name}(relu="NIPS")'))
        kwargs: dict[str, Any] = {}
        for a in expr.args:
            if a.name in kwargs:
                msg = f"argument '{a.name}' of {expr.name} is given twice"
                raise AbsnetError(Diagnostic("E204", msg, a.span))
            if isinstance(a.value, ast.Name):  # relu=NIPS may be written without quotes
                kwargs[a.name] = a.value.name
            else:
                kwargs[a.name] = evaluate(a.value, {}, expr.name)
        return make_analysis(expr.name, kwargs, expr.span)
    except AbsnetError as e:
        raise e.with_sources(sources) from None
