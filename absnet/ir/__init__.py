"""absnet.ir."""
