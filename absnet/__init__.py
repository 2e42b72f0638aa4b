"""absnet: a compiler for provably robust neural networks."""
