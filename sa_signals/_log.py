"""The library's logger, and how it names the functions it reports."""

from __future__ import annotations

import logging

logger = logging.getLogger("sa_signals")
"""The library's logger: failing receivers and callbacks are reported here at ERROR."""


def describe(func: object) -> str:
    """Name ``func`` for a log message: its qualified name and module where it has them."""
    name = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if name and module:
        return f"{module}.{name}"
    return repr(func)
