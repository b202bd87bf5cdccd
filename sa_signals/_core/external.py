"""Commit-time work of a session joined into a Connection's own transaction, held until that
Connection really commits.

A session bound to a Connection whose transaction its caller began (``conn.begin()``,
``Session(bind=conn)``: the usual pattern of test suites, and of code that commits by hand)
does not COMMIT: its ``commit()`` releases a savepoint, or nothing. Its commit-time work waits
on the Connection instead: it runs once the Connection's outermost transaction COMMITs, and is
dropped when that transaction, or a savepoint of the Connection that enclosed the work, rolls
back. Work that waits on several Connections runs once all of them committed.

SQLAlchemy fires its ``commit`` event before the COMMIT and none after it, so the layer wraps
``_commit_impl`` of that one Connection (the step every commit of it goes through), where a
check at import finds SQLAlchemy's layout; elsewhere :func:`can_hold` is False and ``on_commit()``
refuses such registrations with :class:`~sa_signals.ExternalTransactionError`.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
import sqlalchemy.event as sa_event

from .._log import logger
from .join import Join
from .runner import run
from .state import TRANSACTIONAL_ATTR

if t.TYPE_CHECKING:
    import collections.abc as c

    import sqlalchemy.orm as sa_orm

    from .state import Installation
    from .state import Item

HELD_ATTR = "_sa_signals_held"
"""Connection attribute: the list of :class:`Held` work waiting on its outermost COMMIT."""


class Held(Join):
    """Commit-time work waiting on the COMMIT of one or more Connections."""

    __slots__ = ("installation", "items", "origin", "savepoints")

    def __init__(
        self,
        items: list[Item],
        origin: sa_orm.Session,
        installation: Installation,
        connections: c.Collection[sa.Connection],
    ) -> None:
        super().__init__(connections)
        self.items = items
        self.origin = origin
        self.installation = installation
        self.savepoints = {connection: _open_savepoints(connection) for connection in connections}
        """Per Connection, the names of its savepoints that were open when the work was held."""


def _layout_known() -> bool:
    # Connection._commit_impl() is called by every COMMIT of the Connection's outermost
    # transaction (Connection.commit(), Transaction.commit(), leaving `with conn.begin()`);
    # NestedTransaction keeps its name in `_savepoint` and the enclosing one in
    # `_previous_nested` (SQLAlchemy 2.0 and 2.1). Checked once, on a throw-away SQLite engine.
    engine = sa.create_engine("sqlite://")
    try:
        with engine.connect() as connection:
            seen: list[bool] = []
            original = connection._commit_impl

            def probe() -> None:
                original()
                seen.append(connection.in_transaction())

            connection.__dict__["_commit_impl"] = probe
            connection.begin()
            outer = connection.begin_nested()
            inner = connection.begin_nested()
            names = _open_savepoints(connection)
            inner.commit()
            outer.commit()
            connection.commit()
            with connection.begin():
                pass
            return (
                seen == [True, True]
                and not connection.in_transaction()
                and names == (getattr(inner, "_savepoint", 0), getattr(outer, "_savepoint", 0))
                and None not in names
            )
    except Exception:
        return False
    finally:
        engine.dispose()


def _open_savepoints(connection: sa.Connection) -> tuple[str, ...]:
    """Return the names of the savepoints open on ``connection``, innermost first."""
    names = []
    nested = connection.get_nested_transaction()
    while nested is not None:
        names.append(getattr(nested, "_savepoint", None))
        nested = getattr(nested, "_previous_nested", None)
    return tuple(names)  # type: ignore[arg-type]


_LAYOUT_KNOWN = _layout_known()


def can_hold() -> bool:
    """Whether work can wait on a Connection's COMMIT (see the module's docstring)."""
    return _LAYOUT_KNOWN


def outer_connections(
    session: sa_orm.Session, connections: c.Collection[sa.Connection]
) -> list[sa.Connection]:
    """Return the Connections whose transaction outlived the session's outermost one.

    ``connections`` are those the session's transaction used (its ``bind`` if none). A real
    COMMIT leaves none in a transaction; a Connection in the transactional test mode counts as
    committed (its outer transaction stands in for the database).
    """
    if not connections:
        bind = session.bind
        connections = (bind,) if isinstance(bind, sa.Connection) else ()
    return [
        connection
        for connection in connections
        if connection.in_transaction() and not connection.__dict__.get(TRANSACTIONAL_ATTR)
    ]


def hold(
    connections: c.Collection[sa.Connection],
    items: list[Item],
    origin: sa_orm.Session,
    installation: Installation,
) -> None:
    """Hold ``items`` until every one of ``connections`` committed its outermost transaction."""
    if not _LAYOUT_KNOWN:
        logger.error(
            "%d commit-time call(s) of %r were dropped: the session is joined into a"
            " Connection's own transaction, whose COMMIT this SQLAlchemy does not let"
            " sa_signals follow",
            len(items),
            origin,
        )
        return
    held = Held(items, origin, installation, connections)
    for connection in connections:
        waiting: list[Held] | None = connection.__dict__.get(HELD_ATTR)
        if waiting is None:
            waiting = connection.__dict__[HELD_ATTR] = []
            _follow(connection)
        waiting.append(held)


def _follow(connection: sa.Connection) -> None:
    """Wrap the COMMIT of ``connection`` and listen to its rollbacks, once per Connection."""
    original = connection._commit_impl

    def _commit_impl() -> None:
        original()
        _committed(connection)

    connection.__dict__["_commit_impl"] = _commit_impl
    sa_event.listen(connection, "rollback", _rolled_back)
    sa_event.listen(connection, "rollback_savepoint", _savepoint_rolled_back)


def _committed(connection: sa.Connection) -> None:
    # The COMMIT returned; SQLAlchemy is about to mark the transaction ended. The work runs in
    # distinct sessions bound to the Engine, never to this Connection (see runner.run()).
    waiting: list[Held] = connection.__dict__.get(HELD_ATTR) or []
    connection.__dict__[HELD_ATTR] = []
    first_error: Exception | None = None
    for held in waiting:
        if not held.arrive(connection):
            continue
        error = run(
            held.items,
            held.origin,
            held.installation,
            away_from=connection,
            raise_first=first_error is None,
        )
        if error is not None and first_error is None:
            first_error = error
    if first_error is not None:
        raise first_error


def _rolled_back(connection: sa.Connection) -> None:
    waiting: list[Held] = connection.__dict__.get(HELD_ATTR) or []
    connection.__dict__[HELD_ATTR] = []
    for held in waiting:
        held.dropped = True


def _savepoint_rolled_back(connection: sa.Connection, name: str, context: object) -> None:
    waiting: list[Held] = connection.__dict__.get(HELD_ATTR) or []
    for held in waiting:
        if name in held.savepoints.get(connection, ()):
            held.dropped = True
    connection.__dict__[HELD_ATTR] = [held for held in waiting if not held.dropped]
