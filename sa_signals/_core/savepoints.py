"""What the end of a savepoint does to the work of its transaction.

A released savepoint hands its on_commit callbacks and recorded writes to the enclosing
savepoint (or the outermost transaction), so that a later rollback of that one drops them too;
a rolled-back savepoint drops them. SQLAlchemy fires ``after_commit`` for a release too: the
bridge tells the two apart by what committed last (``COMMITTED_ATTR``).
"""

from __future__ import annotations

import typing as t

from . import changes
from . import queue

if t.TYPE_CHECKING:
    import sqlalchemy.orm as sa_orm

    from .state import SessionState


def end_savepoint(
    state: SessionState, savepoint: sa_orm.SessionTransaction, committed: bool
) -> None:
    """Settle the callbacks and records of ``savepoint``, released or rolled back just now."""
    if not (state.marks or state.changes):
        return
    parent = None
    if committed:
        parent = savepoint.parent
        # A savepoint begun during a flush has the flush's subtransaction as parent: skip it.
        while parent is not None and parent.parent is not None and not parent.nested:
            parent = parent.parent
    if state.marks:
        queue.end_savepoint(state, savepoint, parent)
    if state.changes:
        changes.settle(state, savepoint, parent)
