"""Scope: a scopefunc keyed by a unit of work, with the registry cleaned at its end."""

from __future__ import annotations

import asyncio
import collections.abc as c
import threading
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals.contrib.scopes import remove_session
from sa_signals.contrib.scopes import Scope
from tests.conftest import item_names as names
from tests.models import Audit
from tests.models import Item

Scoped = sa_orm.scoped_session[sa_orm.Session]


@pytest.fixture
def scope() -> Scope:
    return Scope()


@pytest.fixture
def ScopedSession(scope: Scope, engine: sa.Engine) -> c.Iterator[Scoped]:
    """An installed scoped_session keyed by ``scope``."""
    scoped = scope.scoped_session(sa_orm.sessionmaker(engine))
    sa_signals.install(scoped)
    yield scoped
    sa_signals.uninstall(scoped)


class FailingClose(sa_orm.Session):
    """A session whose close() fails after closing."""

    def close(self) -> None:
        super().close()
        raise RuntimeError("close failed")


class TestScope:
    def test_one_session_per_unit(self, scope: Scope, ScopedSession: Scoped) -> None:
        """Inside a unit the scoped_session returns one session; the next unit gets another."""
        with scope.enter("job-1") as key:
            first = ScopedSession()
            assert ScopedSession() is first
            assert key == "job-1"
            assert scope.keys() == {"job-1"}
        with scope.enter("job-2"):
            assert ScopedSession() is not first

    def test_registry_is_empty_after_each_unit(
        self, scope: Scope, ScopedSession: Scoped, engine: sa.Engine
    ) -> None:
        """Leaving a unit closes its session and deletes its key, committed or not."""
        with scope.enter() as key:
            ScopedSession.add(Item(name="committed"))
            ScopedSession.commit()
            ScopedSession.add(Item(name="pending"))
            ScopedSession.flush()
            session = ScopedSession()
        assert not isinstance(key, str)
        assert scope.keys() == set()
        assert ScopedSession.registry.registry == {}
        assert not session.in_transaction()
        assert names(engine) == ["committed"]
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    def test_cleans_up_when_the_unit_raises(
        self, scope: Scope, ScopedSession: Scoped, engine: sa.Engine
    ) -> None:
        """An exception rolls back, removes the key and propagates."""
        with pytest.raises(KeyError, match="boom"), scope.enter("job"):
            ScopedSession.add(Item(name="a"))
            ScopedSession.flush()
            raise KeyError("boom")
        assert scope.keys() == set()
        assert names(engine) == []
        assert not scope.active

    def test_cleans_up_when_closing_fails(
        self, scope: Scope, engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A session whose close() raises is logged, and its key still deleted."""
        scoped = scope.scoped_session(sa_orm.sessionmaker(engine, class_=FailingClose))
        with scope.enter("job"):
            scoped.add(Item(name="a"))
            scoped.flush()
        assert scope.keys() == set()
        assert "close failed" in caplog.text

    def test_outside_a_unit_raises(self, scope: Scope, ScopedSession: Scoped) -> None:
        """Using the scoped_session outside a unit of work is an error, not a leak."""
        assert not scope.active
        with pytest.raises(sa_signals.ScopeError, match=r"outside a unit of work"):
            ScopedSession()
        assert scope.keys() == set()

    def test_rejects_a_key_in_use(self, scope: Scope, ScopedSession: Scoped) -> None:
        """Two running units may not share a key; a finished key can be used again."""
        with scope.enter("job"):
            session = ScopedSession()
            with (
                pytest.raises(sa_signals.ScopeError, match="'job' is already in use"),
                scope.enter("job"),
            ):
                pass  # pragma: no cover
            assert ScopedSession() is session
        with scope.enter("job"):
            assert ScopedSession() is not session

    def test_nested_units_restore_the_outer_one(self, scope: Scope, ScopedSession: Scoped) -> None:
        """An inner unit has its own session; the outer one is current again after it."""
        with scope.enter("outer"):
            outer = ScopedSession()
            with scope.enter("inner"):
                assert ScopedSession() is not outer
                assert scope.keys() == {"outer", "inner"}
            assert scope() == "outer"
            assert ScopedSession() is outer
            assert scope.keys() == {"outer"}
        assert scope.keys() == set()

    def test_request_object_as_key(self, scope: Scope, ScopedSession: Scoped) -> None:
        """Any hashable object, such as a request, keys a unit; it is not kept afterwards."""

        class Request:
            pass

        request = Request()
        with scope.enter(request):
            assert scope() is request
            ScopedSession()
            assert scope.keys() == {request}
        assert scope.keys() == set()

    def test_threads_get_their_own_units(
        self, scope: Scope, ScopedSession: Scoped, engine: sa.Engine
    ) -> None:
        """Concurrent threads each run their unit with their own session."""
        seen: dict[int, sa_orm.Session] = {}
        barrier = threading.Barrier(4, timeout=10)

        def job(number: int) -> None:
            with scope.enter(f"job-{number}"):
                seen[number] = ScopedSession()
                barrier.wait()

        threads = [threading.Thread(target=job, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert len({id(session) for session in seen.values()}) == 4
        assert scope.keys() == set()

    def test_asyncio_tasks_get_their_own_keys(self, scope: Scope) -> None:
        """Each asyncio task sees the key it entered, across awaits."""

        async def job(name: str) -> t.Hashable:
            with scope.enter(name):
                await asyncio.sleep(0)
                return scope()

        async def main() -> list[t.Hashable]:
            return list(await asyncio.gather(job("a"), job("b"), job("c")))

        assert asyncio.run(main()) == ["a", "b", "c"]

    def test_on_commit_in_a_unit(
        self, scope: Scope, ScopedSession: Scoped, engine: sa.Engine
    ) -> None:
        """Callbacks run after the commit in a distinct session of the same scoped_session."""
        ran: list[bool] = []
        with scope.enter("job"):
            session = ScopedSession()

            def audit() -> None:
                ran.append(ScopedSession() is not session)
                ScopedSession.add(Audit(message="done"))

            ScopedSession.add(Item(name="a"))
            sa_signals.on_commit(audit, ScopedSession)
            ScopedSession.commit()
            assert ScopedSession() is session
        assert ran == [True]
        with engine.connect() as connection:
            assert connection.scalar(sa.select(Audit.message)) == "done"
        assert scope.keys() == set()


class TestTrack:
    def test_tracks_a_scoped_session_built_on_the_scope(
        self, scope: Scope, engine: sa.Engine
    ) -> None:
        """A scoped_session built with scopefunc=scope is removed at each exit once tracked."""
        scoped: Scoped = sa_orm.scoped_session(sa_orm.sessionmaker(engine), scopefunc=scope)
        scope.track(scoped)
        scope.track(scoped)
        with scope.enter("job"):
            scoped()
        assert scoped.registry.registry == {}

    def test_rejects_another_scopefunc(self, scope: Scope, engine: sa.Engine) -> None:
        """A scoped_session keyed by something else cannot be tracked."""
        scoped: Scoped = sa_orm.scoped_session(sa_orm.sessionmaker(engine))
        with pytest.raises(TypeError, match="does not use this scope"):
            scope.track(scoped)

    def test_rejects_what_is_not_a_scoped_session(self, scope: Scope, engine: sa.Engine) -> None:
        """Only a scoped_session, whose sessions close synchronously, can be tracked."""
        with pytest.raises(TypeError, match="takes a scoped_session"):
            scope.track(sa_orm.sessionmaker(engine))  # type: ignore[arg-type]


class TestRemoveSession:
    def test_removes_even_when_closing_fails(
        self, engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The key goes even if close() raises; the error is logged."""
        scoped = sa_orm.scoped_session(sa_orm.sessionmaker(engine, class_=FailingClose))
        scoped()
        remove_session(scoped)
        assert not scoped.registry.has()
        assert "close failed" in caplog.text
        remove_session(scoped)


AsyncScoped = sa_asyncio.async_scoped_session[sa_asyncio.AsyncSession]


@pytest.fixture
def AsyncScopeSession(scope: Scope, aengine: sa_asyncio.AsyncEngine) -> c.Iterator[AsyncScoped]:
    """An installed async_scoped_session keyed by ``scope``."""
    scoped = scope.async_scoped_session(sa_asyncio.async_sessionmaker(aengine))
    sa_signals.install(scoped)
    yield scoped
    sa_signals.uninstall(scoped)


class TestEnterAsync:
    async def test_closes_async_sessions_and_deletes_keys(
        self,
        arunner: asyncio.Runner,
        scope: Scope,
        AsyncScopeSession: AsyncScoped,
        ScopedSession: Scoped,
        engine: sa.Engine,
    ) -> None:
        """The async exit closes every tracked session, async and sync, and leaves no key."""
        async with scope.enter_async("job") as key:
            session = AsyncScopeSession()
            assert AsyncScopeSession() is session
            session.add(Item(name="committed"))
            await session.commit()
            session.add(Item(name="pending"))
            await session.flush()
            sync_session = ScopedSession()
            assert scope.sessions() == [session, sync_session]
            assert scope.keys() == {key} == {"job"}
        assert scope.keys() == set()
        assert not session.in_transaction()
        assert not scope.active
        assert names(engine) == ["committed"]

    async def test_cleans_up_when_the_unit_raises(
        self, arunner: asyncio.Runner, scope: Scope, AsyncScopeSession: AsyncScoped
    ) -> None:
        """An exception rolls back, removes the key and propagates."""
        with pytest.raises(KeyError, match="boom"):
            async with scope.enter_async():
                AsyncScopeSession().add(Item(name="a"))
                await AsyncScopeSession().flush()
                raise KeyError("boom")
        assert scope.keys() == set()

    async def test_cancelled_task_still_closes(
        self,
        arunner: asyncio.Runner,
        scope: Scope,
        AsyncScopeSession: AsyncScoped,
        engine: sa.Engine,
    ) -> None:
        """A task cancelled in the unit, and again during its exit, still closes its session."""
        entered = asyncio.Event()
        sessions: list[sa_asyncio.AsyncSession] = []

        async def unit() -> None:
            async with scope.enter_async("request"):
                session = AsyncScopeSession()
                sessions.append(session)
                session.add(Item(name="a"))
                await session.flush()
                entered.set()
                await asyncio.sleep(30)

        task = asyncio.create_task(unit())
        await entered.wait()
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()  # as anyio's cancel scopes do, while the exit runs
        with pytest.raises(asyncio.CancelledError):
            await task
        assert scope.keys() == set()
        assert not sessions[0].in_transaction()
        assert names(engine) == []

    async def test_on_commit_in_an_async_unit(
        self, arunner: asyncio.Runner, scope: Scope, AsyncScopeSession: AsyncScoped
    ) -> None:
        """Callbacks run after the commit, with the unit's registry put back afterwards."""
        ran: list[bool] = []
        async with scope.enter_async():
            session = AsyncScopeSession()

            async def callback() -> None:
                ran.append(AsyncScopeSession() is not session)

            session.add(Item(name="a"))
            sa_signals.on_commit(callback, session)
            await session.commit()
            assert AsyncScopeSession() is session
        assert ran == [True]
        assert scope.keys() == set()

    async def test_unit_that_used_no_session(
        self, arunner: asyncio.Runner, scope: Scope, AsyncScopeSession: AsyncScoped
    ) -> None:
        """A unit that never asked for a session creates none and leaves nothing."""
        async with scope.enter_async("idle"):
            assert scope() == "idle"
            assert scope.sessions() == []
        assert scope.keys() == set()
        assert not scope.active

    def test_sync_enter_refuses_async_registries(
        self, scope: Scope, AsyncScopeSession: AsyncScoped
    ) -> None:
        """A scope with an async_scoped_session must be entered with enter_async()."""
        with (
            pytest.raises(sa_signals.ScopeError, match=r"async with scope\.enter_async"),
            scope.enter(),
        ):
            pass  # pragma: no cover
        assert not scope.active

    def test_track_takes_an_async_scoped_session(
        self, scope: Scope, aengine: sa_asyncio.AsyncEngine
    ) -> None:
        """An async_scoped_session built with scopefunc=scope can be tracked; others cannot."""
        maker = sa_asyncio.async_sessionmaker(aengine)
        scope.track(sa_asyncio.async_scoped_session(maker, scopefunc=scope))
        other = sa_asyncio.async_scoped_session(maker, scopefunc=asyncio.current_task)
        with pytest.raises(TypeError, match="does not use this scope"):
            scope.track(other)
        with pytest.raises(TypeError, match="or an async_scoped_session, got 42"):
            scope.track(42)  # type: ignore[arg-type]

    async def test_close_failure_is_logged(
        self,
        arunner: asyncio.Runner,
        scope: Scope,
        aengine: sa_asyncio.AsyncEngine,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """An AsyncSession whose close() raises is logged, and its key still deleted."""

        class FailingAsyncClose(sa_asyncio.AsyncSession):
            async def close(self) -> None:
                await super().close()
                raise RuntimeError("async close failed")

        scoped = scope.async_scoped_session(
            sa_asyncio.async_sessionmaker(aengine, class_=FailingAsyncClose)
        )
        async with scope.enter_async():
            scoped().add(Item(name="a"))
        assert scope.keys() == set()
        assert "async close failed" in caplog.text
