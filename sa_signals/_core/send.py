"""Sending a signal inside the transaction: each receiver in order, robust or vetoing."""

from __future__ import annotations

import types
import typing as t

from ..exceptions import CoroutineMisuseError
from .failures import report_receiver
from .failures import returned_coroutine_error
from .state import installation_for

if t.TYPE_CHECKING:
    import collections.abc as c

    import sqlalchemy.orm as sa_orm

    from .._dispatch import Signal
    from .aio import AsyncSupport
    from .records import Change


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
    still run, if it is robust (see :meth:`~sa_signals._dispatch.Signal.robust_for`, given the
    installation's ``robust``); otherwise its exception propagates at once, aborting the flush
    or commit (a veto), and is not reported. Coroutine receivers are awaited for an async
    install.
    """
    # Runs for every row of every flush: the call is inlined here, not shared with _deliver().
    for receiver, is_coroutine in signal.receivers_in_order(sender):
        try:
            if is_coroutine and aio is None:
                raise _coroutine_receiver_error(signal, receiver)
            result = receiver(sender, **kwargs)
            if isinstance(result, types.CoroutineType):  # also a partial of an async function
                _await(result, receiver, aio)
        except Exception as exc:
            if not signal.robust_for(receiver, robust):
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


def send_changes(
    signal: Signal,
    sender: object,
    robust: bool,
    aio: AsyncSupport | None,
    changes: c.Sequence[Change],
    /,
    **kwargs: t.Any,
) -> None:
    """Send a list signal of ``changes`` (sender and origin: the session) as :func:`send`
    does; each receiver gets a list of its own, of the operations it was connected ``on``, and
    none if that is empty."""
    for receiver, is_coroutine in signal.receivers_in_order(sender):
        own = signal.changes_for(receiver, changes)
        if own:
            _deliver(
                signal, receiver, is_coroutine, sender, sender, robust, aio, changes=own, **kwargs
            )


def send_change(
    signal: Signal,
    change: Change,
    origin: object,
    robust: bool,
    aio: AsyncSupport | None,
    /,
    **kwargs: t.Any,
) -> None:
    """Send a per-change signal for ``change`` (sender: its mapped class) as :func:`send`
    does, to the receivers connected ``on`` its operation."""
    for receiver, is_coroutine in signal.receivers_in_order(change.model):
        if not signal.wants(receiver, change.operation):
            continue
        _deliver(
            signal,
            receiver,
            is_coroutine,
            change.model,
            origin,
            robust,
            aio,
            change=change,
            **kwargs,
        )


def _deliver(
    signal: Signal,
    receiver: c.Callable[..., object],
    is_coroutine: bool,
    sender: object,
    origin: object,
    robust: bool,
    aio: AsyncSupport | None,
    /,
    **kwargs: t.Any,
) -> None:
    try:
        if is_coroutine and aio is None:
            raise _coroutine_receiver_error(signal, receiver)
        result = receiver(sender, **kwargs)
        if isinstance(result, types.CoroutineType):
            _await(result, receiver, aio)
    except Exception as exc:
        if not signal.robust_for(receiver, robust):
            raise
        report_receiver(signal, receiver, origin, exc, aio)


def _await(
    result: types.CoroutineType[t.Any, t.Any, t.Any], receiver: object, aio: AsyncSupport | None
) -> None:
    if aio is None:
        result.close()  # never awaited: close it rather than leak a RuntimeWarning
        raise returned_coroutine_error(receiver)
    aio.await_(result)


def _coroutine_receiver_error(signal: Signal, receiver: object) -> CoroutineMisuseError:
    msg = (
        f"{receiver!r} is a coroutine function connected to {signal.name}, but the event came"
        " from a synchronous Session where nothing can await it."
    )
    return CoroutineMisuseError(msg)
