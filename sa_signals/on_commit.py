"""``on_commit()``: the savepoint-aware queue of callbacks of one session's transaction."""

from __future__ import annotations

import inspect
import types
import typing as t

import sqlalchemy.orm as sa_orm

from ._dispatch import _is_coroutine_function
from ._runner import run
from ._runner import Work
from ._state import async_api
from ._state import installation_for
from ._state import SessionState
from ._state import STATE_ATTR
from ._state import state_of
from .changes import settle_changes
from .exceptions import CoroutineMisuseError
from .exceptions import NotInstalledError
from .typing import Callback

if t.TYPE_CHECKING:
    from .typing import SessionTarget


class Pending(Work):
    """An on_commit callback waiting for its transaction (a savepoint or the outermost one)."""

    __slots__ = ("transaction",)

    def __init__(
        self, transaction: sa_orm.SessionTransaction, callback: Callback, robust: bool
    ) -> None:
        # Work.__init__ inlined: one of these is made per on_commit() call.
        self.func = callback
        self.robust = robust
        self.args = ()
        self.signal = None
        self.is_coroutine = False
        self.kwargs = None
        self.transaction = transaction


def on_commit(callback: Callback, target: SessionTarget, /, *, robust: bool = True) -> None:
    """Run ``callback`` after the outermost transaction of ``target`` truly commits.

    ``target`` is a session, or a ``scoped_session`` standing for its current session; an
    ``AsyncSession`` or ``async_scoped_session`` also takes coroutine functions, awaited
    before ``await commit()`` returns (see ``docs/asyncio.md``).

    The callback is dropped if that transaction, or a savepoint it was registered in, rolls
    back. It runs with no arguments inside a distinct session (see :func:`current_session`).
    Registered while the session is not in a transaction, it runs at once.

    With ``robust=True`` an exception from the callback is logged and sent on
    :data:`~sa_signals.signals.on_commit_failed`; with ``robust=False`` it propagates out of
    ``commit()`` once every other callback has run. The data stays committed either way.
    """
    if not callable(callback):
        msg = f"on_commit() needs a callable, got {callback!r}"
        raise TypeError(msg)
    if isinstance(target, sa_orm.Session):
        session: sa_orm.Session = target
    elif isinstance(target, sa_orm.scoped_session):
        session = target()
    else:
        session = _sync_session_of(target)
    installation = installation_for(session)
    if installation is None:
        msg = (
            f"{type(session).__name__} is not installed: call sa_signals.install() on its"
            " sessionmaker or scoped_session before registering on_commit callbacks."
        )
        raise NotInstalledError(msg)
    aio = installation.aio
    if type(callback) is types.FunctionType and not callback.__dict__:
        # _is_coroutine_function()'s fast path, inlined: on_commit() is on the hot path.
        is_coroutine = bool(callback.__code__.co_flags & inspect.CO_COROUTINE)
    else:
        is_coroutine = _is_coroutine_function(callback)
    if is_coroutine and aio is None:
        msg = (
            f"on_commit() got the coroutine function {callback!r} for a synchronous Session,"
            " where nothing can await it; pass a plain function."
        )
        raise CoroutineMisuseError(msg)
    # current_transaction(), inlined.
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:
        if is_coroutine and aio is not None and not aio.can_await():
            msg = (
                f"on_commit() cannot await the coroutine function {callback!r} now: the"
                " AsyncSession is not in a transaction, so it would run at once; use"
                " `await sa_signals.on_commit_async(callback, session)`."
            )
            raise CoroutineMisuseError(msg)
        run((Work(callback, robust),), session, installation)
        return
    state: SessionState | None = session.__dict__.get(STATE_ATTR)
    if state is None:
        state = state_of(session)
    state.queue.append(Pending(transaction, callback, robust))


def _sync_session_of(target: object) -> sa_orm.Session:
    api = async_api()
    if api is not None:
        if isinstance(target, api.AsyncSession):
            session: sa_orm.Session = target.sync_session
            return session
        if isinstance(target, api.async_scoped_session):
            session = target().sync_session
            return session
    msg = (
        "on_commit() needs a Session or a scoped_session (or an AsyncSession or an"
        f" async_scoped_session), got {target!r}"
    )
    raise TypeError(msg)


def end_savepoint(state: SessionState, savepoint: sa_orm.SessionTransaction) -> None:
    """Settle the callbacks and recorded changes of ``savepoint``, which has just ended.

    A released savepoint hands them to its parent, so that a later rollback of the parent drops
    them too; a rolled-back one drops them.
    """
    committed = state.committed is savepoint
    if committed:
        state.committed = None
    queue = state.queue
    if not (queue or state.changes):
        return
    if committed:
        parent = savepoint.parent
        # A savepoint begun during a flush has the flush's subtransaction as parent: skip it.
        while parent is not None and parent.parent is not None and not parent.nested:
            parent = parent.parent
        for pending in queue:
            if pending.transaction is savepoint:
                pending.transaction = parent  # type: ignore[assignment]
        settle_changes(state, savepoint, parent)
    else:
        if queue:
            state.queue = [pending for pending in queue if pending.transaction is not savepoint]
        settle_changes(state, savepoint, None)


def take_queue(state: SessionState) -> list[Pending]:
    """Empty the queue before anything runs, so a failing callback still clears it."""
    queue = state.queue
    if queue:
        state.queue = []
    return queue
