"""Soak: threads and tasks committing, failing and rolling back savepoints, on PostgreSQL.

Every callback records its effect in the ``audits`` table from its distinct session; at the end
the effects are compared with the rows that really committed. Meanwhile another thread (or task)
keeps connecting and disconnecting receivers. The same workers run as eight threads with
``Session``s and as fifty asyncio tasks with ``AsyncSession``s (asyncpg), where callbacks are
coroutine functions or plain ones. ``SA_SIGNALS_SOAK_SECONDS`` sets the duration (default 20 for
the threads, three quarters of it for the tasks).
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc as c
import contextlib
import gc
import inspect
import logging
import os
import random
import threading
import time
import tracemalloc
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm
import sqlalchemy.util.concurrency as sa_concurrency

import sa_signals
from sa_signals import signals
from tests.conftest import async_url
from tests.models import Audit
from tests.models import Item

pytestmark = [pytest.mark.slow, pytest.mark.backends("postgresql")]

SECONDS = float(os.environ.get("SA_SIGNALS_SOAK_SECONDS", "20"))
"""How long the soak runs, warm-up included."""

THREADS = 8

TASKS = 50

Scoped = sa_orm.scoped_session[sa_orm.Session]

AsyncScoped = sa_asyncio.async_scoped_session[sa_asyncio.AsyncSession]


class UserError(Exception):
    """Raised by a transaction's own code: the transaction rolls back."""


def await_(value: t.Any) -> t.Any:
    """Await ``value`` from inside SQLAlchemy's greenlet if it is awaitable (the async API)."""
    if inspect.isawaitable(value):
        return sa_concurrency.await_only(value)
    return value


class Worker:
    """One thread's (or task's) transactions and what it expects of them.

    With an ``AsyncScoped`` the worker runs inside SQLAlchemy's greenlet in its own task, and
    awaits what the async API returns; half of its callbacks are then coroutine functions.
    """

    def __init__(self, number: int, Session: Scoped | AsyncScoped, seed: int) -> None:
        self.number = number
        self.Session: t.Any = Session
        self.is_async = isinstance(Session, sa_asyncio.async_scoped_session)
        self.random = random.Random(seed)
        self.transactions = 0
        self.committed: set[str] = set()
        self.expected_effects: set[str] = set()
        self.expected_calls: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.failing: set[str] = set()
        self.error: BaseException | None = None

    def run(self, deadline: float) -> None:
        try:
            while time.monotonic() < deadline:
                self.transaction()
            await_(self.Session.remove())
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.error = exc

    def callback(self, key: str, fails: bool) -> t.Callable[[], t.Any]:
        Session = self.Session

        def callback() -> None:
            self.calls[key] += 1
            Session.add(Audit(message=key))
            if fails:
                await_(Session.flush())
                raise UserError(key)

        async def acallback() -> None:
            await asyncio.sleep(0)
            self.calls[key] += 1
            Session.add(Audit(message=key))
            if fails:
                await Session.flush()
                raise UserError(key)

        return acallback if self.is_async and self.random.random() < 0.5 else callback

    def transaction(self) -> None:
        rng = self.random
        token = f"{self.number}-{self.transactions}"
        self.transactions += 1
        session = self.Session()
        session.add(Item(name=token, value=self.number))
        # Callbacks that run if the transaction commits: (key, fails).
        kept: list[tuple[str, bool]] = []
        open_levels: list[tuple[sa_orm.SessionTransaction, list[tuple[str, bool]]]] = []
        for j in range(rng.randint(1, 6)):
            action = rng.random()
            if action < 0.3:
                open_levels.append((await_(session.begin_nested()), []))
            elif action < 0.45 and open_levels:
                savepoint, inside = open_levels.pop()
                if rng.random() < 0.5:
                    await_(savepoint.commit())
                    (open_levels[-1][1] if open_levels else kept).extend(inside)
                else:
                    await_(savepoint.rollback())
            key = f"{token}:{j}"
            fails = rng.random() < 0.1
            if fails:
                self.failing.add(key)
            sa_signals.on_commit(self.callback(key, fails), session)
            (open_levels[-1][1] if open_levels else kept).append((key, fails))
        for _, inside in open_levels:
            kept.extend(inside)  # commit() releases the savepoints still open
        if rng.random() < 0.1:
            await_(session.begin_nested())
            session.add(Item(name=token))
            with pytest.raises(sa_exc.IntegrityError):
                await_(session.flush())
            await_(session.rollback())  # rolls back the whole transaction
            return
        ending = rng.random()
        if ending < 0.1:
            await_(session.rollback())
        elif ending < 0.15:
            await_(session.close())
        elif ending < 0.25:
            session.add(Item(name=token))  # a duplicate: the commit's flush fails
            with pytest.raises(sa_exc.IntegrityError):
                await_(session.commit())
            await_(session.rollback())
        else:
            await_(session.commit())
            self.committed.add(token)
            for key, fails in kept:
                self.expected_calls[key] += 1
                if not fails:
                    self.expected_effects.add(key)


class CountingHandler(logging.Handler):
    """Counts the layer's error reports without keeping them (and their tracebacks) alive."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@contextlib.contextmanager
def counting_reports() -> c.Iterator[CountingHandler]:
    """Send the ``sa_signals`` logger to a counter alone: pytest's capture would keep records."""
    logger = logging.getLogger("sa_signals")
    handler = CountingHandler()
    saved = logger.handlers, logger.propagate
    logger.handlers, logger.propagate = [handler], False
    try:
        yield handler
    finally:
        logger.handlers, logger.propagate = saved


class Toggler:
    """Connects and disconnects receivers while the workers send, to race the receiver cache."""

    SIGNALS = (signals.before_commit, signals.post_save, signals.after_commit)

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.error: BaseException | None = None

    def receiver(self, sender: object, **kwargs: object) -> None:
        self.calls.append("call")

    def run(self, deadline: float) -> None:
        try:
            while time.monotonic() < deadline:
                for signal in self.SIGNALS:
                    signal.connect(self.receiver)
                time.sleep(0.002)
                for signal in self.SIGNALS:
                    signal.disconnect(self.receiver)
                time.sleep(0.001)
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.error = exc


class AsyncToggler(Toggler):
    """The same, as a task: its receiver is a coroutine function."""

    async def areceiver(self, sender: object, **kwargs: object) -> None:
        await asyncio.sleep(0)
        self.calls.append("call")

    async def arun(self, deadline: float) -> None:
        try:
            while time.monotonic() < deadline:
                for signal in self.SIGNALS:
                    signal.connect(self.areceiver)
                await asyncio.sleep(0.002)
                for signal in self.SIGNALS:
                    signal.disconnect(self.areceiver)
                await asyncio.sleep(0.001)
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.error = exc


def run_phase(workers: list[Worker], toggler: Toggler, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=worker.run, args=(deadline,)) for worker in workers]
    threads.append(threading.Thread(target=toggler.run, args=(deadline,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for runner in [*workers, toggler]:
        if runner.error is not None:
            raise runner.error


async def run_tasks(workers: list[Worker], toggler: AsyncToggler, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    tasks = [
        asyncio.create_task(sa_concurrency.greenlet_spawn(worker.run, deadline))
        for worker in workers
    ]
    tasks.append(asyncio.create_task(toggler.arun(deadline)))
    await asyncio.gather(*tasks)
    for runner in [*workers, toggler]:
        if runner.error is not None:
            raise runner.error


def server_connections(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        query = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND backend_type = 'client backend'"
        )
        return int(connection.exec_driver_sql(query).scalar() or 0)


def retained(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, pattern: str) -> int:
    """Bytes allocated between the snapshots and still alive, from files matching ``pattern``.

    A pattern starting with ``!`` counts every file but those.
    """
    keep = [tracemalloc.Filter(not pattern.startswith("!"), pattern.lstrip("!"))]
    stats = after.filter_traces(keep).compare_to(before.filter_traces(keep), "filename")
    return sum(stat.size_diff for stat in stats)


def test_threads_run_each_committed_callback_exactly_once(engine: sa.Engine) -> None:
    """Effects match committed rows exactly once; memory and connections stay flat."""
    private = sa.create_engine(engine.url, pool_size=THREADS, max_overflow=0, pool_timeout=30)
    Session = sa_orm.scoped_session(sa_orm.sessionmaker(private))
    sa_signals.install(Session)
    seed = random.randrange(2**32)
    workers = [Worker(n, Session, seed + n) for n in range(THREADS)]
    toggler = Toggler()
    try:
        with counting_reports() as reports:
            run_phase(workers, toggler, SECONDS / 3)  # warm-up: pools, caches, compiled statements
            gc.collect()
            connections = server_connections(engine)
            tracemalloc.start()
            try:
                before = tracemalloc.take_snapshot()
                run_phase(workers, toggler, SECONDS * 2 / 3)
                gc.collect()
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
        assert private.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert server_connections(engine) <= connections
        layer = retained(before, after, "*/sa_signals/*")
        assert layer < 4096, f"seed {seed}: sa_signals kept {layer} bytes"
        everything = retained(before, after, "!*/tests/*")
        assert everything < 512 * 1024, f"seed {seed}: {everything} bytes kept"
    finally:
        Session.remove()
        sa_signals.uninstall(Session)
        private.dispose()

    check_effects(engine, workers, reports.count, seed)
    assert toggler.calls


def check_effects(engine: sa.Engine, workers: list[Worker], reports: int, seed: int) -> None:
    """Each committed transaction's callbacks ran once and left their effect once; no others."""
    with engine.connect() as connection:
        rows = set(connection.scalars(sa.select(Item.name)))
        effects = collections.Counter(connection.scalars(sa.select(Audit.message)))
    committed = set().union(*(worker.committed for worker in workers))
    expected_effects = set().union(*(worker.expected_effects for worker in workers))
    calls = sum((worker.calls for worker in workers), collections.Counter[str]())
    expected_calls = sum((w.expected_calls for w in workers), collections.Counter[str]())
    assert sum(worker.transactions for worker in workers) > len(workers) * 10
    assert rows == committed, f"seed {seed}"
    assert set(effects) == expected_effects, f"seed {seed}"
    assert set(effects.values()) == {1}, f"seed {seed}"
    assert calls == expected_calls, f"seed {seed}"
    failed = sum(w.expected_calls[key] for w in workers for key in w.failing)
    assert reports == failed, f"seed {seed}"


def test_tasks_run_each_committed_callback_exactly_once(
    engine: sa.Engine, arunner: asyncio.Runner
) -> None:
    """Fifty tasks with AsyncSessions: the same exactly-once, flat memory and connections."""
    private = sa_asyncio.create_async_engine(
        async_url("postgresql", engine), pool_size=10, max_overflow=0, pool_timeout=30
    )
    Session = sa_asyncio.async_scoped_session(
        sa_asyncio.async_sessionmaker(private), scopefunc=asyncio.current_task
    )
    sa_signals.install(Session)
    seed = random.randrange(2**32)
    workers = [Worker(n, Session, seed + n) for n in range(TASKS)]
    toggler = AsyncToggler()
    seconds = SECONDS * 3 / 4
    try:
        with counting_reports() as reports:
            arunner.run(run_tasks(workers, toggler, seconds / 3))  # warm-up
            gc.collect()
            connections = server_connections(engine)
            tracemalloc.start()
            try:
                before = tracemalloc.take_snapshot()
                arunner.run(run_tasks(workers, toggler, seconds * 2 / 3))
                gc.collect()
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
        assert private.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert Session.registry.registry == {}  # every task's key is gone
        assert server_connections(engine) <= connections
        layer = retained(before, after, "*/sa_signals/*")
        assert layer < 4096, f"seed {seed}: sa_signals kept {layer} bytes"
        everything = retained(before, after, "!*/tests/*")
        assert everything < 512 * 1024, f"seed {seed}: {everything} bytes kept"
    finally:
        sa_signals.uninstall(Session)
        arunner.run(private.dispose())
    check_effects(engine, workers, reports.count, seed)
    assert toggler.calls
