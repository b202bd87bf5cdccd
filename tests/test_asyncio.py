"""AsyncSession support: installs, senders, awaited receivers and callbacks, scopes, tasks.

The on_commit specification itself runs in the async flavour in ``test_on_commit.py``; these
tests cover what only exists for async code, run as real ``async def`` tests.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import pathlib
import runpy
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals
from tests.models import Audit
from tests.models import Item

if t.TYPE_CHECKING:
    from tests.conftest import Connector

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"

AsyncScopedT = sa_asyncio.async_scoped_session[sa_asyncio.AsyncSession]


async def acount(engine: sa_asyncio.AsyncEngine, model: type[t.Any]) -> int:
    async with engine.connect() as connection:
        return (await connection.scalar(sa.select(sa.func.count()).select_from(model))) or 0


class TestInstall:
    def test_factory_gets_its_own_sync_session_class(
        self, aengine: sa_asyncio.AsyncEngine
    ) -> None:
        """install() never listens on the shared Session class; uninstall() restores the maker."""
        maker = sa_asyncio.async_sessionmaker(aengine)
        sa_signals.install(maker)
        try:
            installed = maker.kw["sync_session_class"]
            assert installed is not sa_orm.Session
            assert issubclass(installed, sa_orm.Session)
            assert isinstance(maker().sync_session, installed)
            sa_signals.install(maker)  # again: nothing changes
            assert maker.kw["sync_session_class"] is installed
            other = sa_asyncio.AsyncSession(aengine)
            with pytest.raises(sa_signals.NotInstalledError):
                sa_signals.on_commit(lambda: None, other)
        finally:
            sa_signals.uninstall(maker)
        assert "sync_session_class" not in maker.kw
        sa_signals.uninstall(maker)  # not installed: nothing to do

    def test_keeps_a_custom_sync_session_class(self, aengine: sa_asyncio.AsyncEngine) -> None:
        """A configured sync_session_class becomes the base of the installed one, and returns."""

        class Routing(sa_orm.Session):
            pass

        maker = sa_asyncio.async_sessionmaker(aengine, sync_session_class=Routing)
        sa_signals.install(maker)
        try:
            assert issubclass(maker.kw["sync_session_class"], Routing)
            assert maker.kw["sync_session_class"] is not Routing
        finally:
            sa_signals.uninstall(maker)
        assert maker.kw["sync_session_class"] is Routing

    def test_robust_mismatch_and_shared_maker_refused(
        self, aengine: sa_asyncio.AsyncEngine
    ) -> None:
        """Reinstalling differently, or two scoped sessions on one maker, is refused."""
        maker = sa_asyncio.async_sessionmaker(aengine)
        first = sa_asyncio.async_scoped_session(maker, scopefunc=asyncio.current_task)
        second = sa_asyncio.async_scoped_session(maker, scopefunc=asyncio.current_task)
        sa_signals.install(first)
        try:
            with pytest.raises(sa_signals.InstallError, match="robust=True; uninstall it first"):
                sa_signals.install(maker, robust=False)
            with pytest.raises(sa_signals.InstallError, match="its own async_sessionmaker"):
                sa_signals.install(second)
        finally:
            sa_signals.uninstall(first)

    def test_scoped_session_on_a_plain_callable_refused(self) -> None:
        """An async_scoped_session must be built on an async_sessionmaker."""
        scoped = sa_asyncio.async_scoped_session(
            lambda: None,  # type: ignore[arg-type,return-value]
            scopefunc=asyncio.current_task,
        )
        with pytest.raises(sa_signals.InstallError, match="built on an async_sessionmaker"):
            sa_signals.install(scoped)

    def test_async_session_instance_refused(self, aengine: sa_asyncio.AsyncEngine) -> None:
        """install() names what it takes, including the async factories."""
        with pytest.raises(sa_signals.InstallError, match="an async_sessionmaker"):
            sa_signals.install(sa_asyncio.AsyncSession(aengine))  # type: ignore[arg-type]


class TestSenders:
    async def test_session_signals_are_sent_by_the_async_session(
        self, arunner: asyncio.Runner, AsyncScoped: AsyncScopedT, connect: Connector
    ) -> None:
        """Session-level senders and model ``session=`` are the AsyncSession the user holds."""
        names = ["before_flush", "after_flush", "before_commit", "after_commit", "after_rollback"]
        calls = {name: connect.record(getattr(signals, name)) for name in names}
        saves = connect.record(signals.post_save)
        session = AsyncScoped()
        session.add(Item(name="a"))
        await session.commit()
        session.add(Item(name="b"))
        await session.flush()
        await session.rollback()
        for name in names:
            assert calls[name], name
            assert all(sender is session for sender, _ in calls[name]), name
        assert [(sender, kw["session"]) for sender, kw in saves] == [(Item, session)] * 2

    async def test_coroutine_receivers_are_awaited_in_order(
        self, arunner: asyncio.Runner, AsyncScoped: AsyncScopedT, connect: Connector
    ) -> None:
        """Coroutine receivers are awaited in place, in order, and may query through the sender."""
        seen: list[str] = []

        def plain(sender: object, **kwargs: object) -> None:
            seen.append("plain")

        async def slow(sender: sa_asyncio.AsyncSession, **kwargs: object) -> None:
            await asyncio.sleep(0.01)
            seen.append(f"slow {await sender.scalar(sa.select(sa.func.count(Item.id)))}")

        async def writes(sender: sa_asyncio.AsyncSession, **kwargs: object) -> None:
            await asyncio.sleep(0)
            seen.append(f"pre_save {t.cast('Item', kwargs['instance']).name}")

        connect(signals.before_commit, slow)
        connect(signals.before_commit, plain)
        connect(signals.pre_save, writes, Item)
        session = AsyncScoped()
        session.add(Item(name="a"))
        await session.commit()
        # The receiver's query autoflushes inside before_commit, and sees the row.
        assert seen == ["pre_save a", "slow 1", "plain"]

    async def test_after_commit_coroutine_receiver_uses_the_distinct_session(
        self,
        arunner: asyncio.Runner,
        AsyncScoped: AsyncScopedT,
        aengine: sa_asyncio.AsyncEngine,
        connect: Connector,
    ) -> None:
        """An async after_commit receiver runs in a distinct AsyncSession, committed for it."""

        async def audit(sender: sa_asyncio.AsyncSession, **kwargs: object) -> None:
            distinct = AsyncScoped()
            assert distinct is not sender
            assert distinct is sa_signals.current_async_session()
            distinct.add(Audit(message="audited"))
            await distinct.flush()

        connect(signals.after_commit, audit)
        session = AsyncScoped()
        session.add(Item(name="a"))
        await session.commit()
        assert AsyncScoped() is session
        assert await acount(aengine, Audit) == 1

    async def test_non_robust_async_receiver_vetoes_the_commit(
        self, arunner: asyncio.Runner, aengine: sa_asyncio.AsyncEngine, connect: Connector
    ) -> None:
        """With robust=False an async before_commit receiver that raises aborts the commit."""

        async def veto(sender: object, **kwargs: object) -> None:
            await asyncio.sleep(0)
            raise PermissionError("vetoed")

        maker = sa_asyncio.async_sessionmaker(aengine)
        sa_signals.install(maker, robust=False)
        try:
            connect(signals.before_commit, veto)
            async with maker() as session:
                session.add(Item(name="a"))
                with pytest.raises(PermissionError, match="vetoed"):
                    await session.commit()
                await session.rollback()
            assert await acount(aengine, Item) == 0
        finally:
            sa_signals.uninstall(maker)

    async def test_coroutine_failure_receivers_are_awaited(
        self, arunner: asyncio.Runner, AsyncScoped: AsyncScopedT, connect: Connector
    ) -> None:
        """Async receivers of on_commit_failed and receiver_failed are awaited too."""
        seen: list[tuple[str, object]] = []

        async def on_failed(sender: object, **kwargs: object) -> None:
            await asyncio.sleep(0)
            seen.append(("on_commit_failed", sender))

        async def on_receiver_failed(sender: object, **kwargs: object) -> None:
            await asyncio.sleep(0)
            seen.append(("receiver_failed", sender))

        def broken(sender: object, **kwargs: object) -> None:
            raise RuntimeError("broken receiver")

        connect(signals.on_commit_failed, on_failed)
        connect(signals.receiver_failed, on_receiver_failed)
        connect(signals.before_commit, broken, robust=True)
        session = AsyncScoped()
        session.add(Item(name="a"))
        sa_signals.on_commit(lambda: 1 / 0, session)
        await session.commit()
        assert seen == [("receiver_failed", session), ("on_commit_failed", session)]

    async def test_receiver_returning_a_coroutine_is_awaited(
        self, arunner: asyncio.Runner, AsyncScoped: AsyncScopedT, connect: Connector
    ) -> None:
        """A plain callable that returns a coroutine (a partial, say) is awaited as well."""
        seen: list[object] = []

        async def record(tag: str, sender: object, **kwargs: object) -> None:
            await asyncio.sleep(0)
            seen.append((tag, sender))

        connect(signals.after_flush, functools.partial(record, "flushed"))
        session = AsyncScoped()
        session.add(Item(name="a"))
        await session.flush()
        assert seen == [("flushed", session)]
        await session.rollback()

    def test_coroutine_receiver_on_sync_session_is_reported(
        self, engine: sa.Engine, connect: Connector, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A coroutine receiver hit by a sync Session fails loudly, naming the receiver
        (reported, as it was connected robustly)."""

        async def nothing_awaits_me(sender: object, **kwargs: object) -> None:  # pragma: no cover
            pass

        failures = connect.record(signals.receiver_failed)
        connect(signals.before_commit, nothing_awaits_me, robust=True)
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)
        try:
            with maker() as session, caplog.at_level(logging.ERROR, logger="sa_signals"):
                session.add(Item(name="a"))
                session.commit()
        finally:
            sa_signals.uninstall(maker)
        [(sender, kwargs)] = failures
        assert sender is session
        assert kwargs["receiver"] is nothing_awaits_me
        assert isinstance(kwargs["exception"], sa_signals.CoroutineMisuseError)
        assert "nothing_awaits_me" in str(kwargs["exception"])

    def test_receiver_returning_a_coroutine_on_sync_session_is_refused(
        self, engine: sa.Engine, connect: Connector, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A partial of a coroutine function has its coroutine closed and, connected robustly,
        is reported."""

        async def record(tag: str, sender: object, **kwargs: object) -> None:  # pragma: no cover
            pass

        receiver = functools.partial(record, "flushed")
        failures = connect.record(signals.receiver_failed)
        connect(signals.after_flush, receiver, robust=True)
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)
        try:
            with maker() as session, caplog.at_level(logging.ERROR, logger="sa_signals"):
                session.add(Item(name="a"))
                session.flush()
        finally:
            sa_signals.uninstall(maker)
        [(_, kwargs)] = failures
        assert kwargs["receiver"] is receiver
        assert isinstance(kwargs["exception"], sa_signals.CoroutineMisuseError)


class TestOnCommitAsync:
    async def test_coroutine_outside_transaction_names_the_awaitable_form(
        self, arunner: asyncio.Runner, AsyncScoped: AsyncScopedT
    ) -> None:
        """Plain on_commit() cannot await now: it raises and points at on_commit_async()."""
        ran: list[int] = []

        async def callback() -> None:
            ran.append(1)

        session = AsyncScoped()
        with pytest.raises(sa_signals.CoroutineMisuseError, match="on_commit_async"):
            sa_signals.on_commit(callback, session)
        await sa_signals.on_commit_async(callback, session)
        assert ran == [1]

    async def test_on_commit_async_queues_inside_a_transaction(
        self, arunner: asyncio.Runner, AsyncScoped: AsyncScopedT, aengine: sa_asyncio.AsyncEngine
    ) -> None:
        """Inside a transaction the awaitable form only queues; the commit runs it."""
        seen: list[int] = []

        async def callback() -> None:
            seen.append(await acount(aengine, Item))

        session = AsyncScoped()
        session.add(Item(name="a"))
        await session.flush()
        await sa_signals.on_commit_async(callback, AsyncScoped)
        assert seen == []
        await session.commit()
        assert seen == [1]

    async def test_callbacks_registered_in_turn_run_in_order(
        self, arunner: asyncio.Runner, AsyncScoped: AsyncScopedT
    ) -> None:
        """Coroutine and plain callbacks registered one after another, through the session or
        its scoped session, each run once and are awaited, in order; a savepoint's are dropped
        with it."""
        seen: list[str] = []

        async def first() -> None:
            await asyncio.sleep(0)
            seen.append("first")

        async def second() -> None:
            seen.append("second")

        def plain() -> None:
            seen.append("plain")

        async def dropped() -> None:  # pragma: no cover - rolled back
            seen.append("dropped")

        session = AsyncScoped()
        session.add(Item(name="a"))
        for callback in (first, plain, first, second, second, plain):
            sa_signals.on_commit(callback, session)
        sa_signals.on_commit(second, AsyncScoped)
        savepoint = await session.begin_nested()
        sa_signals.on_commit(dropped, session)
        sa_signals.on_commit(dropped, session)
        await savepoint.rollback()
        sa_signals.on_commit(first, session)
        await session.commit()
        assert seen == ["first", "plain", "first", "second", "second", "plain", "second", "first"]

    async def test_on_commit_async_refuses_sync_sessions(self, arunner: asyncio.Runner) -> None:
        """The awaitable form is for async sessions only."""
        with pytest.raises(TypeError, match="needs an AsyncSession"):
            await sa_signals.on_commit_async(lambda: None, sa_orm.Session())  # type: ignore[arg-type]

    async def test_plain_callback_writes_through_the_distinct_session(
        self,
        arunner: asyncio.Runner,
        AsyncScoped: AsyncScopedT,
        aengine: sa_asyncio.AsyncEngine,
    ) -> None:
        """A plain callback adds to ``AsyncScoped()`` and uses ``current_session()``'s sync API."""
        counts: list[int] = []

        def callback() -> None:
            AsyncScoped().add(Audit(message="plain"))
            sync = sa_signals.current_session()
            assert sync is AsyncScoped().sync_session
            counts.append(sync.scalar(sa.select(sa.func.count()).select_from(Item)) or 0)

        session = AsyncScoped()
        session.add(Item(name="a"))
        sa_signals.on_commit(callback, session)
        await session.commit()
        assert counts == [1]
        assert await acount(aengine, Audit) == 1

    async def test_plain_callback_run_at_once_cannot_commit_outside_the_greenlet(
        self,
        arunner: asyncio.Runner,
        AsyncScoped: AsyncScopedT,
        connect: Connector,
    ) -> None:
        """Run at once from plain async code, a callback's writes are refused, not lost quietly."""
        failures = connect.record(signals.on_commit_failed)
        session = AsyncScoped()
        sa_signals.on_commit(lambda: AsyncScoped().add(Audit(message="x")), session)
        [(sender, kwargs)] = failures
        assert sender is session
        assert isinstance(kwargs["exception"], sa_signals.CoroutineMisuseError)
        assert "on_commit_async" in str(kwargs["exception"])
        assert AsyncScoped() is session

    async def test_sessionmaker_install_reaches_distinct_session(
        self, arunner: asyncio.Runner, aengine: sa_asyncio.AsyncEngine
    ) -> None:
        """Without a scoped session, current_async_session() is the callback's own session."""
        maker = sa_asyncio.async_sessionmaker(aengine)
        sa_signals.install(maker)
        try:
            async with maker() as session:
                seen: list[sa_asyncio.AsyncSession] = []

                async def callback() -> None:
                    distinct = sa_signals.current_async_session()
                    assert distinct is sa_signals.current_async_session()
                    seen.append(distinct)
                    distinct.add(Audit(message="from maker"))

                session.add(Item(name="a"))
                sa_signals.on_commit(callback, session)
                await session.commit()
                assert seen[0] is not session
            assert await acount(aengine, Audit) == 1
        finally:
            sa_signals.uninstall(maker)

    async def test_other_scopefunc_reaches_the_distinct_session(
        self, arunner: asyncio.Runner, aengine: sa_asyncio.AsyncEngine
    ) -> None:
        """Scoped by another function than the current task, the registry still gives each
        callback its own session, committed after it, and gives the committed one back."""
        scope: contextvars.ContextVar[str] = contextvars.ContextVar("scope", default="request")
        scoped = sa_asyncio.async_scoped_session(
            sa_asyncio.async_sessionmaker(aengine), scopefunc=scope.get
        )
        sa_signals.install(scoped)
        try:
            session = scoped()
            seen: list[bool] = []

            async def writes() -> None:
                seen.append(scoped() is not session)
                scoped().add(Audit(message="scoped"))

            session.add(Item(name="a"))
            sa_signals.on_commit(lambda: seen.append(False), session)
            sa_signals.on_commit(writes, session)
            sa_signals.on_commit(writes, session)
            await session.commit()
            assert seen == [False, True, True]
            assert scoped() is session
            assert await acount(aengine, Audit) == 2
        finally:
            sa_signals.uninstall(scoped)
            await scoped.remove()

    async def test_failing_coroutine_rolls_back_and_reports_the_async_session(
        self,
        arunner: asyncio.Runner,
        AsyncScoped: AsyncScopedT,
        aengine: sa_asyncio.AsyncEngine,
        connect: Connector,
    ) -> None:
        """A coroutine callback that raises is rolled back and reported with the AsyncSession."""
        failures = connect.record(signals.on_commit_failed)

        async def write_then_fail() -> None:
            AsyncScoped().add(Audit(message="never"))
            await AsyncScoped().flush()
            raise RuntimeError("boom")

        session = AsyncScoped()
        session.add(Item(name="a"))
        sa_signals.on_commit(write_then_fail, session)
        await session.commit()
        assert [(sender, kw["callback"]) for sender, kw in failures] == [
            (session, write_then_fail)
        ]
        assert await acount(aengine, Audit) == 0
        assert await acount(aengine, Item) == 1

    def test_current_async_session_outside_callbacks(self, engine: sa.Engine) -> None:
        """current_async_session() says where it works, and refuses a sync commit's callback."""
        with pytest.raises(sa_signals.OutsideCallbackError, match="only inside an on_commit"):
            sa_signals.current_async_session()
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)
        errors: list[Exception] = []

        def callback() -> None:
            try:
                sa_signals.current_async_session()
            except sa_signals.OutsideCallbackError as exc:
                errors.append(exc)

        try:
            with maker() as session:
                session.add(Item(name="a"))
                sa_signals.on_commit(callback, session)
                session.commit()
        finally:
            sa_signals.uninstall(maker)
        assert "use sa_signals.current_session() there" in str(errors[0])


class TestMixedInstalls:
    async def test_sync_callbacks_queued_by_an_async_callback(
        self,
        arunner: asyncio.Runner,
        AsyncScoped: AsyncScopedT,
        Session: sa_orm.scoped_session[sa_orm.Session],
        engine: sa.Engine,
    ) -> None:
        """They run in their own session; the next async callback sees the sync registry back."""
        made: list[sa_orm.Session] = []
        registry_was_empty: list[bool] = []

        def sync_callback() -> None:
            registry_was_empty.append(not Session.registry.has())

        def commit_sync_session() -> None:
            session = Session()
            made.append(session)
            session.add(Audit(message="sync"))
            sa_signals.on_commit(sync_callback, session)
            session.commit()

        def sees_the_registry() -> None:
            made.append(Session())

        session = AsyncScoped()
        session.add(Item(name="a"))
        sa_signals.on_commit(commit_sync_session, session)
        sa_signals.on_commit(sees_the_registry, session)
        await session.commit()
        assert registry_was_empty == [True]
        assert made[1] is made[0]
        with engine.connect() as connection:
            assert connection.scalar(sa.select(sa.func.count()).select_from(Audit)) == 1


class TestTasks:
    @pytest.mark.backends("sqlite", "postgresql")
    async def test_fifty_tasks_each_run_their_own_callbacks(
        self,
        arunner: asyncio.Runner,
        AsyncScoped: AsyncScopedT,
        aengine: sa_asyncio.AsyncEngine,
    ) -> None:
        """Concurrent tasks each await exactly their own callbacks, with their own context."""
        ident: contextvars.ContextVar[int] = contextvars.ContextVar("ident")
        runs: list[tuple[int, int, bool, bool]] = []
        start = asyncio.Event()

        async def worker(n: int) -> None:
            ident.set(n)
            await start.wait()
            for i in range(4):
                session = AsyncScoped()
                session.add(Item(name=f"t{n}-{i}"))
                task = asyncio.current_task()

                async def callback(
                    n: int = n, i: int = i, session: t.Any = session, task: t.Any = task
                ) -> None:
                    await asyncio.sleep(0)
                    distinct = AsyncScoped()
                    runs.append(
                        (n, i, ident.get() == n, asyncio.current_task() is task)
                        if distinct is not session
                        else (n, i, False, False)
                    )

                sa_signals.on_commit(callback, session)
                if i % 2:
                    await session.rollback()
                else:
                    await session.commit()
                await asyncio.sleep(0)
            await AsyncScoped.remove()

        tasks = [asyncio.create_task(worker(n)) for n in range(50)]
        start.set()
        await asyncio.gather(*tasks)
        expected = sorted((n, i, True, True) for n in range(50) for i in range(4) if not i % 2)
        assert sorted(runs) == expected
        assert await acount(aengine, Item) == len(expected)
        assert AsyncScoped.registry.registry == {}

    async def test_cancelled_during_commit_callbacks(
        self,
        arunner: asyncio.Runner,
        AsyncScoped: AsyncScopedT,
        aengine: sa_asyncio.AsyncEngine,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Cancelled while a callback awaits: data stays, the rest are logged by name, not run."""
        waiting = asyncio.Event()
        ran: list[str] = []

        sessions: list[sa_asyncio.AsyncSession] = []

        async def slow() -> None:
            AsyncScoped().add(Audit(message="interrupted"))
            await AsyncScoped().flush()
            waiting.set()
            await asyncio.sleep(30)
            ran.append("slow")  # pragma: no cover - cancelled first

        async def later() -> None:  # pragma: no cover - the run was interrupted
            ran.append("later")

        async def commit() -> sa_asyncio.AsyncSession:
            session = AsyncScoped()
            sessions.append(session)
            session.add(Item(name="a"))
            sa_signals.on_commit(slow, session)
            sa_signals.on_commit(later, session)
            await session.commit()
            return session  # pragma: no cover - cancelled first

        task = asyncio.create_task(commit())
        await waiting.wait()
        with caplog.at_level(logging.ERROR, logger="sa_signals"):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert ran == []
        assert await acount(aengine, Item) == 1
        assert await acount(aengine, Audit) == 0
        assert list(AsyncScoped.registry.registry.values()) == sessions
        [session] = sessions
        assert not session.in_transaction()
        session.add(Item(name="b"))
        await session.commit()
        assert await acount(aengine, Item) == 2
        messages = [record.getMessage() for record in caplog.records]
        assert any("slow" in m and "was interrupted by CancelledError" in m for m in messages)
        assert any("1 commit-time call(s) did not run" in m and "later" in m for m in messages), (
            messages
        )

    async def test_cancelled_before_the_commit_drops_callbacks(
        self,
        arunner: asyncio.Runner,
        AsyncScoped: AsyncScopedT,
        aengine: sa_asyncio.AsyncEngine,
        connect: Connector,
    ) -> None:
        """Cancelled in a before_commit receiver: nothing committed, the rollback drops all."""
        waiting = asyncio.Event()
        ran: list[str] = []
        rollbacks = connect.record(signals.after_rollback)

        async def stall(sender: object, **kwargs: object) -> None:
            waiting.set()
            await asyncio.sleep(30)

        connect(signals.before_commit, stall)
        session = AsyncScoped()

        async def commit() -> None:
            session.add(Item(name="a"))
            sa_signals.on_commit(lambda: ran.append("callback"), session)
            await session.commit()

        task = asyncio.create_task(commit())
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await session.rollback()
        assert ran == []
        assert [sender for sender, _ in rollbacks] == [session]
        assert await acount(aengine, Item) == 0

    async def test_shielded_commit_runs_every_callback_despite_cancellation(
        self,
        arunner: asyncio.Runner,
        AsyncScoped: AsyncScopedT,
        aengine: sa_asyncio.AsyncEngine,
    ) -> None:
        """``asyncio.shield(session.commit())`` finishes the commit and all its callbacks."""
        waiting = asyncio.Event()
        ran: list[str] = []

        async def slow() -> None:
            waiting.set()
            await asyncio.sleep(0.05)
            AsyncScoped().add(Audit(message="slow"))
            ran.append("slow")

        committing: list[asyncio.Future[None]] = []

        async def commit() -> None:
            session = AsyncScoped()
            session.add(Item(name="a"))
            sa_signals.on_commit(slow, session)
            sa_signals.on_commit(lambda: ran.append("later"), session)
            committing.append(asyncio.ensure_future(session.commit()))
            await asyncio.shield(committing[0])

        task = asyncio.create_task(commit())
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ran == []
        await committing[0]
        assert ran == ["slow", "later"]
        assert await acount(aengine, Audit) == 1


class TestExample:
    def test_outbox_example_runs(self, capsys: pytest.CaptureFixture[str]) -> None:
        """examples/asyncio_outbox.py runs and publishes only the committed order."""
        module = runpy.run_path(str(EXAMPLES / "asyncio_outbox.py"))
        asyncio.run(module["main"]())
        assert capsys.readouterr().out == "order 1 created: book\n"


class TestScopes:
    def test_wrong_kind_of_with_is_refused(self, engine: sa.Engine) -> None:
        """A sync scope refuses ``async with`` and async functions, and the other way round."""
        sync_scope = sa_signals.session_scope(sa_orm.sessionmaker(engine))
        async_scope = sa_signals.session_scope(sa_asyncio.async_sessionmaker())
        with pytest.raises(TypeError, match="use `async with`"), async_scope:
            pass  # pragma: no cover

        async def enter() -> None:
            async with sync_scope:
                pass  # pragma: no cover

        with pytest.raises(TypeError, match="use `with`"):
            asyncio.run(enter())
        with pytest.raises(TypeError, match="decorate a plain function"):

            @sync_scope
            async def func(session: object) -> None:  # pragma: no cover
                pass
