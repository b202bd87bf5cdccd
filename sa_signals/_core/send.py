"""Sending a signal inside the transaction: each receiver in order, robust or vetoing."""

from __future__ import annotations

import types
import typing as t

from ..exceptions import CoroutineMisuseError
from .failures import report_receiver
from .failures import returned_coroutine_error
from .state import installation_for

if t.TYPE_CHECKING:
    import sqlalchemy.orm as sa_orm

    from .._dispatch import Signal
    from .aio import AsyncSupport


def send(
    signal: Signal,
    sender: object,
    origin: object,
    robust: bool,
    aio: AsyncSupport | None,
    /,
    **kwargs: t.Any,
) -> None:
    """Call the receivers of ``signal`` for ``sender`` in order, inside the transaction.

    A failing receiver is reported with ``origin`` (the session the user holds) and the others
    still run; with ``robust=False`` its exception propagates at once, aborting the flush or
    commit (a veto). Coroutine receivers are awaited for an async install.
    """
    for receiver, is_coroutine in signal.receivers_in_order(sender):
        try:
            if is_coroutine and aio is None:
                raise _coroutine_receiver_error(signal, receiver)
            result = receiver(sender, **kwargs)
            if isinstance(result, types.CoroutineType):  # also a partial of an async function
                if aio is None:
                    result.close()  # never awaited: close it rather than leak a RuntimeWarning
                    raise returned_coroutine_error(receiver)
                aio.await_(result)
        except Exception as exc:
            if not robust:
                raise
            report_receiver(signal, receiver, origin, exc, aio)


def send_session(signal: Signal, session: sa_orm.Session, /, **kwargs: t.Any) -> None:
    """Send ``signal`` with the session the user holds as sender (an ``AsyncSession`` for
    an async install)."""
    installation = installation_for(session)
    if installation is None:  # uninstalled while the session was in use
        return
    aio = installation.aio
    sender = session if aio is None else aio.public(session)
    send(signal, sender, sender, installation.robust, aio, **kwargs)


def _coroutine_receiver_error(signal: Signal, receiver: object) -> CoroutineMisuseError:
    msg = (
        f"{receiver!r} is a coroutine function connected to {signal.name}, but the event came"
        " from a synchronous Session where nothing can await it."
    )
    return CoroutineMisuseError(msg)
