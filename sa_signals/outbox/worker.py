"""The worker: claims due rows in leased batches and runs them; ``drain()`` for tests and scripts.

Rows the committing process ran are gone before a worker sees them; a worker runs the rest: rows
of a process that died or lost its connection around the COMMIT, failed rows whose retry is due,
delayed rows, rows of ``inline=False`` handlers, rows whose lease ran out.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
import typing as t

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio

from .claims import AsyncClaimer
from .claims import Claimer
from .claims import DEFAULT_BATCH
from .claims import DEFAULT_LEASE
from .dispatch import new_token
from .notify import channel_of
from .notify import Listener
from .sql import utcnow

if t.TYPE_CHECKING:
    import collections.abc as c

    from ..typing import AsyncSessionFactory
    from ..typing import SessionFactory

logger = logging.getLogger("sa_signals.outbox")

DEFAULT_POLL = 5.0
"""Seconds between polls when nothing woke the worker."""

MIN_WAIT = 0.05
"""Seconds a worker waits at least when a due row was locked by its runner."""

_DRAIN_BATCH = 100


def wait_seconds(due: datetime.datetime | None, poll: float) -> float:
    """Return how long an idle worker waits: until ``due``, at most ``poll`` seconds."""
    if due is None:
        return poll
    # A due row that the claim skipped is locked by its runner: look again shortly.
    return min(poll, max((due - utcnow()).total_seconds(), MIN_WAIT))


def check_concurrency(concurrency: int) -> int:
    """Return ``concurrency`` if a worker can run with it."""
    if concurrency < 1:
        msg = f"a worker needs a concurrency of 1 or more, got {concurrency}"
        raise ValueError(msg)
    return concurrency


@t.overload
def drain(factory: SessionFactory, *, table: sa.Table | None = None) -> int: ...


@t.overload
def drain(factory: AsyncSessionFactory, *, table: sa.Table | None = None) -> c.Awaitable[int]: ...


def drain(
    factory: SessionFactory | AsyncSessionFactory, *, table: sa.Table | None = None
) -> int | c.Awaitable[int]:
    """Run every row due now, in this thread; return how many ran (awaitable for async ones).

    For tests and scripts: rows that fail are rescheduled as usual and not run again here.
    """
    if isinstance(factory, (sa_asyncio.async_sessionmaker, sa_asyncio.async_scoped_session)):
        return _drain_async(factory, table)
    claimer = Claimer(factory, table, batch=_DRAIN_BATCH)
    now = utcnow()
    total = 0
    while True:
        token = new_token()
        rows = claimer.claim(token, now)
        if not rows:
            return total
        total += claimer.run(rows, token)


async def _drain_async(factory: AsyncSessionFactory, table: sa.Table | None) -> int:
    claimer = AsyncClaimer(factory, table, batch=_DRAIN_BATCH)
    now = utcnow()
    total = 0
    while True:
        token = new_token()
        rows = await claimer.claim(token, now)
        if not rows:
            return total
        total += await claimer.run(rows, token)


class Worker:
    """Runs due rows with ``concurrency`` threads until :meth:`stop`.

    Each thread claims a batch, runs it, and claims again; with nothing due it waits until the
    next row is due, a NOTIFY arrives (PostgreSQL), or ``poll`` seconds passed. :meth:`stop`
    lets each thread finish its current row and release the rest of its batch.
    """

    def __init__(
        self,
        factory: SessionFactory,
        *,
        table: sa.Table | None = None,
        concurrency: int = 1,
        batch: int = DEFAULT_BATCH,
        lease: float = DEFAULT_LEASE,
        poll: float = DEFAULT_POLL,
        listen: bool = True,
        purge_every: float = 60.0,
    ) -> None:
        self.claimer = Claimer(factory, table, batch=batch, lease=lease)
        self.concurrency = check_concurrency(concurrency)
        self.poll = poll
        self.listen = listen
        self.purge_every = purge_every
        self.ran = 0
        """Rows run so far (a handler that raised counts)."""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()

    def wake(self) -> None:
        """Make waiting threads claim at once (a NOTIFY arrived)."""
        self._wake.set()

    def stop(self) -> None:
        """Ask the threads to finish their current row and return; safe from a signal handler."""
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Run until :meth:`stop` is called; return once every thread has finished."""
        listener = self._listener()
        threads = [
            threading.Thread(target=self._loop, args=(i,), name=f"outbox-worker-{i}")
            for i in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)  # short joins keep the main thread's signal handlers live
        finally:
            self.stop()
            if listener is not None:
                listener.stop()
        logger.info("outbox worker stopped after %s rows", self.ran)

    def _listener(self) -> Listener | None:
        if not self.listen:
            return None
        bind = self.claimer.factory.kw.get("bind")
        if not isinstance(bind, sa.Engine) or bind.dialect.name != "postgresql":
            return None
        listener = Listener(bind, channel_of(self.claimer.table), self.wake)
        listener.start()
        return listener

    def _loop(self, index: int) -> None:
        claimer = self.claimer
        next_purge = time.monotonic() + self.purge_every
        while not self._stop.is_set():
            try:
                token = new_token()
                rows = claimer.claim(token)
                if rows:
                    ran = claimer.run(rows, token, self._stop)
                    with self._lock:
                        self.ran += ran
                    continue
                if index == 0 and time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + self.purge_every
                    claimer.purge_done()
                self._wait(claimer.next_due())
            except Exception:
                logger.exception("the outbox worker failed to claim; trying again")
                self._stop.wait(min(self.poll, 1.0))

    def _wait(self, due: datetime.datetime | None) -> None:
        self._wake.wait(wait_seconds(due, self.poll))
        self._wake.clear()
