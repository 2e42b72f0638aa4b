"""absnet.backends.onnx: the tensor-ops facade staged out as ONNX (OnnxOps) and the analysis-graph export."""

from absnet.backends.onnx.export import DEFAULT_OPSET, export_onnx, run_onnx
from absnet.backends.onnx.ops import OnnxOps

__all__ = ["DEFAULT_OPSET", "OnnxOps", "export_onnx", "run_onnx"]
