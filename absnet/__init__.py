"""absnet: a compiler for provably robust neural networks.

>>> import absnet
>>> net = absnet.compile_source("network N { input [2]  Linear(2) }")
>>> net.input_shape
(2,)
"""

from absnet.api import compile_file, compile_onnx, compile_source, export_onnx
from absnet.backends.torch.from_torch import from_torch
from absnet.backends.torch.network import AbstractNetwork
from absnet.diagnostics import AbsnetError
from absnet.ir.domains import ANALYSES

__version__ = "0.1.0"
__all__ = ["ANALYSES", "AbsnetError", "AbstractNetwork", "__version__", "compile_file", "compile_onnx",
           "compile_source", "export_onnx", "from_torch"]
