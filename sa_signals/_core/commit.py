"""The end of a session's outermost transaction: what runs after a COMMIT, what a rollback
drops.

After a real COMMIT the commit-time work runs, in this order: the ``after_commit`` receivers,
``models_committed``, ``committed``, then the on_commit callbacks. After a rollback,
``after_rollback`` is sent, then what the transaction had flushed (:mod:`.rollbacks`). A
session joined into its caller's Connection transaction did not COMMIT: its work waits on that
Connection (:mod:`.external`). A commit made by commit-time work itself sends no
``after_commit`` (nothing can loop), and its change sets go to the run's next round
(:func:`.runner.later`).
"""

from __future__ import annotations

import typing as t

from .. import signals
from . import changes
from . import external
from . import queue
from . import rollbacks
from .runner import is_layer_session
from .runner import later
from .runner import run
from .send import send
from .state import COMMITTED_ATTR
from .state import CONNECTIONS_KNOWN
from .state import installation_for
from .state import STATE_ATTR
from .work import Work

if t.TYPE_CHECKING:
    import sqlalchemy as sa
    import sqlalchemy.orm as sa_orm

    from .records import Record
    from .state import Item
    from .state import Outcome
    from .state import SessionState

_CONNECTIONS_KNOWN = CONNECTIONS_KNOWN


def end_outermost(
    session: sa_orm.Session, transaction: sa_orm.SessionTransaction
) -> Exception | None:
    """Run, hold or drop the work of ``transaction``, which has just ended; return the first
    error of a non-robust item, for ``commit()`` to raise.

    The COMMIT or ROLLBACK is done and the connection is back in the pool.
    """
    committed = session.__dict__.pop(COMMITTED_ATTR, None) is transaction
    state: SessionState | None = session.__dict__.get(STATE_ATTR)
    if state is None:
        # The common case: nothing queued or recorded (no state was made).
        callbacks: list[Item] = []
        records: list[Record] = []
        connections: list[sa.Connection] = []
        watched = False
    else:
        queue.forget(state)
        callbacks = queue.take(state)
        records = changes.take(state)
        connections = state.connections
        if connections:
            state.connections = []
        state.origins = None
        watched = bool(state.watches)
    has_receivers = bool(
        signals.after_commit.receivers if committed else signals.after_rollback.receivers
    )
    if not (has_receivers or callbacks or records):
        return None  # nothing queued, nobody listening
    installation = installation_for(session)
    if installation is None:  # uninstalled while the transaction was open
        return None
    aio = installation.aio
    public = session if aio is None else aio.public(session)
    if not committed:
        if watched and callbacks:
            observe(state, session, callbacks, "rolled back")  # type: ignore[arg-type]
        sends_records = bool(records) and rollbacks.wanted()
        if not (has_receivers or sends_records) or is_layer_session(session):
            return None
        if has_receivers:
            try:
                send(signals.after_rollback, public, public, installation.robust, aio)
            except Exception as exc:  # a strict receiver raised
                return exc
        if sends_records:
            return rollbacks.send_rolled_back(records, session, installation, savepoint=False)
        return None
    # SessionTransaction.connections is new in SQLAlchemy 2.1.7.
    used = transaction.connections if _CONNECTIONS_KNOWN else connections  # type: ignore[attr-defined,unused-ignore]
    outer = external.outer_connections(session, used)
    layer = is_layer_session(session)
    items: list[Item] = []
    if has_receivers and not layer:
        sync = aio is None
        items.extend(
            Work(receiver, installation.robust, (public,), signals.after_commit, is_coro and sync)
            for receiver, is_coro in signals.after_commit.receivers_in_order(public)
        )
    if records:
        work = changes.commit_work(records, public, installation)
        if not (layer and not outer and later(work, session, installation)):
            items.extend(work)
    if watched and callbacks:
        callbacks = observe(state, session, callbacks, "held" if outer else "committed")  # type: ignore[arg-type]
    items.extend(callbacks)
    if not items:
        return None
    if outer:
        external.hold(outer, items, session, installation)
        return None
    return run(items, session, installation)


def observe(
    state: SessionState, session: sa_orm.Session, callbacks: list[Item], outcome: Outcome
) -> list[Item]:
    """Show the callbacks to the observers of the queue; return those left to run or hold."""
    for watch in list(state.watches):
        callbacks = watch.observer.ended(state, session, callbacks, outcome)
    return callbacks
