"""How commit-time items run: one distinct session each, the scoped registry, failures."""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextvars
import logging
import threading
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals
from tests.conftest import count
from tests.models import Audit
from tests.models import Item

if t.TYPE_CHECKING:
    from tests.conftest import Connector

Scoped = sa_orm.scoped_session[sa_orm.Session]


@pytest.fixture
def OtherSession(engine: sa.Engine) -> c.Iterator[Scoped]:
    """A second installed ``scoped_session`` on the same database."""
    scoped = sa_orm.scoped_session(sa_orm.sessionmaker(engine))
    sa_signals.install(scoped)
    yield scoped
    scoped.remove()
    sa_signals.uninstall(scoped)


class TestDistinctSessionPerItem:
    def test_each_callback_gets_a_session_of_its_own(self, Session: Scoped) -> None:
        """Callbacks of one commit each get a fresh session; the original comes back after."""
        original = Session()
        seen: list[sa_orm.Session] = []
        original.add(Item(name="a"))
        for _ in range(3):
            sa_signals.on_commit(lambda: seen.append(Session()), original)
        original.commit()
        assert len({id(session) for session in seen}) == 3
        assert original not in seen
        assert Session() is original

    def test_callbacks_with_and_without_a_session_alternate(
        self, Session: Scoped, engine: sa.Engine
    ) -> None:
        """Writers commit their own writes; a callback that makes no session sees no leftover."""
        original = Session()
        registry_was_empty: list[bool] = []

        def write(message: str) -> c.Callable[[], None]:
            return lambda: Session.add(Audit(message=message))

        original.add(Item(name="a"))
        sa_signals.on_commit(write("one"), original)
        sa_signals.on_commit(
            lambda: registry_was_empty.append(not Session.registry.has()), original
        )
        sa_signals.on_commit(write("two"), original)
        original.commit()
        assert registry_was_empty == [True]
        assert count(engine, Audit) == 2
        assert Session() is original

    def test_scoped_session_with_a_scopefunc(self, engine: sa.Engine) -> None:
        """A registry keyed by a scopefunc is swapped per callback like a thread-local one."""
        scoped = sa_orm.scoped_session(sa_orm.sessionmaker(engine), scopefunc=lambda: "request")
        sa_signals.install(scoped)
        try:
            original = scoped()
            seen: list[sa_orm.Session] = []
            registry_was_empty: list[bool] = []

            def write() -> None:
                seen.append(scoped())
                scoped.add(Audit(message="written"))

            original.add(Item(name="a"))
            sa_signals.on_commit(write, original)
            sa_signals.on_commit(
                lambda: registry_was_empty.append(not scoped.registry.has()), original
            )
            sa_signals.on_commit(write, original)
            original.commit()
            assert registry_was_empty == [True]
            assert len({id(session) for session in seen}) == 2
            assert original not in seen
            assert count(engine, Audit) == 2
            assert scoped() is original
        finally:
            scoped.remove()
            sa_signals.uninstall(scoped)


class TestFailures:
    def test_failure_receiver_sees_the_registry_as_the_commit_left_it(
        self, Session: Scoped, connect: Connector
    ) -> None:
        """on_commit_failed receivers run outside any item; the next callback is distinct."""
        original = Session()
        in_receiver: list[tuple[bool, bool]] = []
        after: list[sa_orm.Session] = []

        def receiver(sender: object, **kwargs: object) -> None:
            try:
                sa_signals.current_session()
            except sa_signals.OutsideCallbackError:
                outside = True
            else:  # pragma: no cover - the assertion below reports it
                outside = False
            in_receiver.append((outside, Session() is original))

        def fail() -> None:
            Session()
            raise RuntimeError("boom")

        connect(signals.on_commit_failed, receiver)
        original.add(Item(name="a"))
        sa_signals.on_commit(fail, original)
        sa_signals.on_commit(lambda: after.append(Session()), original)
        original.commit()
        assert in_receiver == [(True, True)]
        assert after[0] is not original
        assert Session() is original

    def test_sessionmaker_install_failure_does_not_stop_the_next_callback(
        self, engine: sa.Engine, connect: Connector
    ) -> None:
        """Without a registry, a failing callback is reported and the next gets its session."""
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)
        failures = connect.record(signals.on_commit_failed)
        sessions: list[sa_orm.Session] = []

        def fail() -> None:
            sessions.append(sa_signals.current_session())
            raise RuntimeError("boom")

        try:
            with maker() as session:
                session.add(Item(name="a"))
                sa_signals.on_commit(fail, session)
                sa_signals.on_commit(
                    lambda: sessions.append(sa_signals.current_session()), session
                )
                session.commit()
        finally:
            sa_signals.uninstall(maker)
        assert len(failures) == 1
        assert len(sessions) == 2
        assert sessions[0] is not sessions[1]


class TestReportedOnce:
    def test_strict_failure_is_raised_and_a_later_one_reported(
        self, session: sa_orm.Session, connect: Connector, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The first strict callback's error leaves commit() and is neither logged nor sent;
        a second one, which cannot be raised too, is logged and sent: each failure once."""
        failures = connect.record(signals.on_commit_failed)

        def first() -> None:
            raise LookupError("first")

        def second() -> None:
            raise KeyError("second")

        session.add(Item(name="a"))
        sa_signals.on_commit(first, session, robust=False)
        sa_signals.on_commit(second, session, robust=False)
        with (
            caplog.at_level(logging.ERROR, logger="sa_signals"),
            pytest.raises(LookupError, match="first"),
        ):
            session.commit()
        assert [kwargs["callback"] for _, kwargs in failures] == [second]
        assert [record.exc_info[1] for record in caplog.records] == [  # type: ignore[index]
            failures[0][1]["exception"]
        ]

    def test_work_held_on_a_connection_reports_each_failure_once(
        self, Session: Scoped, engine: sa.Engine, connect: Connector
    ) -> None:
        """Two sessions' strict callbacks waiting on one Connection: its COMMIT raises the
        first error; the second is reported."""
        failures = connect.record(signals.on_commit_failed)

        def first() -> None:
            raise LookupError("first")

        def second() -> None:
            raise KeyError("second")

        maker = Session.session_factory
        with engine.connect() as connection:
            connection.begin()
            for name, callback in (("a", first), ("b", second)):
                with maker(bind=connection, join_transaction_mode="create_savepoint") as joined:
                    joined.add(Item(name=name))
                    sa_signals.on_commit(callback, joined, robust=False)
                    joined.commit()
            with pytest.raises(LookupError, match="first"):
                connection.commit()
        assert [kwargs["callback"] for _, kwargs in failures] == [second]
        assert count(engine, Item) == 2


class TestNestedBatches:
    def test_other_installation_sees_the_first_registry_as_before(
        self, Session: Scoped, OtherSession: Scoped, engine: sa.Engine
    ) -> None:
        """A callback queued on another scoped_session during a run finds this one untouched."""
        original = Session()
        seen: list[sa_orm.Session] = []

        def first() -> None:
            other = OtherSession()
            other.add(Audit(message="other"))
            sa_signals.on_commit(lambda: seen.append(Session()), other)
            other.commit()

        original.add(Item(name="a"))
        sa_signals.on_commit(first, original)
        sa_signals.on_commit(lambda: seen.append(Session()), original)
        original.commit()
        assert seen[0] is original
        assert seen[1] is not original
        assert Session() is original
        assert count(engine, Audit) == 1


class TestCoroutineCheck:
    @pytest.mark.parametrize("kind", ["function", "function with attributes", "method", "object"])
    def test_every_kind_of_coroutine_function_is_refused(
        self, session: sa_orm.Session, kind: str
    ) -> None:
        """Plain, decorated, bound and callable-object coroutine functions are all refused."""

        async def function() -> None:  # pragma: no cover - never called
            pass

        class Holder:
            async def method(self) -> None:  # pragma: no cover - never called
                pass

            async def __call__(self) -> None:  # pragma: no cover - never called
                pass

        if kind == "function with attributes":
            function.marker = True  # type: ignore[attr-defined]
        callback = {
            "function": function,
            "function with attributes": function,
            "method": Holder().method,
            "object": Holder(),
        }[kind]
        with pytest.raises(sa_signals.CoroutineMisuseError):
            sa_signals.on_commit(callback, session)

    def test_plain_function_with_attributes_is_accepted(self, session: sa_orm.Session) -> None:
        """A plain function that carries attributes is not mistaken for a coroutine one."""
        ran: list[bool] = []

        def callback() -> None:
            ran.append(True)

        callback.marker = True  # type: ignore[attr-defined]
        session.add(Item(name="a"))
        sa_signals.on_commit(callback, session)
        session.commit()
        assert ran == [True]


async def commit_with_a_callback(maker: t.Any, ran: list[tuple[str, object]]) -> None:
    """Commit a row of a session of ``maker`` with a callback; note the task of each step."""
    async with maker() as own:
        own.add(Item(name="job"))
        sa_signals.on_commit(lambda: ran.append(("job", asyncio.current_task())), own)
        await own.commit()
        ran.append(("returned", asyncio.current_task()))


class TestWorkThatOutlivesACallback:
    """Tasks, threads and copied contexts started by a callback commit as if none ran."""

    @pytest.mark.parametrize("coroutine", [False, True], ids=["plain", "coroutine"])
    async def test_task_committing_after_the_callback_returned(
        self, AsyncScoped: t.Any, arunner: t.Any, connect: Connector, coroutine: bool
    ) -> None:
        """A task a callback started commits later: its callbacks and change signals run once,
        in its own task, before its commit() returns, and commit() raises nothing."""
        maker = AsyncScoped.session_factory
        jobs: list[asyncio.Task[None]] = []
        ran: list[tuple[str, object]] = []

        def committed(sender: object, *, change: t.Any) -> None:
            ran.append((f"committed {change.changes['name'][1]}", asyncio.current_task()))

        connect(signals.committed, committed)

        def spawn() -> None:
            jobs.append(asyncio.create_task(commit_with_a_callback(maker, ran)))

        async def aspawn() -> None:
            spawn()

        async with maker() as session:
            session.add(Item(name="a"))
            sa_signals.on_commit(aspawn if coroutine else spawn, session)
            await session.commit()
        await jobs[0]
        assert ran == [
            ("committed a", asyncio.current_task()),
            ("committed job", jobs[0]),
            ("job", jobs[0]),
            ("returned", jobs[0]),
        ]

    async def test_task_committing_while_the_callback_awaits(
        self, AsyncScoped: t.Any, arunner: t.Any
    ) -> None:
        """A task committing while its spawning callback still awaits runs its own callbacks
        in its own task before its commit() returns."""
        maker = AsyncScoped.session_factory
        ran: list[tuple[str, object]] = []

        async def spawn_and_wait() -> None:
            task = asyncio.create_task(commit_with_a_callback(maker, ran))
            await task
            ran.append(("awaited", task))

        async with maker() as session:
            session.add(Item(name="a"))
            sa_signals.on_commit(spawn_and_wait, session)
            await session.commit()
        task = ran[0][1]
        assert ran == [("job", task), ("returned", task), ("awaited", task)]
        assert task is not asyncio.current_task()

    async def test_thread_committing_while_the_callback_awaits(
        self, AsyncScoped: t.Any, Session: Scoped, arunner: t.Any
    ) -> None:
        """A thread (asyncio.to_thread) committing a sync installed session runs its callbacks
        in that thread, before its commit() returns."""
        ran: list[tuple[str, int]] = []

        def work() -> None:
            own = Session()
            own.add(Item(name="thread"))
            sa_signals.on_commit(lambda: ran.append(("thread", threading.get_ident())), own)
            own.commit()
            ran.append(("returned", threading.get_ident()))
            Session.remove()

        async def callback() -> None:
            await asyncio.to_thread(work)

        async with AsyncScoped.session_factory() as session:
            session.add(Item(name="a"))
            sa_signals.on_commit(callback, session)
            await session.commit()
        thread = ran[0][1]
        assert ran == [("thread", thread), ("returned", thread)]
        assert thread != threading.get_ident()

    def test_copied_context_run_later_in_a_thread(self, Session: Scoped) -> None:
        """A sync callback's copied context, run in a thread after the commit, commits with
        its callbacks run there, once."""
        contexts: list[contextvars.Context] = []
        ran: list[str] = []

        def work() -> None:
            own = Session()
            own.add(Item(name="later"))
            sa_signals.on_commit(lambda: ran.append("later"), own)
            own.commit()
            ran.append("returned")
            Session.remove()

        session = Session()
        session.add(Item(name="a"))
        sa_signals.on_commit(lambda: contexts.append(contextvars.copy_context()), session)
        session.commit()
        thread = threading.Thread(target=contexts[0].run, args=(work,))
        thread.start()
        thread.join()
        assert ran == ["later", "returned"]

    def test_copied_context_run_later_in_the_same_thread(self, Session: Scoped) -> None:
        """Run after the run ended, in the committing thread, a copied context commits
        normally too."""
        contexts: list[contextvars.Context] = []
        ran: list[str] = []

        def work() -> None:
            with Session() as own:
                own.add(Item(name="later"))
                sa_signals.on_commit(lambda: ran.append("later"), own)
                own.commit()
                ran.append("returned")

        session = Session()
        session.add(Item(name="a"))
        sa_signals.on_commit(lambda: contexts.append(contextvars.copy_context()), session)
        session.commit()
        contexts[0].run(work)
        assert ran == ["later", "returned"]

    async def test_current_session_from_another_task_is_refused(
        self, AsyncScoped: t.Any, arunner: t.Any
    ) -> None:
        """current_async_session() in a task a callback started names the fix."""
        errors: list[BaseException] = []

        async def job() -> None:
            try:
                sa_signals.current_async_session()
            except sa_signals.OutsideCallbackError as exc:
                errors.append(exc)

        async def callback() -> None:
            await asyncio.create_task(job())

        async with AsyncScoped.session_factory() as session:
            session.add(Item(name="a"))
            sa_signals.on_commit(callback, session)
            await session.commit()
        assert len(errors) == 1
        assert "another thread or asyncio task" in str(errors[0])
