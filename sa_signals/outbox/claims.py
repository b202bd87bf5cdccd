"""Claiming rows: lease a batch of due rows, give back what did not run, look ahead.

Each function works in a sync ``Session``'s transaction; :class:`Claimer` binds them to a
session factory, and :class:`AsyncClaimer` to an async one, through ``AsyncSession.run_sync()``.
"""

from __future__ import annotations

import datetime
import logging
import threading
import typing as t

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm

from .dispatch import Outcome
from .dispatch import Run
from .dispatch import run_claimed
from .dispatch import run_claimed_async
from .sql import Row
from .sql import statements
from .sql import utcnow
from .table import current_table
from .table import DONE
from .table import KEEP_DONE

if t.TYPE_CHECKING:
    import collections.abc as c

    from ..typing import AsyncSessionFactory
    from ..typing import SessionFactory

logger = logging.getLogger("sa_signals.outbox")

DEFAULT_LEASE = 300.0
"""Seconds a claimed row stays with its worker before another may claim it."""

DEFAULT_BATCH = 20
"""Rows one claim takes."""

PURGE_BATCH = 1000
"""Done rows one purge statement deletes at most."""
_ASYNC_COMMIT = sa.text("SET LOCAL synchronous_commit TO OFF")
_MYSQL = ("mysql", "mariadb")


def maker_of(factory: t.Any) -> t.Any:
    """Return the sessionmaker behind ``factory``: a scoped registry's current session may be
    in the caller's transaction, so claims use fresh sessions."""
    if isinstance(factory, (sa_orm.scoped_session, sa_asyncio.async_scoped_session)):
        return factory.session_factory
    return factory


def _connection(session: sa_orm.Session, table: sa.Table) -> sa.Connection:
    return session.connection(bind_arguments={"clause": table})


def claim_in(
    session: sa_orm.Session,
    table: sa.Table,
    token: str,
    *,
    now: datetime.datetime | None = None,
    limit: int = DEFAULT_BATCH,
    lease: datetime.timedelta = datetime.timedelta(seconds=DEFAULT_LEASE),
) -> list[Row]:
    """Lease up to ``limit`` rows due at ``now`` (default: now) to ``token``.

    On MariaDB and MySQL the claim's transaction is READ COMMITTED: under InnoDB's default
    REPEATABLE READ its range scan takes gap locks that make concurrent claims deadlock. On
    PostgreSQL it commits asynchronously.
    """
    bind = session.get_bind(clause=table)
    options = {"isolation_level": "READ COMMITTED"} if bind.dialect.name in _MYSQL else None
    connection = session.connection(bind_arguments={"clause": table}, execution_options=options)
    if connection.dialect.name == "postgresql":
        # A lease lost with the server only lets the row be claimed again: its COMMIT need not
        # wait for the WAL flush.
        connection.execute(_ASYNC_COMMIT)
    return statements(table, connection.dialect.name).claim(
        connection, now=now or utcnow(), lease_end=utcnow() + lease, token=token, limit=limit
    )


def release_in(
    session: sa_orm.Session, table: sa.Table, rows: c.Sequence[Row], token: str
) -> None:
    """Give back claimed rows that did not run, due at once, their attempt uncounted."""
    connection = _connection(session, table)
    connection.execute(
        statements(table, connection.dialect.name).release,
        {"ids": [row.id for row in rows], "token": token, "now": utcnow()},
    )


def next_due_in(session: sa_orm.Session, table: sa.Table) -> datetime.datetime | None:
    """Return when the earliest pending row is due (a leased one: when its lease ends)."""
    connection = _connection(session, table)
    found: datetime.datetime | None = connection.scalar(
        statements(table, connection.dialect.name).next_due
    )
    return found


def purge_done_in(session: sa_orm.Session, table: sa.Table) -> int:
    """Delete up to 1,000 done rows older than the table's retention period; return how many."""
    keep: datetime.timedelta | None = table.info.get(KEEP_DONE)
    if keep is None:
        return 0
    c_ = table.c
    old = sa.select(c_.id).where(c_.state == DONE, c_.done_at < utcnow() - keep)
    connection = _connection(session, table)
    ids = list(connection.scalars(old.limit(PURGE_BATCH)))
    if ids:
        connection.execute(table.delete().where(c_.id.in_(ids)))
    return len(ids)


class Claimer:
    """Claims and runs batches of one table for one sync factory (workers and ``drain()``)."""

    def __init__(
        self,
        factory: SessionFactory,
        table: sa.Table | None = None,
        *,
        batch: int = DEFAULT_BATCH,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self.factory: sa_orm.sessionmaker[t.Any] = maker_of(factory)
        self.table = table if table is not None else current_table()
        self.batch = batch
        self.lease = datetime.timedelta(seconds=lease)

    def claim(self, token: str, now: datetime.datetime | None = None) -> list[Row]:
        """Lease up to one batch of rows due at ``now`` (default: now) to ``token``."""
        with self.factory() as session, session.begin():
            return claim_in(
                session, self.table, token, now=now, limit=self.batch, lease=self.lease
            )

    def run(self, rows: list[Row], token: str, stop: threading.Event | None = None) -> int:
        """Run ``rows`` one by one; on ``stop``, release the rest. Return how many ran."""
        ran = 0
        for index, row in enumerate(rows):
            if stop is not None and stop.is_set():
                self.release(rows[index:], token)
                break
            try:
                outcome = run_claimed(self.factory, Run(self.table, row, token, fast=False))
            except Exception:
                # Not even the failure could be recorded: the row runs again when its lease ends.
                logger.exception("outbox row %s (%s) could not be settled", row.id, row.handler)
                continue
            ran += outcome is not Outcome.SKIPPED
        return ran

    def release(self, rows: c.Sequence[Row], token: str) -> None:
        """Give back claimed rows that did not run (see :func:`release_in`)."""
        if rows:
            with self.factory() as session, session.begin():
                release_in(session, self.table, rows, token)

    def next_due(self) -> datetime.datetime | None:
        """Return when the earliest pending row is due (see :func:`next_due_in`)."""
        with self.factory() as session:
            return next_due_in(session, self.table)

    def purge_done(self) -> int:
        """Delete done rows older than the table's retention period; return how many."""
        total = 0
        while True:
            with self.factory() as session, session.begin():
                deleted = purge_done_in(session, self.table)
            total += deleted
            if deleted < PURGE_BATCH:
                return total


class AsyncClaimer:
    """:class:`Claimer` for an async factory: the same steps, awaited (async workers and
    ``drain()``)."""

    def __init__(
        self,
        factory: AsyncSessionFactory,
        table: sa.Table | None = None,
        *,
        batch: int = DEFAULT_BATCH,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self.factory: sa_asyncio.async_sessionmaker[t.Any] = maker_of(factory)
        self.table = table if table is not None else current_table()
        self.batch = batch
        self.lease = datetime.timedelta(seconds=lease)

    async def claim(self, token: str, now: datetime.datetime | None = None) -> list[Row]:
        """Lease up to one batch of rows due at ``now`` (default: now) to ``token``."""
        async with self.factory() as session, session.begin():
            rows: list[Row] = await session.run_sync(
                claim_in, self.table, token, now=now, limit=self.batch, lease=self.lease
            )
            return rows

    async def run(
        self, rows: list[Row], token: str, stop: c.Callable[[], bool] | None = None
    ) -> int:
        """Run ``rows`` one by one; once ``stop()`` is true, release the rest. Return how many
        ran."""
        ran = 0
        for index, row in enumerate(rows):
            if stop is not None and stop():
                await self.release(rows[index:], token)
                break
            try:
                outcome = await run_claimed_async(
                    self.factory, Run(self.table, row, token, fast=False)
                )
            except Exception:
                # Not even the failure could be recorded: the row runs again when its lease ends.
                logger.exception("outbox row %s (%s) could not be settled", row.id, row.handler)
                continue
            ran += outcome is not Outcome.SKIPPED
        return ran

    async def release(self, rows: c.Sequence[Row], token: str) -> None:
        """Give back claimed rows that did not run (see :func:`release_in`)."""
        if rows:
            async with self.factory() as session, session.begin():
                await session.run_sync(release_in, self.table, rows, token)

    async def next_due(self) -> datetime.datetime | None:
        """Return when the earliest pending row is due (see :func:`next_due_in`)."""
        async with self.factory() as session:
            due: datetime.datetime | None = await session.run_sync(next_due_in, self.table)
            return due

    async def purge_done(self) -> int:
        """Delete done rows older than the table's retention period; return how many."""
        total = 0
        while True:
            async with self.factory() as session, session.begin():
                deleted: int = await session.run_sync(purge_done_in, self.table)
            total += deleted
            if deleted < PURGE_BATCH:
                return total
