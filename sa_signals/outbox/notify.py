"""Waking workers on PostgreSQL: NOTIFY after the COMMIT, LISTEN in the worker.

The NOTIFY is sent after the COMMIT, never inside the business transaction: PostgreSQL
serialises the commits of every transaction that sent a NOTIFY on one cluster-wide lock, so a
NOTIFY inside it would serialise the producers' commits. For a synchronous engine the on_commit
callback only sets an event: a thread of the process sends the NOTIFY on a connection of its own,
so the producer's ``commit()`` does not wait for it, and the notifications of commits that come
while one is being sent are sent as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import typing as t

import sqlalchemy as sa

import sa_signals

from .table import current_table

if t.TYPE_CHECKING:
    import collections.abc as c

    import sqlalchemy.ext.asyncio as sa_asyncio
    import sqlalchemy.orm as sa_orm

logger = logging.getLogger("sa_signals.outbox")

# NOTIFY gives its transaction an id, so its COMMIT would wait for a WAL flush; the wake-up is a
# hint (workers also poll), so it commits asynchronously.
_NOTIFY = sa.text("SELECT set_config('synchronous_commit', 'off', true), pg_notify(:channel, '')")


def channel_of(table: sa.Table) -> str:
    """Return the NOTIFY channel of ``table``: its name."""
    return table.name


def notify_after_commit(session: sa_orm.Session) -> None:
    """Send a NOTIFY on the outbox's channel once ``session``'s transaction has committed."""
    table = current_table()
    bind = session.get_bind(clause=table)
    engine = bind if isinstance(bind, sa.Engine) else bind.engine
    channel = channel_of(table)
    if engine.dialect.is_async:
        sa_signals.on_commit(_Notify(engine, channel), session)
    else:
        sa_signals.on_commit(_notifier(engine, channel).notify, session)


class _Notify:
    """The on_commit callback of an async engine: one NOTIFY on a connection of its own."""

    __slots__ = ("channel", "engine")

    def __init__(self, engine: sa.Engine, channel: str) -> None:
        self.engine = engine
        self.channel = channel

    def __call__(self) -> None:
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(_NOTIFY, {"channel": self.channel})

    def __repr__(self) -> str:
        return f"<outbox NOTIFY {self.channel}>"


class Notifier:
    """Sends the NOTIFYs of one engine and channel from a thread, on a connection of its own.

    :meth:`notify` only sets an event; the thread (started on first use, and again in a forked
    child) sends one NOTIFY for all the events set since its last one. The connection is made
    by the dialect, outside the engine's pool, and made again after an error (logged).
    """

    def __init__(self, engine: sa.Engine, channel: str) -> None:
        self.engine = engine
        self.channel = channel
        self._event = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pid = -1

    def notify(self) -> None:
        """Have a NOTIFY sent soon."""
        if self._pid != os.getpid():
            self._start()
        self._event.set()

    def close(self) -> None:
        """Close the connection and stop the thread (a later :meth:`notify` starts them again)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None or self._pid != os.getpid():
                return
            self._closing = True
            self._event.set()
            self._pid = -1
        thread.join(timeout=10)

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._event = threading.Event()
            self._closing = False
            self._thread = threading.Thread(target=self._run, name="outbox-notifier", daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def _run(self) -> None:
        connection: t.Any = None
        quoted = self.engine.dialect.identifier_preparer.quote(self.channel)
        event = self._event
        while True:
            event.wait()
            event.clear()
            if self._closing:
                if connection is not None:
                    connection.close()
                return
            try:
                if connection is None:
                    connection = self._connect()
                cursor = connection.cursor()
                cursor.execute(f"NOTIFY {quoted}")
                cursor.close()
            except Exception:
                logger.exception("the outbox could not send a NOTIFY; workers will poll")
                with contextlib.suppress(Exception):
                    connection.close()
                connection = None

    def _connect(self) -> t.Any:
        dialect = self.engine.dialect
        args, kwargs = dialect.create_connect_args(self.engine.url)
        connection = dialect.connect(*args, **kwargs)
        connection.autocommit = True
        cursor = connection.cursor()
        # The NOTIFY is a hint (workers also poll): no need to wait for its WAL flush.
        cursor.execute("SET synchronous_commit TO off")
        cursor.close()
        return connection


_notifiers: dict[tuple[int, str], Notifier] = {}
_notifiers_lock = threading.Lock()


def _notifier(engine: sa.Engine, channel: str) -> Notifier:
    key = (id(engine), channel)
    found = _notifiers.get(key)
    if found is None or found.engine is not engine:
        with _notifiers_lock:
            found = _notifiers[key] = Notifier(engine, channel)
            if not sa.event.contains(engine, "engine_disposed", _close_for):
                sa.event.listen(engine, "engine_disposed", _close_for)
    return found


def _close_for(engine: sa.Engine) -> None:
    """Close the notifiers of ``engine`` with its pool (``engine.dispose()``)."""
    for notifier in [n for n in _notifiers.values() if n.engine is engine]:
        notifier.close()


def close_notifiers() -> None:
    """Close every notifier's connection and thread; they start again when next needed."""
    for notifier in list(_notifiers.values()):
        notifier.close()


class Listener:
    """A thread that LISTENs on a channel and calls ``wake`` for each notification.

    Uses its own connection of ``engine`` (psycopg 3 or psycopg2). A lost connection is logged
    and opened again after ``retry`` seconds; meanwhile the workers poll.
    """

    def __init__(
        self, engine: sa.Engine, channel: str, wake: c.Callable[[], None], *, retry: float = 1.0
    ) -> None:
        self.engine = engine
        self.channel = channel
        self.wake = wake
        self.retry = retry
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-listener", daemon=True)

    def start(self) -> None:
        """Start listening in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and wait for the thread (at most one ``retry`` interval)."""
        self._stop.set()
        self._thread.join(timeout=self.retry + 5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception:
                logger.exception("the outbox listener lost its connection; polling meanwhile")
                self._stop.wait(self.retry)

    def _listen(self) -> None:
        raw = self.engine.raw_connection()
        try:
            driver: t.Any = raw.driver_connection
            if not hasattr(driver, "notifies"):
                logger.warning(
                    "the outbox listener needs psycopg 3 (driver %s): workers only poll",
                    type(driver).__module__,
                )
                self._stop.wait()
                return
            driver.autocommit = True
            quoted = self.engine.dialect.identifier_preparer.quote(self.channel)
            driver.execute(f"LISTEN {quoted}")
            self.wake()  # anything committed before LISTEN took effect is claimed now
            while not self._stop.is_set():
                for _ in driver.notifies(timeout=self.retry, stop_after=1):
                    self.wake()
        finally:
            raw.invalidate()
            raw.close()


class AsyncListener:
    """LISTENs on a channel from the event loop and calls ``wake`` for each notification.

    Uses its own connection of the async ``engine``: asyncpg (``add_listener``) or psycopg's
    async connection (``notifies()``). A lost connection is logged and opened again after
    ``retry`` seconds; meanwhile the workers poll.
    """

    def __init__(
        self,
        engine: sa_asyncio.AsyncEngine,
        channel: str,
        wake: c.Callable[[], None],
        *,
        retry: float = 1.0,
    ) -> None:
        self.engine = engine
        self.channel = channel
        self.wake = wake
        self.retry = retry
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start listening in a task of the running loop."""
        self._task = asyncio.create_task(self._run(), name="outbox-listener")

    async def stop(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the outbox listener lost its connection; polling meanwhile")
                await asyncio.sleep(self.retry)

    async def _listen(self) -> None:
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver: t.Any = raw.driver_connection
            quoted = self.engine.dialect.identifier_preparer.quote(self.channel)
            try:
                if hasattr(driver, "add_listener"):  # asyncpg
                    await driver.add_listener(self.channel, lambda *_: self.wake())
                    self.wake()
                    await asyncio.Event().wait()  # until cancelled
                elif hasattr(driver, "notifies"):  # psycopg 3
                    await driver.set_autocommit(True)
                    await driver.execute(f"LISTEN {quoted}")
                    self.wake()
                    async for _ in driver.notifies():
                        self.wake()
                else:
                    logger.warning(
                        "the outbox listener needs asyncpg or psycopg (driver %s): workers only"
                        " poll",
                        type(driver).__module__,
                    )
                    await asyncio.Event().wait()
            finally:
                # Never back to the pool (the LISTEN, the autocommit): closed in SQLAlchemy's
                # greenlet, where psycopg's async close() can be awaited.
                await connection.invalidate()
