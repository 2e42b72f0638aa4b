"""absnet.passes."""
