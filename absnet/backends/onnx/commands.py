"""``absc import``: a concrete ONNX network → ``.absnet`` source and a safetensors weights file."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_import(a: argparse.Namespace) -> int:
    import torch

    from absnet.backends.onnx.importer import import_onnx
    from absnet.train.checkpoint import load_weights, save_checkpoint

    imp = import_onnx(a.model, input_range=tuple(a.input_range) if a.input_range else None, name=a.name)
    out = Path(a.output) if a.output else Path(a.model).with_suffix(".absnet")
    weights = Path(a.weights) if a.weights else out.with_suffix(".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(imp.source)
    save_checkpoint(weights, {k: torch.from_numpy(v.copy()) for k, v in imp.weights.items()},
                    {"imported_from": str(a.model), "network": imp.net.name, "source": out.name})
    load_weights(weights, imp.net)  # read back what was written: the files load as they will be used
    layers = sum(1 for n in imp.net.graph.nodes() if n.op != "Input")
    print(f"wrote {out} (network {imp.net.name}: input {list(imp.net.input_shape)} range "
          f"[{imp.net.input_range[0]:g}, {imp.net.input_range[1]:g}], {layers} layers, "
          f"output {list(imp.net.output_shape)})")
    print(f"wrote {weights} ({len(imp.weights)} tensors)")
    print(f"use: absc compile {out} --checkpoint {weights} --domain 'CROWN()'")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``absc import``."""
    s = sub.add_parser("import", help="import a concrete ONNX network as .absnet source and safetensors weights")
    s.add_argument("model", help="the .onnx file")
    s.add_argument("--output", "-o", help="the .absnet file to write (default: MODEL with suffix .absnet)")
    s.add_argument("--weights", "-w", help="the .safetensors file to write (default: OUTPUT with suffix .safetensors)")
    s.add_argument("--input-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="the declared input range (default: the one absnet's export recorded, else unbounded)")
    s.add_argument("--name", help="the network's name in the source (default: from the file name)")
    s.set_defaults(fn=cmd_import)
