"""Benchmarks: what sa_signals costs next to bare SQLAlchemy, a hand-rolled listener, Django."""
