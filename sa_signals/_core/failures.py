"""How failures of commit-time calls and receivers are built, logged and reported."""

from __future__ import annotations

import inspect
import typing as t

import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm

from .. import signals
from .._dispatch import Signal
from .._log import describe
from .._log import logger
from ..exceptions import CoroutineMisuseError
from ..exceptions import SessionLeftOpenError

if t.TYPE_CHECKING:
    from .aio import AsyncSupport

WRAPPED_CALLBACK_ATTR = "_sa_signals_callback"
"""Set by the testing helpers on a wrapper they queue in place of a user's callback."""


def left_open_error(func: object) -> SessionLeftOpenError:
    """The error for a callback that used the session that had committed."""
    msg = (
        f"{describe(func)} used the session that had committed (a query, a write, or an"
        " attribute of one of its objects, expired by the commit, being loaded); what it began"
        " was rolled back. Inside a callback use the distinct session: call the"
        " scoped_session, or sa_signals.current_session(). In a change receiver read"
        " change.identity and change.changes rather than change.instance, or make the session"
        " with expire_on_commit=False."
    )
    return SessionLeftOpenError(msg)


def is_closed_context_error(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLAlchemy's refusal to use a session inside ``with session.begin()``
    after that block's commit began: a callback that used the session that committed."""
    return isinstance(exc, sa_exc.InvalidRequestError) and str(exc).startswith(
        "Can't operate on closed transaction inside context manager"
    )


def coroutine_error(func: object) -> CoroutineMisuseError:
    """The error for a coroutine function met where nothing can await it."""
    msg = (
        f"{describe(func)} is a coroutine function, but the commit came from a synchronous"
        " Session where nothing can await it; use a plain function, or an AsyncSession."
    )
    return CoroutineMisuseError(msg)


def returned_coroutine_error(func: object) -> CoroutineMisuseError:
    """The error for a plain function that returned a coroutine, which was closed unawaited."""
    msg = (
        f"{describe(func)} returned a coroutine, which a synchronous Session cannot await; it"
        " was closed without running. Use a plain function, or an AsyncSession."
    )
    return CoroutineMisuseError(msg)


def close_quietly(session: sa_orm.Session) -> None:
    """Roll ``session`` back, logging rather than raising a failure."""
    try:
        session.rollback()
    except Exception:
        logger.exception("rolling back %r failed", session)


def report(
    func: object, signal: Signal | None, origin: object, exc: Exception, aio: AsyncSupport | None
) -> None:
    """Log ``exc`` raised by ``func`` (a callback, or a receiver of ``signal``) and send it on."""
    if signal is None:
        # capture_on_commit(execute=True) runs a recording wrapper: report the user's callback.
        callback = getattr(func, WRAPPED_CALLBACK_ATTR, func)
        logger.error("on_commit callback %s failed", describe(callback), exc_info=exc)
        send_failure(signals.on_commit_failed, origin, aio, callback=callback, exception=exc)
    else:
        report_receiver(signal, func, origin, exc, aio)


def report_receiver(
    signal: Signal, receiver: object, origin: object, exc: Exception, aio: AsyncSupport | None
) -> None:
    """Log a failing receiver of ``signal`` and send it on ``receiver_failed``."""
    logger.error("receiver %s of %s failed", describe(receiver), signal.name, exc_info=exc)
    send_failure(
        signals.receiver_failed, origin, aio, signal=signal, receiver=receiver, exception=exc
    )


def send_failure(
    signal: Signal, sender: object, aio: AsyncSupport | None, /, **kwargs: t.Any
) -> None:
    """Send a failure signal; a receiver that raises here is only logged."""
    if not signal.receivers:
        return
    for receiver, is_coroutine in signal.receivers_in_order(sender):
        try:
            if is_coroutine and aio is None:
                raise coroutine_error(receiver)
            result = receiver(sender, **kwargs)
            if inspect.iscoroutine(result):
                if aio is None:
                    result.close()
                    raise returned_coroutine_error(receiver)
                aio.await_(result)
        except Exception:
            logger.exception("receiver %s of %s failed", describe(receiver), signal.name)
