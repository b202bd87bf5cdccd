"""The on_commit queue of one session's transaction: savepoint marks, cuts, hand-overs.

The queue is in registration order and a savepoint's callbacks were all registered while it
was the innermost one, so they are the queue's tail from its mark (``SessionState.marks``).
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    import sqlalchemy.orm as sa_orm

    from .state import Item
    from .state import SessionState


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
