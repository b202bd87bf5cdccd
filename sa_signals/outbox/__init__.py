"""Durable commit-time work: a transactional outbox with at-least-once delivery.

See ``docs/outbox.md``. ``enqueue()`` writes a row in the session's transaction; the committing
process runs it right after the COMMIT, and a worker (``python -m sa_signals.outbox worker``)
runs whatever that did not finish.
"""

from __future__ import annotations

from .admin import Stats
from .async_worker import AsyncWorker
from .enqueue import enqueue
from .exceptions import HandlerNameError
from .exceptions import NoTableError
from .exceptions import OutboxError
from .exceptions import UnknownHandlerError
from .handlers import Handler
from .handlers import handler
from .retry import Backoff
from .table import table
from .worker import drain
from .worker import Worker

__all__ = [
    "AsyncWorker",
    "Backoff",
    "Handler",
    "HandlerNameError",
    "NoTableError",
    "OutboxError",
    "Stats",
    "UnknownHandlerError",
    "Worker",
    "drain",
    "enqueue",
    "handler",
    "table",
]
