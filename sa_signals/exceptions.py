"""The errors and warnings sa_signals raises."""

from __future__ import annotations


class SaSignalsError(Exception):
    """Base class of every error raised by sa_signals."""


class NotInstalledError(SaSignalsError, LookupError):
    """The session's factory was never passed to ``sa_signals.install()``."""


class InstallError(SaSignalsError, ValueError):
    """``install()`` was given something it cannot listen on, or that overlaps an installation."""


class SessionLeftOpenError(SaSignalsError):
    """A callback began a transaction on the session that had committed; the layer rolled it back.

    Raised (and reported) instead of leaving the transaction open. Inside a callback, use the
    distinct session: ``Session()`` of the installed ``scoped_session`` or
    ``sa_signals.current_session()``.
    """


class OutsideCallbackError(SaSignalsError, RuntimeError):
    """``current_session()`` was called outside an on_commit callback or commit-time receiver."""


class CoroutineMisuseError(SaSignalsError, TypeError):
    """A coroutine function met a synchronous session, where nothing can await it."""


class ScopeError(SaSignalsError, RuntimeError):
    """A scope was misused: the transactional test mode met a scoped session already in a
    transaction, or a ``contrib.scopes.Scope`` was used outside a unit of work or with a key in
    use."""


class ChangeLoopError(SaSignalsError, RuntimeError):
    """Commit-time work kept committing changes that caused more commit-time work.

    Reported on ``receiver_failed`` for each receiver whose send was dropped past the limit.
    """


class ExternalTransactionError(SaSignalsError, RuntimeError):
    """An on_commit callback met a transaction the layer cannot see the end of.

    Raised at registration when the session is bound to a Connection whose transaction its
    caller began, and the layer cannot follow that Connection's COMMIT.
    """


class SenderNameError(SaSignalsError, LookupError):
    """A string sender names no mapped class, or several.

    Raised at ``connect()`` when the name is ambiguous already, else by the first flush after the
    connect that finds the name still unresolved.
    """


class SaSignalsWarning(UserWarning):
    """Base class of every warning issued by sa_signals."""


class NotInstalledWarning(SaSignalsWarning):
    """A unit of work or a session's transaction began while signals have receivers but no
    session factory is installed.

    Nothing can send those signals: ``sa_signals.install()`` was forgotten, or comes too late.
    """


class WeakReceiverWarning(SaSignalsWarning):
    """A receiver connected weakly (blinker's default) is referenced by nothing else: it will be
    collected at once and never called. Connect it with ``weak=False``, or keep a reference."""
