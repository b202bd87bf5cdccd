"""What a rolled-back transaction or savepoint had flushed: sent on ``models_rolled_back`` and,
per change, on ``rolled_back``, inside the rollback.

The mirror of the change sets sent after a COMMIT (:func:`.changes.commit_work`): the same
records, folded the same way, but sent in place, as ``after_rollback`` is, since a savepoint's
outer transaction is still open and nothing waits for a COMMIT.
"""

from __future__ import annotations

import typing as t

from .. import signals
from . import changes
from .send import send_change
from .send import send_changes

if t.TYPE_CHECKING:
    import sqlalchemy.orm as sa_orm

    from .records import Record
    from .state import Installation


def wanted() -> bool:
    """Whether a rollback signal has a receiver."""
    return bool(signals.models_rolled_back.receivers or signals.rolled_back.receivers)


def send_rolled_back(
    records: list[Record],
    session: sa_orm.Session,
    installation: Installation,
    *,
    savepoint: bool,
) -> Exception | None:
    """Send the net changes of ``records``, just rolled back; return the exception of a strict
    receiver (which stops the sends) for the rollback to raise."""
    rolled_back = changes.net_changes(records)
    if not rolled_back:
        return None
    aio = installation.aio
    public = session if aio is None else aio.public(session)
    robust = installation.robust
    try:
        send_changes(
            signals.models_rolled_back, public, robust, aio, rolled_back, savepoint=savepoint
        )
        if signals.rolled_back.receivers:
            for change in rolled_back:
                send_change(signals.rolled_back, change, public, robust, aio, savepoint=savepoint)
    except Exception as exc:
        return exc
    return None
