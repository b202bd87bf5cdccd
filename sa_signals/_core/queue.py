"""The on_commit queue of one session's transaction: savepoint marks, cuts, hand-overs.

The queue is in registration order and a savepoint's callbacks were all registered while it
was the innermost one, so they are the queue's tail from its mark (``SessionState.marks``).
"""

from __future__ import annotations

import inspect
import typing as t

from .state import NO_FIELDS
from .state import NO_TRANSACTION
from .state import NOBODY
from .state import SessionState
from .state import TRANSACTION_FIELDS_KNOWN

if t.TYPE_CHECKING:
    import sqlalchemy.orm as sa_orm

    from .aio import AsyncSupport
    from .state import Item

_FIELDS_KNOWN = TRANSACTION_FIELDS_KNOWN

EMPTY: t.Final = SessionState(None)
"""The state of no session: what :data:`last` is when no fast registration may happen."""

last: SessionState = EMPTY
"""The state ``on_commit()`` queued on last, for its fast path: while that session's innermost
transaction is still :attr:`SessionState.current`, a plain function is appended to the queue
without any other check (reading a ``Session`` attribute costs more than most of a
registration; this costs one). Replaced by the next full registration, and reset by the end of
the transaction (:func:`forget`) and by ``uninstall()``."""


def push(state: SessionState, savepoint: sa_orm.SessionTransaction | None, item: Item) -> None:
    """Queue ``item``, registered while ``savepoint`` (or no savepoint) was the innermost."""
    queue = state.queue
    if savepoint is not None:
        marks = state.marks
        if not marks or marks[-1][0] is not savepoint:
            marks.append((savepoint, len(queue)))
    queue.append(item)


def end_savepoint(
    state: SessionState,
    savepoint: sa_orm.SessionTransaction,
    parent: sa_orm.SessionTransaction | None,
) -> None:
    """Drop the callbacks of rolled-back ``savepoint``, or hand them to ``parent``.

    ``parent`` is the enclosing savepoint or outermost transaction of a released savepoint,
    None for a rolled-back one.
    """
    marks = state.marks
    if not (marks and marks[-1][0] is savepoint):
        return
    start = marks.pop()[1]
    if parent is None:
        del state.queue[start:]
        state.plain = None  # it may have been cut: hold no callback that will not run
        for watch in state.watches:
            if start < watch.start:
                watch.start = start
    elif parent.nested and not (marks and marks[-1][0] is parent):
        marks.append((parent, start))


def take(state: SessionState) -> list[Item]:
    """Empty the queue before anything runs, so a failing callback still clears it."""
    queue = state.queue
    if queue:
        state.queue = []
        state.marks.clear()
        state.plain = None
    return queue


def remember(
    state: SessionState, session: sa_orm.Session, aio: AsyncSupport | None = None
) -> None:
    """Let ``on_commit()``'s fast path append to ``state`` while the innermost transaction of
    ``session`` (a savepoint, a flush's, or the outermost) stays the one it is now; given
    ``session`` itself, or for an async install (``aio``) its ``AsyncSession``."""
    global last  # one reference, replaced whole: a thread reads the old or the new one
    if _FIELDS_KNOWN:
        state.session = session
        if aio is None:
            state.public, state.refused = NOBODY, inspect.CO_COROUTINE
        else:
            state.public, state.refused = aio.public(session), 0
        state.fields = session.__dict__
        state.current = session._transaction
        last = state


def forget(state: SessionState) -> None:
    """End the fast path of ``state``: its transaction ended. Nothing of it is kept: neither the
    session nor, if it was the last one used, the state itself."""
    global last
    state.session = state.public = NOBODY
    state.fields = NO_FIELDS
    state.current = NO_TRANSACTION
    if last is state:
        last = EMPTY


def forget_all() -> None:
    """End every fast path (an installation is going away)."""
    forget(last)
