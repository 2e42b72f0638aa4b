"""absnet.transformers."""
