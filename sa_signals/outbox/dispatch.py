"""Running one row: finish it, call its handler, commit both (or retry the row, or bury it).

Everything happens in one transaction of the session the handler writes through
(``sa_signals.current_session()``): the row is deleted (or marked done) first, which locks it,
then the handler runs, and one COMMIT settles both. A handler whose effects are database writes
takes effect exactly once, and a second runner of the same row (its lease expired) waits on the
lock, then finds the row gone. A handler that raises has its writes and the row's deletion
rolled back; the failure is then recorded on the row.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import logging
import typing as t
import uuid

import sqlalchemy.exc as sa_exc
import sqlalchemy.util.concurrency as sa_concurrency

import sa_signals
from sa_signals import signals

from . import handlers
from .retry import Backoff
from .sql import statements
from .sql import utcnow
from .table import DEAD
from .table import KEEP_DONE
from .table import PENDING

if t.TYPE_CHECKING:
    import sqlalchemy as sa
    import sqlalchemy.ext.asyncio as sa_asyncio
    import sqlalchemy.orm as sa_orm

    from .sql import Row

logger = logging.getLogger("sa_signals.outbox")

_ERROR_LIMIT = 4000


class Outcome(enum.Enum):
    """What running a row came to."""

    DONE = "done"
    RETRY = "retry"
    DEAD = "dead"
    SKIPPED = "skipped"
    """Another runner has the row, or it is gone: nothing ran."""


def new_token() -> str:
    """Return a new lease token (the ``locked_by`` of the rows one claim leases)."""
    return str(uuid.uuid4())


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything running one row needs, whoever runs it."""

    table: sa.Table
    row: Row
    token: str
    fast: bool
    """The committing process runs a row it just wrote: take it by id, claimed by no one."""

    def in_session(self, session: sa_orm.Session) -> Outcome:
        """Run the row in ``session``'s transaction (which the caller commits)."""
        table = self.table
        connection = session.connection(bind_arguments={"clause": table})
        stm = statements(table, connection.dialect.name)
        row = self.row
        params = {"row_id": row.id, "token": self.token, "now": utcnow()}
        finish: sa.Executable
        if table.info.get(KEEP_DONE) is None:
            finish = stm.finish_fresh if self.fast else stm.finish_held
        else:
            finish = stm.keep_fresh if self.fast else stm.keep_held
        if connection.execute(finish, params).rowcount != 1:
            return Outcome.SKIPPED
        try:
            handler = handlers.get(row.handler)
            if row.attempts > handler.max_attempts:
                msg = (
                    f"the runner of this row stopped {row.attempts - 1} times before it"
                    " finished (killed, or out of memory?)"
                )
                raise _Abandoned(msg)
            args, kwargs = json.loads(row.payload)
            result = handler.func(*args, **kwargs)
            if handler.is_coroutine:
                _await(result, handler)
        except Exception as exc:
            session.rollback()
            return self.failed(session, exc)
        return Outcome.DONE

    def failed(self, session: sa_orm.Session, exc: Exception) -> Outcome:
        """Record that running the row raised ``exc``: retry it later, or bury it."""
        row = self.row
        handler: handlers.Handler[..., t.Any] | None
        try:
            handler = handlers.get(row.handler)
        except LookupError:
            handler = None
        max_attempts = handler.max_attempts if handler else handlers.DEFAULT_MAX_ATTEMPTS
        attempts = row.attempts
        dead = attempts >= max_attempts or isinstance(exc, _Abandoned)
        delay = 0.0 if dead else (handler.delay(attempts) if handler else _default_delay(attempts))
        connection = session.connection(bind_arguments={"clause": self.table})
        stm = statements(self.table, connection.dialect.name)
        result = connection.execute(
            stm.fail_unleased if self.fast else stm.fail_leased,
            {
                "row_id": row.id,
                "guard": self.token,
                "new_state": DEAD if dead else PENDING,
                "run_at": utcnow() + datetime.timedelta(seconds=delay),
                "attempts": attempts,
                "error": f"{type(exc).__name__}: {exc}"[:_ERROR_LIMIT],
            },
        )
        if result.rowcount != 1:
            logger.warning(
                "outbox row %s (%s) failed, and another runner has it now", row.id, row.handler
            )
            return Outcome.SKIPPED
        _report(row, exc, dead)
        if dead:
            logger.error(
                "outbox row %s (%s) is dead after %s attempts",
                row.id,
                row.handler,
                attempts,
                exc_info=exc,
            )
            return Outcome.DEAD
        logger.warning(
            "outbox row %s (%s) failed (attempt %s of %s), retrying in %.1f s",
            row.id,
            row.handler,
            attempts,
            max_attempts,
            delay,
            exc_info=exc,
        )
        return Outcome.RETRY

    def __repr__(self) -> str:
        return f"<outbox row {self.row.id} ({self.row.handler})>"


class _Abandoned(Exception):
    """The row's earlier runners all stopped before recording an outcome."""


def _report(row: Row, exc: Exception, dead: bool) -> None:
    """Send :data:`~sa_signals.signals.outbox_failed`; a receiver that raises is logged."""
    try:
        signals.outbox_failed.send(
            row.handler, row_id=row.id, exception=exc, attempts=row.attempts, dead=dead
        )
    except Exception:
        logger.exception("a receiver of outbox_failed raised for row %s", row.id)


def _default_delay(attempts: int) -> float:
    return Backoff().delay(attempts)


def _await(result: t.Any, handler: handlers.Handler[..., t.Any]) -> None:
    try:
        sa_concurrency.await_only(result)
    except sa_exc.MissingGreenlet:
        result.close()
        msg = (
            f"the handler {handler.name} is a coroutine function, which a synchronous session"
            " cannot await: run its rows with an async session factory (or make it a plain"
            " function)."
        )
        raise TypeError(msg) from None


def run_after_commit(
    session: sa_orm.Session, table: sa.Table, row: Row, *, is_async: bool
) -> None:
    """Run ``row`` right after ``session``'s transaction commits, as an on_commit callback."""
    run = Run(table, row, new_token(), fast=True)
    sa_signals.on_commit(AsyncCallback(run) if is_async else Callback(run), session)


class Callback:
    """The on_commit callback of a :class:`Run`: runs it in its distinct session."""

    __slots__ = ("outcome", "run")

    def __init__(self, run: Run) -> None:
        self.run = run
        self.outcome = Outcome.SKIPPED

    def __call__(self) -> None:
        self.outcome = self.run.in_session(sa_signals.current_session())

    def __repr__(self) -> str:
        return repr(self.run)


class AsyncCallback(Callback):
    """The async on_commit callback of a :class:`Run` (an ``async __call__`` is awaited)."""

    __slots__ = ()

    async def __call__(self) -> None:  # type: ignore[override]
        session = sa_signals.current_async_session().sync_session
        self.outcome = await sa_concurrency.greenlet_spawn(self.run.in_session, session)


def run_claimed(factory: sa_orm.sessionmaker[t.Any], run: Run) -> Outcome:
    """Run a claimed row in a distinct session of ``factory``'s installation.

    If the run's own statements or its COMMIT fail (a lock timeout, a lost connection), its
    writes are rolled back with the row's deletion, and the failure is recorded as a handler's.
    """
    callback = Callback(run)
    try:
        with factory() as session:
            sa_signals.on_commit(callback, session, robust=False)
    except Exception as exc:
        with factory() as session, session.begin():
            return run.failed(session, exc)
    return callback.outcome


async def run_claimed_async(factory: sa_asyncio.async_sessionmaker[t.Any], run: Run) -> Outcome:
    """Run a claimed row in a distinct ``AsyncSession`` of ``factory``'s installation, as
    :func:`run_claimed` does."""
    callback = AsyncCallback(run)
    try:
        async with factory() as session:
            await sa_signals.on_commit_async(callback, session, robust=False)
    except Exception as exc:
        async with factory() as session, session.begin():
            outcome: Outcome = await session.run_sync(run.failed, exc)
            return outcome
    return callback.outcome
