"""Benchmarks: the cost of sa_signals next to bare SQLAlchemy, a hand-rolled listener and Django."""
