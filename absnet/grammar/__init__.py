"""absnet.grammar."""
