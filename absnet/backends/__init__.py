"""absnet.backends."""
