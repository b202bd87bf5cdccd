"""The ASGI SessionMiddleware: one unit of work per connection, committed only on success."""

from __future__ import annotations

import asyncio
import collections.abc as c
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals.contrib.asgi import Message
from sa_signals.contrib.asgi import SessionMiddleware
from sa_signals.contrib.scopes import Scope
from tests.conftest import item_names as names
from tests.models import Audit
from tests.models import Item

AsyncScoped = sa_asyncio.async_scoped_session[sa_asyncio.AsyncSession]


@pytest.fixture
def scope() -> Scope:
    return Scope()


@pytest.fixture
def Scoped(scope: Scope, aengine: sa_asyncio.AsyncEngine) -> c.Iterator[AsyncScoped]:
    scoped = scope.async_scoped_session(sa_asyncio.async_sessionmaker(aengine))
    sa_signals.install(scoped)
    yield scoped
    sa_signals.uninstall(scoped)


class App:
    """An ASGI app that writes ``name``, registers a callback, then answers ``status``."""

    def __init__(self, Scoped: AsyncScoped, events: list[str]) -> None:
        self.Scoped = Scoped
        self.events = events

    async def __call__(self, scope: t.Any, receive: t.Any, send: t.Any) -> None:
        if scope["type"] == "lifespan":
            self.events.append("lifespan")
            return
        _, name, status, *how = scope["path"].split("/")
        session = self.Scoped()
        session.add(Item(name=name))
        sa_signals.on_commit(lambda: self.events.append(f"callback {name}"), session)
        await session.flush()
        if how == ["raise"]:
            raise RuntimeError("the handler failed")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close"})
            return
        await send({"type": "http.response.start", "status": int(status), "headers": []})
        if how == ["disconnect"]:
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            assert (await receive())["type"] == "http.disconnect"
            # The end of the body, which a server drops once the client is gone.
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.body", "body": b"done"})


async def call(app: t.Any, path: str, events: list[str], kind: str = "http") -> list[str]:
    """Run one connection to ``path``; record what was sent in ``events``."""

    async def receive() -> Message:
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        events.append(f"sent {message['type']}")

    await app({"type": kind, "path": path}, receive, send)
    return events


class TestSessionMiddleware:
    async def test_commits_after_the_response_when_asked(
        self, arunner: asyncio.Runner, scope: Scope, Scoped: AsyncScoped, engine: sa.Engine
    ) -> None:
        """With before_response=False a complete response is committed after it was sent."""
        events: list[str] = []
        app = SessionMiddleware(App(Scoped, events), scope, commit=True, before_response=False)
        await call(app, "/a/201", events)
        assert events == [
            "sent http.response.start",
            "sent http.response.body",
            "callback a",
        ]
        assert names(engine) == ["a"]
        assert scope.keys() == set()

    async def test_commits_before_the_response_by_default(
        self, arunner: asyncio.Runner, scope: Scope, Scoped: AsyncScoped, engine: sa.Engine
    ) -> None:
        """With commit=True the commit and its callbacks precede a response below 400."""
        events: list[str] = []
        app = SessionMiddleware(App(Scoped, events), scope, commit=True)
        await call(app, "/a/200", events)
        assert events == [
            "callback a",
            "sent http.response.start",
            "sent http.response.body",
        ]
        assert names(engine) == ["a"]
        assert scope.keys() == set()

    @pytest.mark.parametrize("before_response", [False, True])
    @pytest.mark.parametrize("path", ["/a/404", "/a/500"])
    async def test_error_status_rolls_back(
        self,
        arunner: asyncio.Runner,
        scope: Scope,
        Scoped: AsyncScoped,
        engine: sa.Engine,
        path: str,
        before_response: bool,
    ) -> None:
        """A response of status 400 or more is rolled back: its callbacks never run."""
        events: list[str] = []
        app = SessionMiddleware(
            App(Scoped, events), scope, commit=True, before_response=before_response
        )
        await call(app, path, events)
        assert events == ["sent http.response.start", "sent http.response.body"]
        assert names(engine) == []
        assert scope.keys() == set()

    async def test_raising_handler_rolls_back(
        self, arunner: asyncio.Runner, scope: Scope, Scoped: AsyncScoped, engine: sa.Engine
    ) -> None:
        """A handler that raises is rolled back and removed; the error propagates."""
        events: list[str] = []
        app = SessionMiddleware(App(Scoped, events), scope, commit=True)
        with pytest.raises(RuntimeError, match="the handler failed"):
            await call(app, "/a/200/raise", events)
        assert events == []
        assert names(engine) == []
        assert scope.keys() == set()

    async def test_client_disconnect_rolls_back(
        self, arunner: asyncio.Runner, scope: Scope, Scoped: AsyncScoped, engine: sa.Engine
    ) -> None:
        """Committing after the response, a client gone before its end: rolled back, removed."""
        events: list[str] = []
        app = SessionMiddleware(App(Scoped, events), scope, commit=True, before_response=False)
        await call(app, "/a/200/disconnect", events)
        assert events == ["sent http.response.start"] + ["sent http.response.body"] * 2
        assert names(engine) == []
        assert scope.keys() == set()

    async def test_without_commit_nothing_is_committed(
        self, arunner: asyncio.Runner, scope: Scope, Scoped: AsyncScoped, engine: sa.Engine
    ) -> None:
        """The default middleware only scopes and removes: uncommitted work rolls back."""
        events: list[str] = []
        app = SessionMiddleware(App(Scoped, events), scope)
        await call(app, "/a/200", events)
        assert events == ["sent http.response.start", "sent http.response.body"]
        assert names(engine) == []
        assert scope.keys() == set()

    async def test_websocket_commits_when_the_app_returns(
        self, arunner: asyncio.Runner, scope: Scope, Scoped: AsyncScoped, engine: sa.Engine
    ) -> None:
        """A websocket connection is a unit too, committed when the application returns."""
        events: list[str] = []
        app = SessionMiddleware(App(Scoped, events), scope, commit=True)
        await call(app, "/ws/0", events, kind="websocket")
        assert events == ["sent websocket.close", "callback ws"]
        assert names(engine) == ["ws"]
        assert scope.keys() == set()

    async def test_lifespan_passes_through(
        self, arunner: asyncio.Runner, scope: Scope, Scoped: AsyncScoped
    ) -> None:
        """Lifespan events reach the application outside any unit of work."""
        events: list[str] = []
        app = SessionMiddleware(App(Scoped, events), scope, commit=True)
        await call(app, "", events, kind="lifespan")
        assert events == ["lifespan"]

    async def test_cancelled_request_is_removed(
        self, arunner: asyncio.Runner, scope: Scope, Scoped: AsyncScoped, engine: sa.Engine
    ) -> None:
        """A request task cancelled mid-handler is rolled back and its session removed."""
        flushed = asyncio.Event()

        async def slow(scope_: t.Any, receive: t.Any, send: t.Any) -> None:
            session = Scoped()
            session.add(Item(name="a"))
            await session.flush()
            flushed.set()
            await asyncio.sleep(30)

        app = SessionMiddleware(slow, scope, commit=True)
        task = asyncio.create_task(call(app, "/", []))
        await flushed.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert names(engine) == []
        assert scope.keys() == set()

    async def test_commits_sync_and_async_sessions_of_the_unit(
        self,
        arunner: asyncio.Runner,
        scope: Scope,
        Scoped: AsyncScoped,
        engine: sa.Engine,
    ) -> None:
        """A scope may track a sync scoped_session too: both are committed and removed."""
        SyncScoped = scope.scoped_session(sa_orm.sessionmaker(engine))
        sa_signals.install(SyncScoped)
        events: list[str] = []
        try:
            inner = App(Scoped, events)

            async def both(scope_: t.Any, receive: t.Any, send: t.Any) -> None:
                await inner(scope_, receive, send)
                SyncScoped().add(Audit(message="sync"))
                sa_signals.on_commit(lambda: events.append("callback sync"), SyncScoped)

            await call(SessionMiddleware(both, scope, commit=True), "/a/200", events)
        finally:
            sa_signals.uninstall(SyncScoped)
        # Written after the response started, the sync row is committed when the app returns.
        assert events == [
            "callback a",
            "sent http.response.start",
            "sent http.response.body",
            "callback sync",
        ]
        assert names(engine) == ["a"]
        with engine.connect() as connection:
            assert connection.scalar(sa.select(Audit.message)) == "sync"
        assert scope.keys() == set()

    def test_before_response_follows_commit(self, scope: Scope) -> None:
        """before_response defaults to commit; True without commit=True is refused."""
        app = App(t.cast("AsyncScoped", None), [])
        assert SessionMiddleware(app, scope, commit=True).before_response is True
        assert SessionMiddleware(app, scope).before_response is False
        with pytest.raises(ValueError, match="pass commit=True too"):
            SessionMiddleware(app, scope, before_response=True)
