"""AsyncWorker: asyncio tasks running rows, coroutine handlers included.

While a worker runs, the tests read the database from another thread (``asyncio.to_thread``):
a read blocking the event loop can wait on a SQLite lock that a worker task's transaction holds
and that only the blocked loop could release, until the read's busy timeout fails the test (as
"database is locked", or as "no such table" on a pooled connection whose cached schema predates
the outbox tables).
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextlib

import pytest

from sa_signals import outbox
from sa_signals.outbox.table import set_keep_done
from tests.outbox import app


@contextlib.asynccontextmanager
async def running(worker: outbox.AsyncWorker) -> c.AsyncIterator[None]:
    """Run ``worker`` in a task; stop it and wait for it on the way out, also when failing.

    A worker left running would go on in the fixtures' teardown, under sessions they close and
    an engine they dispose.
    """
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        worker.stop()
        await task


class TestAsyncWorker:
    def test_runs_coroutine_handlers_and_stops(self, ob, AsyncScoped, arunner):
        """The async worker runs coroutine handlers' rows, then returns on stop()."""

        async def scenario() -> int:
            worker = outbox.AsyncWorker(AsyncScoped, concurrency=2, poll=0.05)
            async with running(worker):
                async with AsyncScoped.session_factory.begin() as session:
                    await outbox.enqueue(session, app.arecord, "a", delay=0)
                    await outbox.enqueue(session, app.record_later, "b")
                while len(await asyncio.to_thread(ob.effects)) < 2:
                    await asyncio.sleep(0.02)
            return worker.ran

        assert arunner.run(scenario()) == 2
        assert sorted(ob.effects()) == ["a", "b"]
        assert ob.rows() == []

    @pytest.mark.backends("postgresql")  # MariaDB's next-key locks keep the two runs apart
    def test_counts_every_row_its_tasks_ran_at_once(self, ob, AsyncScoped, arunner):
        """Rows run by two tasks at the same time are each counted in ``ran``."""

        async def scenario() -> int:
            worker = outbox.AsyncWorker(AsyncScoped, concurrency=2, batch=1, poll=0.05)
            async with AsyncScoped.session_factory.begin() as session:
                await outbox.enqueue(session, app.ameet, "a")
                await outbox.enqueue(session, app.ameet, "b")
            async with running(worker):
                while len(await asyncio.to_thread(ob.effects)) < 2:
                    await asyncio.sleep(0.02)
            return worker.ran

        try:
            assert arunner.run(scenario()) == 2
        finally:
            app.met.clear()
        assert sorted(ob.effects()) == ["a", "b"]

    @pytest.mark.backends("postgresql")
    def test_notify_wakes_the_async_worker(self, ob, AsyncScoped, arunner, factory):
        """An async worker that would poll once an hour is woken by the NOTIFY (asyncpg)."""

        async def scenario() -> None:
            async with running(outbox.AsyncWorker(AsyncScoped, poll=3600)):
                await asyncio.sleep(0.5)  # listening, and idle
                with factory.begin() as session:
                    outbox.enqueue(session, app.record_later, "woken")
                for _ in range(1500):
                    if await asyncio.to_thread(ob.effects):
                        break
                    await asyncio.sleep(0.02)

        arunner.run(scenario())
        assert ob.effects() == ["woken"]

    def test_purges_old_done_rows(self, ob, AsyncScoped, arunner, factory):
        """With a retention period, the async worker deletes done rows once they are old."""
        set_keep_done(ob.table, 0)
        try:
            with factory.begin() as session:
                outbox.enqueue(session, app.record, "kept")
            assert ob.states() == ["done"]

            async def scenario() -> None:
                async with running(outbox.AsyncWorker(AsyncScoped, poll=0.05, purge_every=0)):
                    while await asyncio.to_thread(ob.rows):
                        await asyncio.sleep(0.02)

            arunner.run(scenario())
        finally:
            set_keep_done(ob.table, None)

    def test_cancelled_returns_once_its_sessions_are_closed(
        self, ob, AsyncScoped, aengine, arunner
    ):
        """A cancelled async worker returns only once each task has closed its sessions: the
        running handler's write is rolled back, no connection is left checked out."""

        async def scenario() -> int:
            async with AsyncScoped.session_factory.begin() as session:
                await outbox.enqueue(session, app.wait_forever, "never")
            worker = outbox.AsyncWorker(AsyncScoped, concurrency=2, poll=3600, listen=False)
            task = asyncio.create_task(worker.run())
            while not app.waiting.is_set():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return aengine.pool.checkedout()

        app.waiting.clear()
        assert arunner.run(scenario()) == 0
        assert ob.effects() == []
        assert ob.states() == ["pending"]

    def test_rejects_a_concurrency_below_one(self, ob, AsyncScoped):
        """An async worker needs at least one task."""
        with pytest.raises(ValueError, match="concurrency of 1 or more"):
            outbox.AsyncWorker(AsyncScoped, concurrency=0)
