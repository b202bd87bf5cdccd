"""Receivers and callbacks that misbehave: BaseExceptions, coroutines, disconnects, deep nesting.

``tests/test_on_commit.py`` covers BaseExceptions raised by on_commit callbacks and chains of
callbacks registering callbacks inside their transaction; this module covers the rest.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import functools
import gc
import inspect
import logging
import typing as t
import warnings

import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals
from sa_signals._core.state import STATE_ATTR
from sa_signals._dispatch import Signal
from tests.conftest import count
from tests.conftest import Recorder
from tests.models import Audit
from tests.models import Item

if t.TYPE_CHECKING:
    from tests.conftest import Connector

Scoped = sa_orm.scoped_session[sa_orm.Session]

BASE_EXCEPTIONS = [KeyboardInterrupt, SystemExit, GeneratorExit]

IN_TRANSACTION = ["before_flush", "pre_save", "post_save", "after_flush", "before_commit"]
"""Signals sent inside the transaction, in the order a commit of a new row sends them."""


def assert_clean(Session: Scoped, session: sa_orm.Session, engine: sa.Engine) -> None:
    """Out of its transaction, holding no connection and no queued callback."""
    assert Session() is session
    assert not session.in_transaction()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    state = session.__dict__.get(STATE_ATTR)
    assert state is None or (not state.queue and not state.connections)


def connect_to(
    connect: Connector, name: str, receiver: c.Callable[..., t.Any], **options: t.Any
) -> None:
    sender = Item if name in ("pre_save", "post_save") else None
    connect(getattr(signals, name), receiver, sender, **options)


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
        """The coroutine is closed unawaited, with no RuntimeWarning, and reported as failed
        (the receiver is connected robustly: an in-transaction one would veto the commit)."""
        returned: list[t.Any] = []

        def receiver(sender: object, **kwargs: object) -> t.Any:
            coroutine = _coroutine()
            returned.append(coroutine)
            return coroutine

        failures = connect.record(signals.receiver_failed)
        connect_to(connect, name, receiver, robust=True)
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


ASYNC_BASE_EXCEPTIONS = [*BASE_EXCEPTIONS, asyncio.CancelledError]

AsyncScopedT = sa_asyncio.async_scoped_session[sa_asyncio.AsyncSession]


async def acount(engine: sa_asyncio.AsyncEngine, model: type[t.Any]) -> int:
    async with engine.connect() as connection:
        return (await connection.scalar(sa.select(sa.func.count()).select_from(model))) or 0


def assert_async_clean(
    AsyncScoped: AsyncScopedT, session: sa_asyncio.AsyncSession, engine: sa_asyncio.AsyncEngine
) -> None:
    """Out of its transaction, holding no connection and no queued callback; registry intact."""
    assert list(AsyncScoped.registry.registry.values()) == [session]
    assert not session.in_transaction()
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    state = session.sync_session.__dict__.get(STATE_ATTR)
    assert state is None or (not state.queue and not state.connections)


def araise(exc_type: type[BaseException]) -> c.Callable[..., c.Awaitable[None]]:
    async def receiver(sender: object = None, **kwargs: object) -> None:
        await asyncio.sleep(0)
        raise exc_type

    return receiver


async def assert_async_usable(AsyncScoped: AsyncScopedT, recorder: Recorder, name: str) -> None:
    session = AsyncScoped()
    session.add(Item(name=name))
    sa_signals.on_commit(recorder.do(name), session)
    await session.commit()
    assert recorder.done[-1:] == [name]


class TestAsyncBaseExceptions:
    """Coroutine receivers and callbacks raising BaseExceptions, CancelledError included."""

    @pytest.fixture
    def recorder(self) -> Recorder:
        return Recorder(coroutines=True)

    @pytest.mark.parametrize("exc_type", ASYNC_BASE_EXCEPTIONS)
    @pytest.mark.parametrize("name", IN_TRANSACTION)
    async def test_in_transaction_receiver_propagates_and_rollback_recovers(
        self,
        arunner: asyncio.Runner,
        AsyncScoped: AsyncScopedT,
        aengine: sa_asyncio.AsyncEngine,
        recorder: Recorder,
        connect: Connector,
        name: str,
        exc_type: type[BaseException],
    ) -> None:
        """Out of ``await commit()``; nothing runs; after rollback() the session commits again."""
        connect_to(connect, name, araise(exc_type))
        session = AsyncScoped()
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do("a"), session)
        with pytest.raises(exc_type):
            await session.commit()
        connect.disconnect_all()
        await session.rollback()
        assert_async_clean(AsyncScoped, session, aengine)
        recorder.assert_done([])
        assert await acount(aengine, Item) == 0
        await assert_async_usable(AsyncScoped, recorder, "b")
        recorder.assert_done(["b"])

    @pytest.mark.parametrize("exc_type", ASYNC_BASE_EXCEPTIONS)
    @pytest.mark.parametrize("where", ["after_commit", "callback", "plain callback"])
    async def test_commit_time_raise_propagates_after_the_commit(
        self,
        arunner: asyncio.Runner,
        AsyncScoped: AsyncScopedT,
        aengine: sa_asyncio.AsyncEngine,
        recorder: Recorder,
        connect: Connector,
        caplog: pytest.LogCaptureFixture,
        where: str,
        exc_type: type[BaseException],
    ) -> None:
        """Data committed, the raiser's writes rolled back, the rest logged; the session clean."""

        async def raiser(sender: object = None, **kwargs: object) -> None:
            AsyncScoped().add(Audit(message="raiser"))
            await AsyncScoped().flush()
            raise exc_type

        def plain() -> None:
            AsyncScoped().add(Audit(message="raiser"))
            sa_signals.current_session().flush()
            raise exc_type

        session = AsyncScoped()
        session.add(Item(name="a"))
        await session.flush()
        if where == "after_commit":
            connect(signals.after_commit, raiser)
        else:
            sa_signals.on_commit(recorder.do("before"), session)
            sa_signals.on_commit(raiser if where == "callback" else plain, session)
        sa_signals.on_commit(recorder.do("a"), session)
        with caplog.at_level(logging.ERROR, logger="sa_signals"), pytest.raises(exc_type):
            await session.commit()
        connect.disconnect_all()
        assert "1 commit-time call(s) did not run" in caplog.text
        recorder.assert_done([] if where == "after_commit" else ["before"])
        assert_async_clean(AsyncScoped, session, aengine)
        assert await acount(aengine, Item) == 1
        assert await acount(aengine, Audit) == 0
        await assert_async_usable(AsyncScoped, recorder, "b")

    @pytest.mark.parametrize("exc_type", ASYNC_BASE_EXCEPTIONS)
    async def test_after_rollback_receiver_propagates_after_the_rollback(
        self,
        arunner: asyncio.Runner,
        AsyncScoped: AsyncScopedT,
        aengine: sa_asyncio.AsyncEngine,
        recorder: Recorder,
        connect: Connector,
        exc_type: type[BaseException],
    ) -> None:
        """The rollback is done and its callbacks dropped before the exception escapes."""
        connect(signals.after_rollback, araise(exc_type))
        session = AsyncScoped()
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do("a"), session)
        with pytest.raises(exc_type):
            await session.rollback()
        assert_async_clean(AsyncScoped, session, aengine)
        connect.disconnect_all()
        await assert_async_usable(AsyncScoped, recorder, "b")
        recorder.assert_done(["b"])
        assert await acount(aengine, Item) == 1


class TestAsyncConnectDisconnectDuringSend:
    """A send awaiting its receivers still uses the ones connected when it began."""

    @pytest.mark.parametrize("name", ["before_commit", "after_commit"])
    async def test_other_task_changes_receivers_mid_send(
        self,
        arunner: asyncio.Runner,
        AsyncScoped: AsyncScopedT,
        connect: Connector,
        name: str,
    ) -> None:
        """Disconnected by another task while the send awaits: still called; a new one waits."""
        signal: Signal = getattr(signals, name)
        seen: list[str] = []
        entered = asyncio.Event()
        go = asyncio.Event()

        async def first(sender: object, **kwargs: object) -> None:
            seen.append("first")
            entered.set()
            await go.wait()

        async def second(sender: object, **kwargs: object) -> None:
            await asyncio.sleep(0)
            seen.append("second")

        def late(sender: object, **kwargs: object) -> None:
            seen.append("late")

        connect(signal, first)
        connect(signal, second)

        async def commit(name: str) -> None:
            session = AsyncScoped()
            session.add(Item(name=name))
            await session.commit()
            await AsyncScoped.remove()

        task = asyncio.create_task(commit("a"))
        await entered.wait()
        signal.disconnect(second)
        connect(signal, late)
        go.set()
        await task
        assert seen == ["first", "second"]
        await asyncio.create_task(commit("b"))
        assert seen == ["first", "second", "first", "late"]
        assert AsyncScoped.registry.registry == {}

    async def test_weak_coroutine_receiver_dropped_mid_send(
        self, arunner: asyncio.Runner, AsyncScoped: AsyncScopedT, connect: Connector
    ) -> None:
        """A weak coroutine receiver dropped while the send awaits gets that send, no later one."""
        seen: list[str] = []

        class Late:
            async def __call__(self, sender: object, **kwargs: object) -> None:
                await asyncio.sleep(0)
                seen.append("late")

        holder = [Late()]

        async def first(sender: object, **kwargs: object) -> None:
            seen.append("first")
            holder.clear()
            await asyncio.sleep(0)
            gc.collect()

        connect(signals.before_commit, first)
        signals.before_commit.connect(holder[0])  # weak
        session = AsyncScoped()
        session.add(Item(name="a"))
        await session.commit()
        session.add(Item(name="b"))
        await session.commit()
        assert seen == ["first", "late", "first"]


class TestAsyncCoroutinesFromPlainFunctions:
    async def test_callback_returning_a_coroutine_is_awaited_in_its_session(
        self,
        arunner: asyncio.Runner,
        AsyncScoped: AsyncScopedT,
        aengine: sa_asyncio.AsyncEngine,
    ) -> None:
        """With an AsyncSession a partial of a coroutine function is awaited, and its work kept."""
        seen: list[str] = []

        async def audit(message: str) -> None:
            await asyncio.sleep(0)
            distinct = AsyncScoped()
            assert distinct is not session
            distinct.add(Audit(message=message))
            await distinct.flush()
            seen.append(message)

        session = AsyncScoped()
        session.add(Item(name="a"))
        sa_signals.on_commit(functools.partial(audit, "first"), session)
        sa_signals.on_commit(lambda: audit("second"), session)
        await session.commit()
        assert seen == ["first", "second"]
        assert await acount(aengine, Audit) == 2
        assert_async_clean(AsyncScoped, session, aengine)
