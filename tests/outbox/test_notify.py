"""NOTIFY after COMMIT, and the listeners that wake the workers (PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from sa_signals import outbox
from sa_signals.outbox.notify import Listener
from tests.outbox import app

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
        """One NOTIFY per transaction, sent after its COMMIT, never inside it."""
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
        # The business transaction: two INSERTs, then its COMMIT; then the NOTIFY, autocommitted.
        assert kinds == ["statement", "statement", "commit", "pg_notify"]

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
