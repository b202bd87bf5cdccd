"""NOTIFY after COMMIT, and the listeners that wake the workers (PostgreSQL)."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio

from sa_signals import outbox
from sa_signals.outbox.notify import AsyncListener
from sa_signals.outbox.notify import close_notifiers
from sa_signals.outbox.notify import Listener
from sa_signals.outbox.notify import Notifier
from tests.outbox import app
from tests.outbox.helpers import wait_for

pytestmark = pytest.mark.backends("postgresql")


def listen(engine: sa.Engine) -> tuple[Listener, threading.Event]:
    woken = threading.Event()
    listener = Listener(engine, "sa_signals_outbox", woken.set)
    listener.start()
    assert woken.wait(10)  # the first wake-up: LISTEN is in place
    woken.clear()
    return listener, woken


class TestNotify:
    def test_sent_after_commit_not_inside_the_transaction(self, ob, engine, factory):
        """The NOTIFY is sent after the COMMIT, never inside the business transaction."""
        listener, woken = listen(engine)
        events: list[tuple[str, str]] = []

        def statement(conn, cursor, text, *args):
            events.append(("pg_notify" if "pg_notify" in text else "statement", text))

        def commit(conn):
            events.append(("commit", ""))

        sa.event.listen(engine, "before_cursor_execute", statement)
        sa.event.listen(engine, "commit", commit)
        try:
            with factory.begin() as session:
                outbox.enqueue(session, app.record_later, "n")
                outbox.enqueue(session, app.record_later, "m")
            assert woken.wait(10)
        finally:
            sa.event.remove(engine, "before_cursor_execute", statement)
            sa.event.remove(engine, "commit", commit)
            listener.stop()
        kinds = [kind for kind, _ in events]
        # The engine ran the business transaction only: two INSERTs, then its COMMIT. The NOTIFY
        # came from the notifier's own connection, after it.
        assert kinds == ["statement", "statement", "commit"]

    def test_nothing_is_sent_for_a_rollback(self, ob, engine, factory):
        """A rolled-back transaction sends no NOTIFY."""
        listener, woken = listen(engine)
        try:
            with factory() as session:
                outbox.enqueue(session, app.record_later, "n")
                session.rollback()
            assert not woken.wait(0.3)
        finally:
            listener.stop()

    def test_async_engines_notify_after_commit_too(self, ob, engine, AsyncScoped, arunner):
        """A row left to workers by an AsyncSession's transaction sends a NOTIFY too."""
        listener, woken = listen(engine)

        async def scenario() -> None:
            async with AsyncScoped.session_factory.begin() as session:
                await outbox.enqueue(session, app.record_later, "async")

        try:
            arunner.run(scenario())
            assert woken.wait(10)
        finally:
            listener.stop()

    def test_rows_run_by_the_committer_send_none(self, ob, engine, factory):
        """A row the committing process runs itself wakes no worker."""
        listener, woken = listen(engine)
        try:
            with factory.begin() as session:
                outbox.enqueue(session, app.record, "fast")
            assert ob.effects() == ["fast"]
            assert not woken.wait(0.3)
        finally:
            listener.stop()


class TestNotifier:
    @pytest.mark.requires("psycopg")
    def test_a_failed_notify_is_logged_and_retried_on_the_next(self, caplog):
        """An unreachable server is logged; the notifier tries again at the next notify()."""
        unreachable = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
        notifier = Notifier(unreachable, "sa_signals_outbox")
        for attempt in (1, 2):
            notifier.notify()
            wait_for(
                lambda n=attempt: caplog.text.count("could not send a NOTIFY") == n, "the log"
            )

    def test_close_ends_the_connection_and_notify_starts_it_again(self, ob, engine, factory):
        """close() ends the notifier's connection; the next NOTIFY opens a new one."""

        def notifier_connections() -> int:
            with engine.connect() as connection:
                return connection.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND query LIKE 'NOTIFY%%'"
                ).scalar_one()

        listener, woken = listen(engine)
        try:
            with factory.begin() as session:
                outbox.enqueue(session, app.record_later, "one")
            assert woken.wait(10)
            assert notifier_connections() == 1
            close_notifiers()
            wait_for(lambda: notifier_connections() == 0, "the notifier's connection to end")
            woken.clear()
            with factory.begin() as session:
                outbox.enqueue(session, app.record_later, "two")
            assert woken.wait(10)
        finally:
            listener.stop()


class TestAsyncListener:
    @pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
    def test_wakes_once_listening_and_for_each_notify(self, engine, arunner, driver):
        """The asyncio listener wakes when its LISTEN is in place and again for a NOTIFY, on
        asyncpg and on psycopg's async connection alike, and closes its connection when
        stopped."""
        aengine = sa_asyncio.create_async_engine(engine.url.set(drivername=f"postgresql+{driver}"))
        channel = f"sa_signals_outbox_{driver}"

        def notify() -> None:
            with engine.connect() as connection:
                connection.exec_driver_sql(f"NOTIFY {channel}")
                connection.commit()

        async def scenario() -> int:
            woken = asyncio.Event()
            wakes = 0

            def wake() -> None:
                nonlocal wakes
                wakes += 1
                woken.set()

            listener = AsyncListener(aengine, channel, wake)
            await listener.start()
            try:
                await asyncio.wait_for(woken.wait(), 10)  # LISTEN is in place
                woken.clear()
                await asyncio.to_thread(notify)
                await asyncio.wait_for(woken.wait(), 10)
            finally:
                await listener.stop()
                await aengine.dispose()
            return wakes

        assert arunner.run(scenario()) == 2
        gc.collect()  # a connection left open would warn now, failing this test
