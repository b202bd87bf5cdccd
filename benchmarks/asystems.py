"""The async twins of the SQLAlchemy systems: the same hooks, awaited on ``AsyncSession``s.

Each twin lists :class:`AsyncSystem` before its sync system (``class Bare(AsyncSystem,
systems.Bare)``): it keeps that system's hooks (how it registers a callback, connects receivers,
collects diffs) and runs the workloads as an async application does, with an
``async_scoped_session`` per task and every I/O awaited. All of them share one event loop, an
``asyncio.Runner``: setup and teardown run in it, and the harness runs each batch in it as one
task (:func:`batch`).
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import functools
import typing as t

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm
import sqlalchemy.pool as sa_pool
import sqlalchemy.util.concurrency as sa_concurrency

from benchmarks import systems
from benchmarks.systems import emit_begin
from benchmarks.systems import hand_models_committed
from benchmarks.systems import ROWS

await_: c.Callable[[c.Awaitable[t.Any]], t.Any] = getattr(
    sa_concurrency, "await_", None
) or getattr(sa_concurrency, "await_only")  # noqa: B009 - the SQLAlchemy 2.0 name
"""SQLAlchemy's bridge from its greenlet to the awaiting task (named ``await_only`` in 2.0)."""


async def anoop() -> None:
    """An on_commit callback that is a coroutine function and does nothing."""


class AsyncSystem(systems.SqlAlchemySystem):
    """A system's transactions written for ``AsyncSession``; its hooks are its sync twin's.

    The sessions' sync class is the system's own subclass of ``Session``: listeners go there,
    as ``install()`` puts its own for sa_signals.
    """

    def __init__(
        self, engine: sa_asyncio.AsyncEngine, amplification: int, runner: asyncio.Runner
    ) -> None:
        self.runner = runner
        super().__init__(engine, amplification)

    def open(self) -> type[sa_orm.Session]:
        session_class = type(f"Session_{self.prefix}", (sa_orm.Session,), {})
        self.maker = sa_asyncio.async_sessionmaker(self.engine, sync_session_class=session_class)
        self.Session = sa_asyncio.async_scoped_session(self.maker, scopefunc=asyncio.current_task)
        self.runner.run(self._run_sync(self.Base.metadata.drop_all, self.Base.metadata.create_all))
        return session_class

    async def _run_sync(self, *functions: c.Callable[[sa.Connection], object]) -> None:
        async with self.engine.begin() as connection:
            for function in functions:
                await connection.run_sync(function)

    def reset(self, rows: int) -> list[int]:
        return self.runner.run(self._reset(rows))

    async def _reset(self, rows: int) -> list[int]:
        await self._run_sync(lambda connection: connection.execute(self.Item.__table__.delete()))
        async with self.maker.begin() as session:
            items = [self.Item(name=f"r{i}", value=0) for i in range(rows)]
            session.add_all(items)
            await session.flush()
            return [item.id for item in items]

    def close(self) -> None:
        self.runner.run(self._close())

    async def _close(self) -> None:
        await self.Session.remove()
        await self._run_sync(self.Base.metadata.drop_all)
        await self.engine.dispose()

    async def finish(self, session: t.Any, objects: list[t.Any]) -> None:
        """Work the system does by hand after ``await commit()``."""
        self.after_commit(session, objects)

    # The workloads; transaction() of the sync system returns these, bound to its arguments.

    def transaction(self, workload: str) -> c.Callable[[], t.Any]:
        """Return a function that returns the coroutine of one transaction of ``workload``."""
        if workload == "A-acb":
            return functools.partial(self._insert, self.amplification, anoop, False, False)
        return super().transaction(workload)

    def query_callback(self, commit: bool = False) -> c.Callable[[], t.Any]:
        """A coroutine callback that runs one query in a session of its own, and commits it if
        ``commit``."""
        maker, query = self.maker, self.query

        async def callback() -> None:
            async with maker() as session:
                await session.scalar(query)

        async def committing() -> None:
            async with maker() as session:
                await session.scalar(query)
                await session.commit()

        return committing if commit else callback

    async def _insert(
        self, callbacks: int, callback: c.Callable[[], t.Any], savepoints: bool, rollback: bool
    ) -> None:
        Item, Session = self.Item, self.Session
        session = Session()
        objects = [Item(name="row", value=i) for i in range(ROWS)]
        session.add_all(objects)
        for _ in range(callbacks):
            self.on_commit(callback, session)
        if savepoints:
            async with session.begin_nested():
                session.add(Item(name="released", value=0))
            savepoint = await session.begin_nested()
            session.add(Item(name="rolled back", value=0))
            await session.flush()
            await savepoint.rollback()
        if rollback:
            await session.flush()
            await session.rollback()
            self.after_rollback()
        else:
            await session.commit()
            await self.finish(session, objects)
        await Session.remove()

    async def _update_with_diffs(self) -> None:
        Item, Session = self.Item, self.Session
        session = Session()
        objects = (await session.scalars(sa.select(Item).where(Item.id.in_(self.ids)))).all()
        for item in objects:
            item.value += 1
        await session.commit()
        await self.finish(session, list(objects))
        await Session.remove()


class Bare(AsyncSystem, systems.Bare):
    """No listeners: after ``await commit()`` the callbacks are called, and awaited, by hand."""

    async def finish(self, session: t.Any, objects: list[t.Any]) -> None:
        pending, self.pending = self.pending, []
        for callback in pending:
            result = callback()
            if result is not None:
                await result
        self.after_commit(session, objects)  # the receivers, and W6's


class HandRolled(AsyncSystem, systems.HandRolled):
    """The sync hand-rolled listeners, whose ``after_commit`` awaits coroutine callbacks through
    SQLAlchemy's greenlet (what sa_signals does)."""

    def __init__(
        self, engine: sa_asyncio.AsyncEngine, amplification: int, runner: asyncio.Runner
    ) -> None:
        super().__init__(engine, amplification, runner)
        sa_event.remove(self.session_class, "after_commit", systems._hand_after_commit)
        sa_event.listen(self.session_class, "after_commit", _hand_after_commit)


def _hand_after_commit(session: sa_orm.Session) -> None:
    for callback in session.info.pop("on_commit", ()):
        result = callback()
        if result is not None:
            await_(result)
    changes = session.info.pop("changes", None)
    if changes:
        hand_models_committed.send(session, changes=changes)


class Layer(AsyncSystem, systems.Layer):
    """sa_signals installed on the ``async_scoped_session`` for each batch."""

    def query_callback(self, commit: bool = False) -> c.Callable[[], t.Any]:
        """A coroutine callback that runs one query in its distinct session (the scoped one),
        which the layer commits whether or not ``commit`` is asked."""
        Session, query = self.Session, self.query

        async def callback() -> None:
            await Session().scalar(query)

        return callback


SYSTEMS: tuple[type[AsyncSystem], ...] = (Bare, HandRolled, Layer)


def make_systems(
    db: str, url: str | None, amplification: int, runner: asyncio.Runner
) -> list[AsyncSystem]:
    """Build every async system on ``db`` (``aiosqlite-memory``, or ``asyncpg`` at the
    PostgreSQL ``url``), each on its own engine, in ``runner``'s event loop."""
    return [cls(make_engine(db, url), amplification, runner) for cls in SYSTEMS]


def make_engine(db: str, url: str | None = None) -> sa_asyncio.AsyncEngine:
    """A new engine on ``db``; ``url`` is a PostgreSQL URL of any driver."""
    if db == "asyncpg":
        given = sa.make_url(t.cast(str, url)).set(drivername="postgresql+asyncpg")
        return sa_asyncio.create_async_engine(given)
    engine = sa_asyncio.create_async_engine("sqlite+aiosqlite://", poolclass=sa_pool.StaticPool)
    # One connection (and its aiosqlite thread), on which SAVEPOINT works.
    emit_begin(engine.sync_engine)
    return engine


def batch(
    runner: asyncio.Runner, clock: c.Callable[[], float]
) -> c.Callable[[c.Callable[[], t.Any], t.Any], float]:
    """Return the harness's batch function for ``runner``: each batch runs as one task."""

    def run(transaction: c.Callable[[], t.Any], settings: t.Any) -> float:
        return runner.run(_batch(transaction, settings.batch, clock))

    return run


async def _batch(
    transaction: c.Callable[[], c.Awaitable[None]], count: int, clock: c.Callable[[], float]
) -> float:
    start = clock()
    for _ in range(count):
        await transaction()
    return (clock() - start) / count
