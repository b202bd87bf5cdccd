"""``enqueue()``: write a row of durable work in the session's transaction."""

from __future__ import annotations

import datetime
import json
import typing as t
import weakref

import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
import sqlalchemy.util.concurrency as sa_concurrency

from . import handlers
from .dispatch import run_after_commit
from .exceptions import OutboxError
from .notify import notify_after_commit
from .sql import MYSQL_DUPLICATE_KEY
from .sql import Row
from .sql import statements
from .sql import utcnow
from .table import current_table
from .table import PENDING

if t.TYPE_CHECKING:
    import collections.abc as c

    import sqlalchemy as sa
    import sqlalchemy.ext.asyncio as sa_asyncio

    from .handlers import Handler
    from .sql import Statements

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_ZERO = datetime.timedelta()

FAST_PATH_GRACE = datetime.timedelta(seconds=2)
"""How long workers leave a row to the process that committed it (its ``run_at``).

The committer runs its row within milliseconds of the COMMIT; a worker that claimed the row
first would only run it elsewhere, later. If the committer dies, a worker runs the row once
this grace has passed."""
_DEDUP_TRIES = 5

HandlerRef: t.TypeAlias = "Handler[..., t.Any] | str"
"""A registered handler, or the name it is registered under."""

Delay: t.TypeAlias = "float | datetime.timedelta | None"
"""Seconds (or a ``timedelta``) to wait before the row is due."""


@t.overload
def enqueue(
    session: sa_orm.Session | sa_orm.scoped_session[t.Any],
    handler: HandlerRef,
    /,
    *args: t.Any,
    dedup_key: str | None = None,
    delay: Delay = None,
    **kwargs: t.Any,
) -> int: ...


@t.overload
def enqueue(
    session: sa_asyncio.AsyncSession | sa_asyncio.async_scoped_session[t.Any],
    handler: HandlerRef,
    /,
    *args: t.Any,
    dedup_key: str | None = None,
    delay: Delay = None,
    **kwargs: t.Any,
) -> c.Awaitable[int]: ...


def enqueue(
    session: t.Any,
    handler: HandlerRef,
    /,
    *args: t.Any,
    dedup_key: str | None = None,
    delay: Delay = None,
    **kwargs: t.Any,
) -> int | c.Awaitable[int]:
    """Write a row that runs ``handler(*args, **kwargs)`` once the transaction commits.

    The row is written in ``session``'s transaction (beginning one if none is open), so it
    exists exactly when the transaction commits: a rollback of the transaction, or of the
    savepoint it was written in, takes it away. Return the row's id; with an ``AsyncSession``
    or ``async_scoped_session``, return an awaitable of it (``await enqueue(...)``).

    Right after the COMMIT the committing process runs the row itself in a distinct session,
    unless the handler says ``inline=False`` or a ``delay`` is given (even 0); whatever it does
    not finish, a worker runs. ``args`` and ``kwargs`` must be JSON-serialisable (checked here).
    While a row with the same ``dedup_key`` waits for its first run, the id of that row is
    returned and nothing is written.
    """
    found = handler if isinstance(handler, handlers.Handler) else handlers.get(handler)
    payload = _payload(found, args, kwargs)
    wait = _delay(delay)
    if isinstance(session, sa_orm.Session):
        return _write(session, found, payload, dedup_key, wait, False)
    if isinstance(session, sa_orm.scoped_session):
        return _write(session(), found, payload, dedup_key, wait, False)
    sync_session = _sync_session_of(session)
    return sa_concurrency.greenlet_spawn(
        _write, sync_session, found, payload, dedup_key, wait, True
    )


def _write(
    session: sa_orm.Session,
    handler: Handler[..., t.Any],
    payload: str,
    dedup_key: str | None,
    wait: datetime.timedelta | None,
    is_async: bool,
) -> int:
    table = current_table()
    connection = session.connection(bind_arguments={"clause": table})
    stm = statements(table, connection.dialect.name)
    now = utcnow()
    fast = wait is None and handler.inline and (is_async or not handler.is_coroutine)
    params = {
        "handler": handler.name,
        "payload": payload,
        "state": PENDING,
        "attempts": 0,
        "run_at": now + FAST_PATH_GRACE if fast else now + (wait or _ZERO),
        "created_at": now,
        "dedup_key": dedup_key,
    }
    if dedup_key is None:
        row_id = _insert(connection, stm, params)
    else:
        row_id, written = _insert_unless_waiting(connection, stm, params, dedup_key)
        if not written:
            return row_id
    if fast:
        run_after_commit(session, table, Row(row_id, handler.name, payload, 1), is_async=is_async)
    elif wait is None and connection.dialect.name == "postgresql":
        _notify_once(session)
    return row_id


def _insert(connection: sa.Connection, stm: Statements, params: dict[str, object]) -> int:
    result = connection.execute(stm.insert, params)
    return int(result.scalar_one() if stm.returning else result.lastrowid)


def _insert_unless_waiting(
    connection: sa.Connection, stm: Statements, params: dict[str, object], dedup_key: str
) -> tuple[int, bool]:
    """Insert unless a waiting row has ``dedup_key``: return the id, and whether it is new.

    The unique constraint on ``dedup_key`` decides between concurrent transactions: the later
    INSERT waits for the earlier transaction, then conflicts if it committed.
    """
    for _ in range(_DEDUP_TRIES):
        if stm.mysql:
            try:
                return _insert(connection, stm, params), True
            except sa_exc.IntegrityError as exc:
                # MariaDB rolls back only the failed statement; the transaction goes on.
                if _errno(exc) != MYSQL_DUPLICATE_KEY:
                    raise
        else:
            new_id = connection.execute(stm.insert_dedup, params).scalar()
            if new_id is not None:
                return int(new_id), True
        existing = connection.execute(stm.find_dedup, {"dedup_key": dedup_key}).scalar()
        if existing is not None:
            return int(existing), False
        # A runner took the waiting row between the two statements: the key is free again.
    msg = (
        f"enqueue() could not settle dedup_key {dedup_key!r}: the rows holding it were taken"
        f" by runners {_DEDUP_TRIES} times in a row; call enqueue() again."
    )
    raise OutboxError(msg)


def _errno(exc: sa_exc.DBAPIError) -> object:
    args = getattr(exc.orig, "args", ())
    return args[0] if args else None


_notified: weakref.WeakKeyDictionary[sa_orm.SessionTransaction, bool] = weakref.WeakKeyDictionary()


def _notify_once(session: sa_orm.Session) -> None:
    transaction = session.get_transaction()
    if transaction is None or transaction in _notified:
        return
    _notified[transaction] = True
    notify_after_commit(session)


def _payload(
    handler: Handler[..., t.Any], args: tuple[t.Any, ...], kwargs: dict[str, t.Any]
) -> str:
    try:
        return _encode([args, kwargs])
    except (TypeError, ValueError):
        pass
    named: list[tuple[str, object]] = [(f"argument {i}", v) for i, v in enumerate(args)]
    named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in named:
        try:
            _encode(value)
        except (TypeError, ValueError) as exc:
            msg = (
                f"enqueue() got {label} of {handler.name} that is not JSON-serialisable"
                f" ({exc}): pass ids and plain values, and load objects inside the handler."
            )
            raise TypeError(msg) from None
    msg = f"enqueue() got arguments for {handler.name} that JSON cannot encode together"
    raise TypeError(msg)  # pragma: no cover


def _delay(delay: Delay) -> datetime.timedelta | None:
    if delay is None:
        return None
    wait = delay if isinstance(delay, datetime.timedelta) else datetime.timedelta(seconds=delay)
    if wait < _ZERO:
        msg = f"enqueue() needs a delay of 0 or more, got {delay!r}"
        raise ValueError(msg)
    return wait


def _sync_session_of(target: object) -> sa_orm.Session:
    import sqlalchemy.ext.asyncio as sa_asyncio

    if isinstance(target, sa_asyncio.AsyncSession):
        return target.sync_session
    if isinstance(target, sa_asyncio.async_scoped_session):
        current: sa_asyncio.AsyncSession = target()
        return current.sync_session
    msg = (
        "enqueue() needs a Session or a scoped_session (or an AsyncSession or an"
        f" async_scoped_session), got {target!r}"
    )
    raise TypeError(msg)
