"""absnet.train."""
