"""The public Python API (re-exported by ``absnet``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from absnet.backends.torch.network import AbstractNetwork
from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.passes.pipeline import lower


def compile_source(
    text: str,
    network: str | None = None,
    *,
    args: Mapping[str, Any] | None = None,
    file: str = "<string>",
    seed: int = 0,
) -> AbstractNetwork:
    """Compile ``.absnet`` source to an :class:`AbstractNetwork` (``network=None``: the last one).

    >>> import absnet
    >>> net = absnet.compile_source("network N { input [4]  Linear(2) }")
    >>> net.output_shape
    (2,)
    """
    graph, _ = lower(text, file=file, network=network, args=args)
    return AbstractNetwork(graph, source=text, seed=seed)


def compile_file(
    path: str | Path, network: str | None = None, *, args: Mapping[str, Any] | None = None, seed: int = 0
) -> AbstractNetwork:
    """Compile a network of an ``.absnet`` file; ``args`` instantiates its parameters.

    >>> net = compile_file("models/diffai.absnet", network="ConvSmall", args={"in_ch": 3, "size": 32})  # doctest: +SKIP
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise AbsnetError(Diagnostic("E604", f"cannot read {path}: {e.strerror}")) from None
    return compile_source(text, network, args=args, file=str(path), seed=seed)


def export_onnx(
    net: AbstractNetwork, path: str | Path | None = None, domain: str = "Box()", input_spec: str = "ball",
    margins: bool = False, opset: int = 17, *, plan_batch: int = 1,
) -> Any:
    """The ONNX abstract analysis graph of ``net`` under ``domain`` (an ``onnx.ModelProto``; also
    written to ``path`` when given). Contract, analyses and limits: docs/onnx.md.

    >>> net = compile_source("network N { input [2]  Linear(2) }")
    >>> [o.name for o in export_onnx(net, domain="CROWN()").graph.output]
    ['lower', 'upper']
    """
    from absnet.backends.onnx.export import export_onnx as export

    return export(net, path, domain=domain, input_spec=input_spec, margins=margins, opset=opset,
                  plan_batch=plan_batch)


def compile_onnx(path_or_model: str | Path | Any, input_range: tuple[float, float] | None = None) -> AbstractNetwork:
    """Compile a concrete ONNX network (a path or an ``onnx.ModelProto``) into an AbstractNetwork with
    its weights, in eval mode; ``net.input_shape`` is the ONNX input's shape without the batch axis
    and ``net.source`` the emitted ``.absnet`` text. ``input_range`` defaults to the range absnet's
    own export recorded, else unbounded. Unsupported nodes: one E503 listing them all (docs/onnx.md).

    >>> net = compile_source("network N { input [3] range [0, 1]  Linear(2) }")
    >>> compile_onnx(export_onnx(net, domain="Point()")).input_shape
    (3,)
    """
    from absnet.backends.onnx.importer import compile_onnx as compile_

    return compile_(path_or_model, input_range=input_range)
