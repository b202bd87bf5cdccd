"""Receivers and callbacks that misbehave: BaseExceptions, coroutines, disconnects, deep nesting.

``tests/test_on_commit.py`` covers BaseExceptions raised by on_commit callbacks and chains of
callbacks registering callbacks inside their transaction; this module covers the rest.
"""

from __future__ import annotations

import gc
import inspect
import logging
import typing as t
import warnings

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals
from sa_signals._dispatch import Signal
from sa_signals._state import STATE_ATTR
from tests.models import Audit
from tests.models import Item

if t.TYPE_CHECKING:
    import collections.abc as c

    from tests.conftest import Connector
    from tests.conftest import Recorder

Scoped = sa_orm.scoped_session[sa_orm.Session]

BASE_EXCEPTIONS = [KeyboardInterrupt, SystemExit, GeneratorExit]

IN_TRANSACTION = ["before_flush", "pre_save", "post_save", "after_flush", "before_commit"]
"""Signals sent inside the transaction, in the order a commit of a new row sends them."""


def count(engine: sa.Engine, model: type[t.Any]) -> int:
    with engine.connect() as connection:
        return connection.scalar(sa.select(sa.func.count()).select_from(model)) or 0


def assert_clean(Session: Scoped, session: sa_orm.Session, engine: sa.Engine) -> None:
    """Out of its transaction, holding no connection and no queued callback."""
    assert Session() is session
    assert not session.in_transaction()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    state = session.__dict__.get(STATE_ATTR)
    assert state is None or (not state.queue and not state.connections)


def connect_to(connect: Connector, name: str, receiver: c.Callable[..., t.Any]) -> None:
    sender = Item if name in ("pre_save", "post_save") else None
    connect(getattr(signals, name), receiver, sender)


async def _coroutine() -> None:  # pragma: no cover - closed, never run
    pass


class TestBaseExceptionsFromReceivers:
    @pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
    @pytest.mark.parametrize("name", IN_TRANSACTION)
    def test_in_transaction_receiver_propagates_and_rollback_recovers(
        self,
        Session: Scoped,
        engine: sa.Engine,
        recorder: Recorder,
        connect: Connector,
        name: str,
        exc_type: type[BaseException],
    ) -> None:
        """The commit stops, nothing runs; after rollback() the session commits again."""

        def receiver(sender: object, **kwargs: object) -> None:
            raise exc_type

        connect_to(connect, name, receiver)
        session = Session()
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do("a"), session)
        with pytest.raises(exc_type):
            session.commit()
        connect.disconnect_all()
        session.rollback()
        assert_clean(Session, session, engine)
        recorder.assert_done([])
        assert count(engine, Item) == 0
        session.add(Item(name="b"))
        sa_signals.on_commit(recorder.do("b"), session)
        session.commit()
        recorder.assert_done(["b"])

    @pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
    def test_after_commit_receiver_propagates_after_the_commit(
        self,
        Session: Scoped,
        engine: sa.Engine,
        recorder: Recorder,
        connect: Connector,
        exc_type: type[BaseException],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The data stays committed, the callbacks not yet run are logged, the session is clean."""

        def receiver(sender: object, **kwargs: object) -> None:
            Session.add(Audit(message="receiver"))
            raise exc_type

        connect(signals.after_commit, receiver)
        session = Session()
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do("a"), session)
        with caplog.at_level(logging.ERROR, logger="sa_signals"), pytest.raises(exc_type):
            session.commit()
        assert "1 commit-time call(s) did not run" in caplog.text
        recorder.assert_done([])
        assert_clean(Session, session, engine)
        assert count(engine, Item) == 1
        assert count(engine, Audit) == 0
        connect.disconnect_all()
        session.add(Item(name="b"))
        sa_signals.on_commit(recorder.do("b"), session)
        session.commit()
        recorder.assert_done(["b"])

    @pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
    def test_after_rollback_receiver_propagates_after_the_rollback(
        self,
        Session: Scoped,
        engine: sa.Engine,
        recorder: Recorder,
        connect: Connector,
        exc_type: type[BaseException],
    ) -> None:
        """The rollback is done and its callbacks dropped before the exception escapes."""

        def receiver(sender: object, **kwargs: object) -> None:
            raise exc_type

        connect(signals.after_rollback, receiver)
        session = Session()
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do("a"), session)
        with pytest.raises(exc_type):
            session.rollback()
        assert_clean(Session, session, engine)
        connect.disconnect_all()
        session.add(Item(name="b"))
        session.commit()
        recorder.assert_done([])
        assert count(engine, Item) == 1


class TestCoroutinesFromPlainFunctions:
    @pytest.mark.parametrize("name", [*IN_TRANSACTION, "after_commit", "after_rollback"])
    def test_receiver_returning_a_coroutine_is_reported_and_closed(
        self,
        session: sa_orm.Session,
        recorder: Recorder,
        connect: Connector,
        name: str,
    ) -> None:
        """The coroutine is closed unawaited, with no RuntimeWarning, and reported as failed."""
        returned: list[t.Any] = []

        def receiver(sender: object, **kwargs: object) -> t.Any:
            coroutine = _coroutine()
            returned.append(coroutine)
            return coroutine

        failures = connect.record(signals.receiver_failed)
        connect_to(connect, name, receiver)
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do("a"), session)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            session.commit()
            session.begin()
            session.rollback()
            gc.collect()
        assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []
        recorder.assert_done(["a"])
        [coroutine] = returned
        assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
        [(_, kwargs)] = failures
        assert kwargs["receiver"] is receiver
        assert isinstance(kwargs["exception"], sa_signals.CoroutineMisuseError)
        assert "returned a coroutine" in str(kwargs["exception"])

    def test_callback_returning_a_coroutine_is_reported_and_closed(
        self, session: sa_orm.Session, recorder: Recorder, connect: Connector
    ) -> None:
        """A plain callback returning a coroutine fails alone; the next callback runs."""
        returned: list[t.Any] = []

        def callback() -> t.Any:
            returned.append(_coroutine())
            return returned[-1]

        failures = connect.record(signals.on_commit_failed)
        session.add(Item(name="a"))
        sa_signals.on_commit(callback, session)
        sa_signals.on_commit(recorder.do("next"), session)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            session.commit()
            gc.collect()
        assert caught == []
        recorder.assert_done(["next"])
        assert inspect.getcoroutinestate(returned[0]) == inspect.CORO_CLOSED
        [(_, kwargs)] = failures
        assert kwargs["callback"] is callback
        with pytest.raises(sa_signals.CoroutineMisuseError, match="closed without running"):
            raise kwargs["exception"]

    def test_failure_receiver_returning_a_coroutine_is_logged_and_closed(
        self,
        session: sa_orm.Session,
        connect: Connector,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Even a receiver of on_commit_failed cannot leave a coroutine unawaited."""
        returned: list[t.Any] = []

        def receiver(sender: object, **kwargs: object) -> t.Any:
            returned.append(_coroutine())
            return returned[-1]

        connect(signals.on_commit_failed, receiver)
        session.add(Item(name="a"))
        sa_signals.on_commit(lambda: 1 / 0, session)
        with caplog.at_level(logging.ERROR, logger="sa_signals"):
            session.commit()
            gc.collect()
        assert inspect.getcoroutinestate(returned[0]) == inspect.CORO_CLOSED
        assert "returned a coroutine" in caplog.text


class TestConnectDisconnectDuringSend:
    """A send calls the receivers connected when it began; changes count from the next send."""

    def test_receiver_disconnecting_itself_runs_once(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """Disconnected during the first post_save, it misses the second row's."""
        seen: list[str] = []

        def once(sender: object, instance: Item, **kwargs: object) -> None:
            seen.append(instance.name)
            signals.post_save.disconnect(once)

        connect(signals.post_save, once, Item)
        session.add_all([Item(name="a"), Item(name="b")])
        session.commit()
        assert len(seen) == 1

    @pytest.mark.parametrize("name", ["before_commit", "after_commit"])
    def test_receiver_disconnecting_a_later_one(
        self, session: sa_orm.Session, connect: Connector, name: str
    ) -> None:
        """The later receiver still gets the send under way, and no send after it."""
        signal: Signal = getattr(signals, name)
        seen: list[str] = []

        def first(sender: object, **kwargs: object) -> None:
            seen.append("first")
            signal.disconnect(second)

        def second(sender: object, **kwargs: object) -> None:
            seen.append("second")

        connect(signal, first)
        connect(signal, second)
        session.add(Item(name="a"))
        session.commit()
        session.add(Item(name="b"))
        session.commit()
        assert seen == ["first", "second", "first"]

    def test_receiver_connecting_another(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A receiver connected during a send gets the next send, not this one."""
        seen: list[str] = []

        def late(sender: object, **kwargs: object) -> None:
            seen.append("late")

        def first(sender: object, **kwargs: object) -> None:
            seen.append("first")
            connect(signals.before_commit, late)

        connect(signals.before_commit, first)
        session.add(Item(name="a"))
        session.commit()
        assert seen == ["first"]
        signals.before_commit.disconnect(first)
        session.add(Item(name="b"))
        session.commit()
        assert seen == ["first", "late"]

    def test_weak_receiver_dropped_during_a_send_gets_that_send_only(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A send uses the receivers alive when it began; a weak one dropped meanwhile goes."""
        seen: list[str] = []

        class Late:
            def __call__(self, sender: object, **kwargs: object) -> None:
                seen.append("late")

        holder = [Late()]

        def first(sender: object, **kwargs: object) -> None:
            seen.append("first")
            holder.clear()
            gc.collect()

        connect(signals.before_commit, first)
        signals.before_commit.connect(holder[0])  # weak
        session.add(Item(name="a"))
        session.commit()
        assert seen == ["first", "late"]
        assert len(list(signals.before_commit.receivers_in_order(session))) == 1


class TestDeepNesting:
    def test_hundreds_of_nested_savepoints(
        self, session: sa_orm.Session, recorder: Recorder
    ) -> None:
        """300 nested savepoints, one callback each: a rollback halfway drops the inner half."""
        savepoints = []
        for n in range(300):
            savepoints.append(session.begin_nested())
            sa_signals.on_commit(recorder.do(n), session)
        for savepoint in reversed(savepoints[150:]):
            savepoint.commit()
        savepoints[100].rollback()
        session.commit()
        recorder.assert_done(list(range(100)))

    def test_thousands_of_immediate_registrations_from_callbacks(
        self, Session: Scoped, recorder: Recorder
    ) -> None:
        """Callbacks registering callbacks with no transaction open run without recursing."""

        def chain(n: int) -> c.Callable[[], None]:
            def callback() -> None:
                recorder.done.append(n)
                if n < 3000:
                    sa_signals.on_commit(chain(n + 1), Session)

            return callback

        sa_signals.on_commit(chain(0), Session)
        recorder.assert_done(list(range(3001)))
        assert not Session.registry().in_transaction()

    def test_after_commit_receiver_registering_hundreds(
        self, Session: Scoped, engine: sa.Engine, recorder: Recorder, connect: Connector
    ) -> None:
        """Callbacks registered by an after_commit receiver in its session run after it."""

        def receiver(sender: object, **kwargs: object) -> None:
            Session.add(Audit(message="receiver"))
            for n in range(300):
                sa_signals.on_commit(recorder.do(n), Session)

        connect(signals.after_commit, receiver)
        session = Session()
        session.add(Item(name="a"))
        session.commit()
        recorder.assert_done(list(range(300)))
        assert count(engine, Audit) == 1
        assert_clean(Session, session, engine)
