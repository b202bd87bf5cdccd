"""``on_commit()``: the savepoint-aware queue of callbacks of one session's transaction."""

from __future__ import annotations

import inspect
import types
import typing as t

import sqlalchemy.orm as sa_orm

from ._dispatch import _is_coroutine_function
from ._runner import Item
from ._runner import run
from ._runner import Work
from ._state import async_api
from ._state import installation_for
from ._state import SessionState
from ._state import state_of
from ._state import TRANSACTION_FIELDS_KNOWN
from .changes import settle_changes
from .exceptions import CoroutineMisuseError
from .exceptions import NotInstalledError
from .typing import Callback

if t.TYPE_CHECKING:
    from .typing import SessionTarget

_FunctionType = types.FunctionType
_CO_COROUTINE = inspect.CO_COROUTINE
_FIELDS_KNOWN = TRANSACTION_FIELDS_KNOWN
_Session = sa_orm.Session


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
    session = target if isinstance(target, _Session) else _session_of(target)
    # The hot path, inlined: a session in a transaction whose state was made by an installation
    # still in place, and a plain function (no coroutine flag, no attributes that could carry a
    # coroutine marker), not checked again when the same one is registered again. Anything else
    # takes _register().
    try:
        # None (a class default) until the session has a state; missing if not installed.
        state: SessionState | None = session._sa_signals_state  # type: ignore[attr-defined]
        if (
            state is not None
            and _FIELDS_KNOWN
            and session._transaction is not None
            and state.installation.active  # type: ignore[union-attr]
        ):
            if callback is not state.plain:
                if (
                    type(callback) is not _FunctionType
                    or callback.__dict__
                    or callback.__code__.co_flags & _CO_COROUTINE
                ):
                    _register(callback, session, robust)
                    return
                state.plain = callback
            queue = state.queue
            savepoint = session._nested_transaction
            if savepoint is not None:
                marks = state.marks
                if not marks or marks[-1][0] is not savepoint:
                    marks.append((savepoint, len(queue)))
            queue.append(callback if robust else Work(callback, False))
            return
    except AttributeError:  # not installed: no class default (STATE_ATTR names it)
        pass
    _register(callback, session, robust)


def _register(callback: Callback, session: sa_orm.Session, robust: bool) -> None:
    """Check ``callback`` and ``session`` fully, then queue or run ``callback``."""
    if not callable(callback):
        msg = f"on_commit() needs a callable, got {callback!r}"
        raise TypeError(msg)
    installation = installation_for(session)
    if installation is None:
        msg = (
            f"{type(session).__name__} is not installed: call sa_signals.install() on its"
            " sessionmaker or scoped_session before registering on_commit callbacks."
        )
        raise NotInstalledError(msg)
    aio = installation.aio
    is_coroutine = _is_coroutine_function(callback)
    if is_coroutine and aio is None:
        msg = (
            f"on_commit() got the coroutine function {callback!r} for a synchronous Session,"
            " where nothing can await it; pass a plain function."
        )
        raise CoroutineMisuseError(msg)
    if not session.in_transaction():
        if is_coroutine and aio is not None and not aio.can_await():
            msg = (
                f"on_commit() cannot await the coroutine function {callback!r} now: the"
                " AsyncSession is not in a transaction, so it would run at once; use"
                " `await sa_signals.on_commit_async(callback, session)`."
            )
            raise CoroutineMisuseError(msg)
        run((callback if robust else Work(callback, False),), session, installation)
        return
    state = state_of(session)
    state.installation = installation  # made before an uninstall(), a state is stale
    queue = state.queue
    savepoint = session.get_nested_transaction()
    if savepoint is not None:
        marks = state.marks
        if not marks or marks[-1][0] is not savepoint:
            marks.append((savepoint, len(queue)))
    queue.append(callback if robust else Work(callback, False))
    if not is_coroutine:
        state.plain = callback


def _session_of(target: object) -> sa_orm.Session:
    if isinstance(target, sa_orm.scoped_session):
        session: sa_orm.Session = target()
        return session
    api = async_api()
    if api is not None:
        if isinstance(target, api.AsyncSession):
            session = target.sync_session
            return session
        if isinstance(target, api.async_scoped_session):
            session = target().sync_session
            return session
    msg = (
        "on_commit() needs a Session or a scoped_session (or an AsyncSession or an"
        f" async_scoped_session), got {target!r}"
    )
    raise TypeError(msg)


def end_savepoint(
    state: SessionState, savepoint: sa_orm.SessionTransaction, committed: bool
) -> None:
    """Settle the callbacks and recorded changes of ``savepoint``, which has just ended.

    A released (``committed``) savepoint hands them to its enclosing savepoint (or the outermost
    transaction), so that a later rollback of that one drops them too; a rolled-back one drops
    them.

    The queue is in registration order and a savepoint's callbacks were all registered while it
    was the innermost one, so they are the queue's tail from its mark (``SessionState.marks``).
    """
    marks = state.marks
    if not (marks or state.changes):
        return
    parent = None
    if committed:
        parent = savepoint.parent
        # A savepoint begun during a flush has the flush's subtransaction as parent: skip it.
        while parent is not None and parent.parent is not None and not parent.nested:
            parent = parent.parent
    if marks and marks[-1][0] is savepoint:
        start = marks.pop()[1]
        if not committed:
            del state.queue[start:]
            state.plain = None  # it may have been cut: hold no callback that will not run
            if start < state.cut:
                state.cut = start
        elif parent is not None and parent.nested and not (marks and marks[-1][0] is parent):
            marks.append((parent, start))
    if state.changes:
        settle_changes(state, savepoint, parent)


def take_queue(state: SessionState) -> list[Item]:
    """Empty the queue before anything runs, so a failing callback still clears it."""
    queue = state.queue
    if queue:
        state.queue = []
        state.marks.clear()
        state.plain = None
    return queue
