"""absnet.goals."""
