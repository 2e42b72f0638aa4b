"""absnet.backends.onnx."""
