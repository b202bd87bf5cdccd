"""What the end of a savepoint does to the work of its transaction.

A released savepoint hands its on_commit callbacks and recorded writes to the enclosing
savepoint (or the outermost transaction), so that a later rollback of that one drops them too;
a rolled-back savepoint drops them, and sends what it had flushed on the rollback signals.
SQLAlchemy fires ``after_commit`` for a release too: the bridge tells the two apart by what
committed last (``COMMITTED_ATTR``).
"""

from __future__ import annotations

import typing as t

from . import changes
from . import queue
from . import rollbacks
from .runner import is_layer_session
from .state import installation_for

if t.TYPE_CHECKING:
    import sqlalchemy.orm as sa_orm

    from .state import SessionState


def end_savepoint(
    state: SessionState,
    session: sa_orm.Session,
    savepoint: sa_orm.SessionTransaction,
    committed: bool,
) -> Exception | None:
    """Settle the callbacks and records of ``savepoint``, released or rolled back just now;
    return the exception of a strict rollback receiver, for the rollback to raise."""
    if not (state.marks or state.changes):
        return None
    parent = None
    if committed:
        parent = savepoint.parent
        # A savepoint begun during a flush has the flush's subtransaction as parent: skip it.
        while parent is not None and parent.parent is not None and not parent.nested:
            parent = parent.parent
    if state.marks:
        queue.end_savepoint(state, savepoint, parent)
    if not state.changes:
        return None
    dropped = changes.settle(state, savepoint, parent)
    if not (dropped and rollbacks.wanted()) or is_layer_session(session):
        return None
    installation = installation_for(session)
    if installation is None:  # uninstalled while the session was in use
        return None
    return rollbacks.send_rolled_back(dropped, session, installation, savepoint=True)
