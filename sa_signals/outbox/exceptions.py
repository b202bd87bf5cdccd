"""The errors of the outbox."""

from __future__ import annotations

from ..exceptions import SaSignalsError


class OutboxError(SaSignalsError):
    """Base class of the errors the outbox raises."""


class UnknownHandlerError(OutboxError, LookupError):
    """A row names a handler that no imported module registered."""


class HandlerNameError(OutboxError, ValueError):
    """Two different functions were registered under one handler name."""


class NoTableError(OutboxError, LookupError):
    """The outbox table was never declared with ``sa_signals.outbox.table()``."""
