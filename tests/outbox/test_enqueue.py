"""enqueue(): the row is written in the session's transaction, and run right after its COMMIT."""

from __future__ import annotations

import threading
import typing as t

import pytest
import sqlalchemy as sa

from sa_signals import outbox
from tests.outbox import app


def handler_for(flavour: t.Any) -> outbox.Handler[..., t.Any]:
    """A coroutine handler in the async flavour, a plain one in the sync flavour."""
    return app.arecord if flavour.is_async else app.record


class TestEnqueue:
    def test_runs_once_after_commit_and_deletes_the_row(self, ob, any_session, flavour):
        """The committing process runs the row after COMMIT, in a distinct session, once."""
        with flavour.begin(any_session):
            row_id = flavour.aw(outbox.enqueue(any_session, handler_for(flavour), "a"))
            assert isinstance(row_id, int)
            assert ob.effects() == []
        assert ob.effects() == ["a"]
        assert ob.rows() == []

    def test_row_exists_in_the_transaction_before_commit(self, ob, any_session, flavour):
        """Before COMMIT the row is visible to the transaction that wrote it, pending."""
        with flavour.begin(any_session):
            row_id = flavour.aw(outbox.enqueue(any_session, app.record_later, "x"))
            state = flavour.aw(
                any_session.execute(sa.select(ob.table.c.state).where(ob.table.c.id == row_id))
            ).scalar_one()
            assert state == "pending"

    def test_rollback_takes_the_row_away(self, factory, ob, any_session, flavour):
        """A rolled-back transaction leaves no row and runs nothing."""
        flavour.aw(outbox.enqueue(any_session, handler_for(flavour), "gone"))
        flavour.aw(any_session.rollback())
        assert ob.rows() == []
        assert ob.effects() == []
        assert outbox.drain(factory) == 0

    def test_discards_rows_of_rolled_back_savepoint(self, ob, any_session, flavour):
        """Only rows of surviving savepoints are written and run."""
        handler = handler_for(flavour)
        with flavour.begin(any_session):
            flavour.aw(outbox.enqueue(any_session, handler, "outer"))
            with pytest.raises(RuntimeError), flavour.nested(any_session):
                flavour.aw(outbox.enqueue(any_session, handler, "inner"))
                raise RuntimeError
            with flavour.nested(any_session):
                flavour.aw(outbox.enqueue(any_session, handler, "kept"))
        assert ob.effects() == ["outer", "kept"]
        assert ob.rows() == []

    def test_rejects_arguments_json_cannot_encode(self, ob, any_session, flavour):
        """A non-JSON argument raises TypeError at the call, naming it; nothing is written."""
        with pytest.raises(TypeError, match=r"keyword argument 'when' of .*record.* not JSON"):
            outbox.enqueue(any_session, app.record, "t", when=object())
        with pytest.raises(TypeError, match=r"argument 0 of .* not JSON-serialisable"):
            outbox.enqueue(any_session, app.record, float("nan"))
        flavour.aw(any_session.commit())
        assert ob.rows() == []

    def test_accepts_a_handler_name(self, ob, any_session, flavour):
        """A registered name stands for its handler."""
        with flavour.begin(any_session):
            flavour.aw(outbox.enqueue(any_session, "tests.outbox.app.record_later", "n"))
        assert [row.handler for row in ob.rows()] == ["tests.outbox.app.record_later"]

    def test_unknown_handler_name_names_the_fix(self, ob, any_session):
        """An unregistered name raises UnknownHandlerError telling to import its module."""
        with pytest.raises(outbox.UnknownHandlerError, match="import the module"):
            outbox.enqueue(any_session, "nowhere.handler")

    def test_delay_leaves_the_row_to_a_worker(self, factory, ob, any_session, flavour):
        """A delayed row is not run after COMMIT; it is due once the delay has passed."""
        with flavour.begin(any_session):
            flavour.aw(outbox.enqueue(any_session, app.record, "later", delay=3600))
        assert ob.effects() == []
        assert outbox.drain(factory) == 0
        (row,) = ob.rows()
        assert (row.run_at - row.created_at).total_seconds() == pytest.approx(3600, abs=1)

    def test_negative_delay_is_refused(self, ob, any_session):
        """A negative delay raises ValueError."""
        with pytest.raises(ValueError, match="delay of 0 or more"):
            outbox.enqueue(any_session, app.record, "x", delay=-1)

    def test_not_inline_leaves_the_row_to_a_worker(self, factory, ob, any_session, flavour):
        """A handler registered with inline=False is run by drain(), not after COMMIT."""
        with flavour.begin(any_session):
            flavour.aw(outbox.enqueue(any_session, app.record_later, "w"))
        assert ob.effects() == []
        assert outbox.drain(factory) == 1
        assert ob.effects() == ["w"]
        assert ob.rows() == []


class TestDedup:
    def test_pending_key_returns_the_waiting_row(self, factory, ob, any_session, flavour):
        """While a row with the key waits, enqueue returns its id and writes nothing."""
        with flavour.begin(any_session):
            first = flavour.aw(outbox.enqueue(any_session, app.record_later, "1", dedup_key="k"))
            again = flavour.aw(outbox.enqueue(any_session, app.record_later, "2", dedup_key="k"))
        later = flavour.aw(outbox.enqueue(any_session, app.record_later, "3", dedup_key="k"))
        flavour.aw(any_session.commit())
        assert first == again == later
        assert len(ob.rows()) == 1
        assert outbox.drain(factory) == 1
        assert ob.effects() == ["1"]

    def test_key_is_free_once_the_row_ran(self, ob, Session):
        """After its row ran, the same key writes a new row."""
        with Session.begin():
            first = outbox.enqueue(Session, app.record, "1", dedup_key="k")
        with Session.begin():
            second = outbox.enqueue(Session, app.record, "2", dedup_key="k")
        assert first != second
        assert ob.effects() == ["1", "2"]

    @pytest.mark.backends("postgresql", "mariadb")
    def test_concurrent_transactions_write_one_row(self, factory, ob, engine):
        """Two transactions enqueueing one key at once write one row; both get its id."""
        maker = factory
        first = maker()
        outbox.enqueue(first, app.record_later, "a", dedup_key="race")
        ids: list[int] = []

        def second() -> None:
            with maker.begin() as session:
                ids.append(outbox.enqueue(session, app.record_later, "b", dedup_key="race"))

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waits on the first transaction's uncommitted key
        first_id = first.execute(sa.select(ob.table.c.id)).scalar_one()
        first.commit()
        first.close()
        thread.join(10)
        assert ids == [first_id]
        assert len(ob.rows()) == 1


class TestTargets:
    def test_async_scoped_session_gives_an_awaitable(self, ob, AsyncScoped, arunner):
        """With an async_scoped_session, enqueue() returns an awaitable of the row's id."""

        async def scenario() -> int:
            pending = outbox.enqueue(AsyncScoped, app.arecord, "scoped")
            row_id = await pending
            await AsyncScoped.commit()
            return row_id

        assert isinstance(arunner.run(scenario()), int)
        assert ob.effects() == ["scoped"]

    def test_something_else_is_refused(self, ob):
        """A target that is not a session raises TypeError naming what is accepted."""
        with pytest.raises(TypeError, match="needs a Session or a scoped_session"):
            outbox.enqueue(object(), app.record, "x")  # type: ignore[call-overload]
