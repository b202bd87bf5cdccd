"""The worker for async session factories: asyncio tasks instead of threads.

Coroutine handlers need an async installation (they reach their session with
``sa_signals.current_async_session()``); ``python -m sa_signals.outbox worker`` runs this worker
when ``--url`` names an async driver (``postgresql+asyncpg``, ``sqlite+aiosqlite``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
import typing as t

import sqlalchemy as sa

from .claims import AsyncClaimer
from .claims import DEFAULT_BATCH
from .claims import DEFAULT_LEASE
from .dispatch import new_token
from .notify import AsyncListener
from .notify import channel_of
from .worker import check_concurrency
from .worker import DEFAULT_POLL
from .worker import wait_seconds

if t.TYPE_CHECKING:
    from ..typing import AsyncSessionFactory

logger = logging.getLogger("sa_signals.outbox")


class AsyncWorker:
    """Runs due rows with ``concurrency`` asyncio tasks until :meth:`stop`.

    The async twin of :class:`~sa_signals.outbox.Worker`, with the same claims, wake-ups
    (LISTEN through asyncpg or psycopg on PostgreSQL) and graceful stop.
    """

    def __init__(
        self,
        factory: AsyncSessionFactory,
        *,
        table: sa.Table | None = None,
        concurrency: int = 1,
        batch: int = DEFAULT_BATCH,
        lease: float = DEFAULT_LEASE,
        poll: float = DEFAULT_POLL,
        listen: bool = True,
        purge_every: float = 60.0,
    ) -> None:
        self.claimer = AsyncClaimer(factory, table, batch=batch, lease=lease)
        self.concurrency = check_concurrency(concurrency)
        self.poll = poll
        self.listen = listen
        self.purge_every = purge_every
        self.ran = 0
        """Rows run so far (a handler that raised counts)."""
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Make waiting tasks claim at once (a NOTIFY arrived)."""
        self._wake.set()

    def stop(self) -> None:
        """Ask the tasks to finish their current row and return (call it in the worker's loop)."""
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Run until :meth:`stop` is called; return once every task has finished.

        Cancelled, it cancels its tasks and still returns only once each has closed its
        sessions, so that no connection is left to the garbage collector.
        """
        listener = None
        bind = self.claimer.factory.kw.get("bind")
        if self.listen and bind is not None and bind.dialect.name == "postgresql":
            listener = AsyncListener(bind, channel_of(self.claimer.table), self.wake)
            await listener.start()
        tasks = [asyncio.create_task(self._loop(i)) for i in range(self.concurrency)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            self.stop()  # a task that outlives its cancellation ends at its next row
            await _finish(tasks)
            if listener is not None:
                await listener.stop()
        for task in tasks:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
        logger.info("outbox worker stopped after %s rows", self.ran)

    async def _loop(self, index: int) -> None:
        claimer = self.claimer
        next_purge = time.monotonic() + self.purge_every
        while not self._stop.is_set():
            try:
                token = new_token()
                rows = await claimer.claim(token)
                if rows:
                    ran = await claimer.run(rows, token, self._stop.is_set)
                    self.ran += ran  # not `+= await`: that reads self.ran before the await
                    continue
                if index == 0 and time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + self.purge_every
                    await claimer.purge_done()
                await self._wait(await claimer.next_due())
            except Exception:
                logger.exception("the outbox worker failed to claim; trying again")
                await asyncio.sleep(min(self.poll, 1.0))

    async def _wait(self, due: datetime.datetime | None) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait_seconds(due, self.poll))
        self._wake.clear()


async def _finish(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks still running, once each, and wait until every one has finished.

    ``gather()`` gives up as soon as one task is cancelled or fails, while the others may still
    be rolling back and closing their sessions: returning then leaves their connections checked
    out, to the garbage collector or a closing event loop. A task cancelled already (by the end
    of ``asyncio.run()``, say) is not cancelled again: that would interrupt its rollback, and
    SQLAlchemy would invalidate the connection instead of returning it to the pool. A second
    cancellation of the caller waits until they are done, as ``AsyncSession.__aexit__`` does.
    """
    for task in tasks:
        cancelling = getattr(task, "cancelling", None)  # Python 3.11+
        if cancelling is None or not cancelling():
            task.cancel()
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError as exc:
            cancelled = exc
        else:
            break
    if cancelled is not None:
        raise cancelled
