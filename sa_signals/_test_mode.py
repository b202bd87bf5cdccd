"""The transactional test mode's pieces shared by sync and async factories.

- :func:`bound`: a factory's sessions bound to the test's Connection for a block, the Connection
  marked, and each session's outermost commit (a SAVEPOINT release) made to check the deferred
  constraints that the real COMMIT would check.
- :func:`in_scope`, :func:`current_session` and :func:`bound_sessions`: whether the code runs
  in a scope of a scoped registry, its current session, and its sessions on the Connection in
  every scope.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import typing as t

import sqlalchemy as sa
import sqlalchemy.event as sa_event

from ._core.state import TRANSACTIONAL_ATTR

if t.TYPE_CHECKING:
    import sqlalchemy.orm as sa_orm

_CHECK_SAVEPOINT = "sa_signals_check"
"""The SAVEPOINT a constraint check runs in, rolled back after it."""


@contextlib.contextmanager
def bound(
    maker: t.Any,
    session_class: type[sa_orm.Session],
    connection: sa.Connection,
    bind: object,
) -> c.Iterator[None]:
    """Bind the sessions of ``maker`` to ``bind`` (``connection``, or its ``AsyncConnection``)
    for the block, each joining its transaction with a SAVEPOINT; restore ``maker`` after.

    ``connection`` is marked for the layer, and the release of a SAVEPOINT that stands for the
    outermost transaction of a ``session_class`` session checks deferred constraints first.
    """
    saved = dict(maker.kw)
    maker.configure(bind=bind, join_transaction_mode="create_savepoint")
    connection.__dict__[TRANSACTIONAL_ATTR] = True
    commits = _SimulatedCommits(connection)
    listeners: list[tuple[t.Any, str, c.Callable[..., None]]] = [
        (session_class, "after_begin", commits.session_begun),
        (session_class, "after_transaction_end", commits.session_ended),
        (connection, "rollback_savepoint", commits.savepoint_rolled_back),
        (connection, "release_savepoint", commits.savepoint_released),
    ]
    for target, name, listener in listeners:
        # Before the layer's own after_transaction_end, whose receivers may use the Connection.
        sa_event.listen(target, name, listener, insert=True)
    try:
        yield
    finally:
        for target, name, listener in listeners:
            sa_event.remove(target, name, listener)
        del connection.__dict__[TRANSACTIONAL_ATTR]
        maker.kw.clear()
        maker.kw.update(saved)


class _SimulatedCommits:
    """Tells which SAVEPOINTs of the test's Connection stand for a session's outermost
    transaction, and checks deferred constraints before one of them is released."""

    def __init__(self, connection: sa.Connection) -> None:
        self.connection = connection
        self.outermost: set[sa.NestedTransaction] = set()
        """The open SAVEPOINTs that are sessions' outermost transactions."""
        self.failed: list[sa.NestedTransaction] = []
        """The SAVEPOINTs whose release failed the check, until their session's transaction
        ends."""

    def session_begun(
        self,
        session: sa_orm.Session,
        transaction: sa_orm.SessionTransaction,
        connection: sa.Connection,
    ) -> None:
        # With join_transaction_mode="create_savepoint" SQLAlchemy begins the SAVEPOINT of a
        # session's outermost transaction right before it sends after_begin.
        if transaction.parent is None and connection is self.connection:
            savepoint = connection.get_nested_transaction()
            if savepoint is not None:
                self.outermost.add(savepoint)

    def session_ended(
        self, session: sa_orm.Session, transaction: sa_orm.SessionTransaction
    ) -> None:
        # A failed release leaves SQLAlchemy's SAVEPOINT inactive on the Connection, where only
        # a rollback() of the session takes it off (a close() does not, unlike after a failed
        # COMMIT): take it off, as the database's part is done.
        if transaction.parent is None and self.failed:
            for savepoint in reversed(self.failed):
                if self.connection.get_nested_transaction() is savepoint:
                    savepoint.rollback()  # inactive: emits nothing
            self.failed.clear()

    # SQLAlchemy releases or rolls back a SAVEPOINT while it is still the Connection's innermost.

    def savepoint_rolled_back(self, connection: sa.Connection, name: str, context: None) -> None:
        self.outermost.discard(connection.get_nested_transaction())

    def savepoint_released(self, connection: sa.Connection, name: str, context: None) -> None:
        savepoint = connection.get_nested_transaction()
        if savepoint not in self.outermost:
            return  # a session's begin_nested(): a release checks nothing in production either
        self.outermost.discard(savepoint)
        check = _CHECKS.get(connection.dialect.name)
        if check is None:
            return
        try:
            check(connection)
        except sa.exc.DBAPIError:
            # The real COMMIT would have failed and rolled back: so does the session's work.
            dialect = connection.dialect
            dialect.do_rollback_to_savepoint(connection, name)
            dialect.do_release_savepoint(connection, name)
            self.failed.append(savepoint)
            raise


def _check_postgresql(connection: sa.Connection) -> None:
    """Run the deferred constraint checks now, as COMMIT would; leave their modes as they were.

    Rolling back to a SAVEPOINT restores the constraint modes ``SET CONSTRAINTS`` changed in it,
    and the pending checks it ran (PostgreSQL's ``AfterTriggerEndSubXact``).
    """
    dialect = connection.dialect
    dialect.do_savepoint(connection, _CHECK_SAVEPOINT)
    try:
        connection.exec_driver_sql("SET CONSTRAINTS ALL IMMEDIATE")
    finally:
        dialect.do_rollback_to_savepoint(connection, _CHECK_SAVEPOINT)
        dialect.do_release_savepoint(connection, _CHECK_SAVEPOINT)


def _check_sqlite(connection: sa.Connection) -> None:
    """Look for rows that break a deferred foreign key, which COMMIT would refuse.

    SQLite defers only foreign keys: those declared ``DEFERRABLE INITIALLY DEFERRED``, or all of
    them while ``PRAGMA defer_foreign_keys`` is on (COMMIT turns it off: so does this check).
    """
    if not connection.exec_driver_sql("PRAGMA foreign_keys").scalar():
        return
    defer_all = connection.exec_driver_sql("PRAGMA defer_foreign_keys").scalar()
    query = "SELECT name FROM sqlite_master WHERE type = 'table'"
    if not defer_all:
        query += " AND sql LIKE '%DEFERRED%'"  # LIKE ignores case
    quote = connection.dialect.identifier_preparer.quote_identifier
    try:
        for table in connection.exec_driver_sql(query).scalars().all():
            check = f"PRAGMA foreign_key_check({quote(table)})"
            violation = connection.exec_driver_sql(check).first()
            if violation is not None:
                child, rowid, parent, _ = violation
                error = connection.dialect.loaded_dbapi.IntegrityError(
                    "FOREIGN KEY constraint failed (checked at the simulated COMMIT: row"
                    f" {rowid} of {child!r} references a missing row of {parent!r})"
                )
                raise sa.exc.IntegrityError(None, None, error)
    finally:
        if defer_all:
            connection.exec_driver_sql("PRAGMA defer_foreign_keys = OFF")


_CHECKS: dict[str, c.Callable[[sa.Connection], None]] = {
    "postgresql": _check_postgresql,
    "sqlite": _check_sqlite,
}
"""The deferred-constraint check of each dialect that defers constraints; MySQL and MariaDB
check every constraint at once."""


def in_scope(registry: t.Any) -> bool:
    """Whether the code runs in a scope of the scoped ``registry``.

    Not outside a Flask application context, a ``Scope``'s unit of work or a running task,
    where the registry's scopefunc raises ``RuntimeError``.
    """
    try:
        registry.has()
    except RuntimeError:
        return False
    return True


def current_session(registry: t.Any) -> t.Any:
    """Return the current session of a scoped ``registry``, or None (also outside its scopes)."""
    if in_scope(registry) and registry.has():
        return registry()
    return None


def bound_sessions(registry: t.Any, bind: object) -> list[t.Any]:
    """Return the sessions of a scoped ``registry`` bound to ``bind``, in every scope, and
    delete their keys; the current session (whatever its bind) comes first.

    Each request, task or unit of work of the test made its own: all are the test's.
    """
    found = []
    current = current_session(registry)
    if current is not None:
        found.append(current)
        registry.clear()
    sessions: dict[t.Any, t.Any] = getattr(registry, "registry", {})
    if isinstance(sessions, dict):  # a ScopedRegistry; a ThreadLocalRegistry has only this one
        for key, session in list(sessions.items()):
            if session.bind is bind:
                del sessions[key]
                found.append(session)
    return found
