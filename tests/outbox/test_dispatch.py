"""Running a row: its handler's writes and the row's removal commit together, or neither does."""

from __future__ import annotations

import datetime
import logging
import threading
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import outbox
from sa_signals import signals
from sa_signals.outbox.claims import Claimer
from sa_signals.outbox.dispatch import new_token
from sa_signals.outbox.dispatch import Outcome
from sa_signals.outbox.dispatch import Run
from sa_signals.outbox.dispatch import run_claimed
from sa_signals.outbox.table import set_keep_done
from tests.outbox import app
from tests.outbox.helpers import PATIENCE
from tests.outbox.helpers import wait_for


def write_row(ob, handler: str, payload: str = '[["t"],{}]') -> int:
    """Insert a due row directly, as a committed producer would have."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    with ob.engine.begin() as connection:
        return connection.execute(
            ob.table.insert().returning(ob.table.c.id),
            {"handler": handler, "payload": payload, "run_at": now, "created_at": now},
        ).scalar_one()


class TestFailure:
    def test_failed_fast_path_rolls_back_and_retries(self, ob, factory, caplog):
        """A handler that raises after COMMIT leaves no effect; the row is retried, then runs."""
        app.failures["f"] = 1
        with factory.begin() as session:
            outbox.enqueue(session, app.flaky, "f")
        assert ob.effects() == []
        (row,) = ob.rows()
        assert (row.state, row.attempts, row.locked_by) == ("pending", 1, None)
        assert row.last_error == "RuntimeError: flaky f failed"
        assert "failed (attempt 1 of 3)" in caplog.text
        assert outbox.drain(factory) == 1
        assert ob.effects() == ["f"]
        assert ob.rows() == []

    def test_failed_async_fast_path_rolls_back_and_retries(self, ob, AnySession, flavour):
        """The same in either flavour: the failed run's writes are rolled back."""
        app.failures["g"] = 1
        session = AnySession()
        with flavour.begin(session):
            flavour.aw(outbox.enqueue(session, app.flaky, "g"))
        assert ob.effects() == []
        assert [(r.state, r.attempts) for r in ob.rows()] == [("pending", 1)]

    def test_row_is_dead_after_max_attempts(self, ob, factory, caplog):
        """After max_attempts failed runs the row is dead, kept with its last error."""
        with factory.begin() as session:
            outbox.enqueue(session, app.always_fails, "d")
        with caplog.at_level(logging.ERROR, "sa_signals.outbox"):
            assert outbox.drain(factory) == 1
        (row,) = ob.rows()
        assert (row.state, row.attempts) == ("dead", 2)
        assert row.last_error == "ValueError: always_fails d"
        assert "is dead after 2 attempts" in caplog.text
        assert ob.effects() == []
        assert outbox.drain(factory) == 0

    def test_failures_are_sent_on_outbox_failed(self, ob, factory, connect):
        """Each failure is sent with the row, the exception and whether the row is dead."""
        calls = connect.record(signals.outbox_failed)
        with factory.begin() as session:
            row_id = outbox.enqueue(session, app.always_fails, "s")
        outbox.drain(factory)
        assert [(sender, kw["row_id"], kw["attempts"], kw["dead"]) for sender, kw in calls] == [
            (app.always_fails.name, row_id, 1, False),
            (app.always_fails.name, row_id, 2, True),
        ]
        assert isinstance(calls[0][1]["exception"], ValueError)

    def test_a_failing_receiver_is_logged(self, ob, factory, connect, caplog):
        """A receiver of outbox_failed that raises is logged; the row's failure stays recorded."""

        def broken(sender, **kwargs):
            raise LookupError("receiver broke")

        connect(signals.outbox_failed, broken)
        with factory.begin() as session:
            outbox.enqueue(session, app.always_fails, "r")
        assert "a receiver of outbox_failed raised" in caplog.text
        assert [r.attempts for r in ob.rows()] == [1]

    def test_unknown_handler_fails_the_row_and_names_the_fix(self, ob, factory):
        """A row naming no registered handler is retried later, with the fix in its error."""
        write_row(ob, "somewhere.else.handler")
        assert outbox.drain(factory) == 1
        (row,) = ob.rows()
        assert (row.state, row.attempts) == ("pending", 1)
        assert "--import MODULE" in row.last_error

    @pytest.mark.backends("sqlite")
    def test_coroutine_handler_in_a_sync_session_fails_clearly(self, ob, factory):
        """A coroutine handler run by a sync factory fails with an error naming the fix."""
        write_row(ob, app.arecord.name)
        assert outbox.drain(factory) == 1
        (row,) = ob.rows()
        assert "run its rows with an async session factory" in row.last_error

    def test_row_whose_runners_kept_dying_is_dead(self, ob, factory):
        """A row claimed more than max_attempts times without an outcome is dead, not run."""
        write_row(ob, app.flaky.name)
        claimer = Claimer(factory, lease=0)
        for _ in range(app.flaky.max_attempts):
            assert len(claimer.claim(new_token())) == 1  # claimed, then "killed"
        assert outbox.drain(factory) == 1
        (row,) = ob.rows()
        assert row.state == "dead"
        assert "stopped 3 times before it finished" in row.last_error
        assert ob.effects() == []


class TestExactlyOnce:
    def test_expired_lease_runs_once(self, ob, factory):
        """A row claimed twice (the first lease expired) runs once: the later runner skips it."""
        write_row(ob, app.record.name)
        claimer = Claimer(factory, lease=0)
        first, second = new_token(), new_token()
        (row_a,) = claimer.claim(first)
        (row_b,) = claimer.claim(second)
        assert run_claimed(factory, Run(ob.table, row_b, second, fast=False)) is Outcome.DONE
        assert run_claimed(factory, Run(ob.table, row_a, first, fast=False)) is Outcome.SKIPPED
        assert ob.effects() == ["t"]

    def test_fast_path_skips_a_row_a_worker_holds(self, ob, factory):
        """A row leased to a worker is not run by the committing process."""
        row_id = write_row(ob, app.record.name)
        (claimed,) = Claimer(factory).claim(new_token())
        assert claimed.id == row_id
        run = Run(ob.table, claimed._replace(attempts=1), new_token(), fast=True)
        assert run_claimed(factory, run) is Outcome.SKIPPED
        assert ob.effects() == []


class TestKeepDone:
    def test_done_rows_are_kept_then_purged(self, ob, factory):
        """With keep_done a run row is marked done; purge_done deletes it once it is old."""
        set_keep_done(ob.table, 0.0)
        try:
            with factory.begin() as session:
                outbox.enqueue(session, app.record, "k")
            assert [(r.state, r.locked_by) for r in ob.rows()] == [("done", None)]
            assert ob.rows()[0].done_at is not None
            set_keep_done(ob.table, 3600)
            assert Claimer(factory).purge_done() == 0
            set_keep_done(ob.table, 0.0)
            assert Claimer(factory).purge_done() == 1
            assert ob.rows() == []
        finally:
            set_keep_done(ob.table, None)

    def test_keep_done_takes_seconds_or_timedelta(self, ob):
        """The retention is stored as a timedelta either way."""
        table = outbox.table(sa.MetaData(), "other_outbox", keep_done=60)
        assert table.info["sa_signals_outbox_keep_done"] == datetime.timedelta(minutes=1)


class TestRunFailure:
    @pytest.mark.backends("postgresql")
    def test_a_failed_commit_is_recorded_as_a_failure(self, ob, factory, engine):
        """A run whose COMMIT fails (a deferred constraint) is rolled back and retried."""
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "CREATE TABLE outbox_links (id serial PRIMARY KEY, effect_id integer"
                " REFERENCES outbox_effects (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        try:
            write_row(ob, app.dangling.name)
            token = new_token()
            (row,) = Claimer(factory).claim(token)
            outcome = run_claimed(factory, Run(ob.table, row, token, fast=False))
        finally:
            with engine.begin() as connection:
                connection.exec_driver_sql("DROP TABLE outbox_links")
        assert outcome is Outcome.RETRY
        (after,) = ob.rows()
        assert (after.state, after.attempts, after.locked_by) == ("pending", 1, None)
        assert "ForeignKeyViolation" in after.last_error
        assert ob.effects() == []


LOCK_TIMEOUT = {
    "postgresql": {"options": "-c lock_timeout=300"},
    "mariadb": {"init_command": "SET SESSION innodb_lock_wait_timeout = 1"},
}
"""The worker's connections give up waiting for a row lock after 0.3 s (PostgreSQL), 1 s."""

LOCK_WAITS = {
    "postgresql": "SELECT count(*) FROM pg_locks WHERE NOT granted",
    "mariadb": "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'",
}
"""How many transactions wait for a lock on the server."""


@pytest.mark.backends("postgresql", "mariadb")
class TestUnsettled:
    def test_a_run_whose_failure_cannot_be_recorded_runs_again_after_its_lease(
        self, ob, engine, backend, caplog
    ):
        """A run fails while another transaction waits for its row, which that transaction
        then holds past the worker's lock timeout: the failure cannot be recorded, and is
        logged. The row stays leased, runs again once the lease ends, and its effect is
        committed once: the failed run's was rolled back."""
        worker_engine = sa.create_engine(engine.url, connect_args=LOCK_TIMEOUT[backend])
        maker = sa_orm.sessionmaker(worker_engine)
        sa_signals.install(maker)
        release = threading.Event()
        holders: list[threading.Thread] = []

        def hold_the_row() -> None:
            with engine.begin() as connection:
                connection.execute(sa.select(ob.table.c.id).with_for_update())
                release.wait(PATIENCE)

        def block() -> None:
            holder = threading.Thread(target=hold_the_row)
            holder.start()
            holders.append(holder)

            def waits() -> bool:
                with engine.connect() as connection:
                    return bool(connection.scalar(sa.text(LOCK_WAITS[backend])))

            wait_for(waits, "another transaction to wait for the row")

        app.block.append(block)
        try:
            write_row(ob, app.blocked.name, '[["u"],{}]')
            claimer = Claimer(maker, lease=0.5)
            token = new_token()
            rows = claimer.claim(token)
            assert len(rows) == 1
            assert claimer.run(rows, token) == 0
            release.set()
            holders[0].join(PATIENCE)
            assert "could not be settled" in caplog.text
            (row,) = ob.rows()
            assert (row.state, row.attempts, row.locked_by) == ("pending", 1, token)
            assert ob.effects() == []
            again: list[t.Any] = []
            token = new_token()
            wait_for(lambda: bool(again.extend(claimer.claim(token)) or again), "the lease")
            assert claimer.run(again, token) == 1
            assert app.blocked_runs == ["u", "u"]
            assert ob.effects() == ["u"]
            assert ob.rows() == []
        finally:
            release.set()
            app.block.clear()
            app.blocked_runs.clear()
            sa_signals.uninstall(maker)
            worker_engine.dispose()
