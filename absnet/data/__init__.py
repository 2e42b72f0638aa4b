"""absnet.data."""
