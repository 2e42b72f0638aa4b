"""absnet.verify."""
