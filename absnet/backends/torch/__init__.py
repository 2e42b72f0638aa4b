"""absnet.backends.torch."""
