"""SaSignals for Starlette and FastAPI: middleware, dependency, and a real uvicorn server."""

from __future__ import annotations

import asyncio
import collections.abc as c
import socket
import threading
import time
import typing as t

import fastapi
import httpx
import pytest
import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.ext.asyncio as sa_asyncio
import starlette.applications
import starlette.requests
import starlette.responses
import starlette.routing
import starlette.testclient
import uvicorn

import sa_signals
from sa_signals import testing
from sa_signals.contrib.asgi import SessionMiddleware
from sa_signals.contrib.scopes import Scope
from sa_signals.contrib.starlette import SaSignals
from tests.conftest import async_url
from tests.conftest import count
from tests.conftest import DEFERRABLE
from tests.conftest import item_names as names
from tests.models import customers
from tests.models import Item
from tests.models import orders


@pytest.fixture
def request_engine(backend: str, engine: sa.Engine) -> c.Iterator[sa_asyncio.AsyncEngine]:
    """An async engine whose connections never outlive the event loop of a test server."""
    connect_args = {"timeout": 30} if backend == "sqlite" else {}
    new = sa_asyncio.create_async_engine(
        async_url(backend, engine), poolclass=sa.NullPool, connect_args=connect_args
    )
    if backend == "sqlite":

        @sa_event.listens_for(new.sync_engine, "connect")
        def _connect(dbapi_connection: t.Any, record: object) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    yield new
    asyncio.run(new.dispose())


@pytest.fixture
def maker(request_engine: sa_asyncio.AsyncEngine) -> sa_asyncio.async_sessionmaker[t.Any]:
    return sa_asyncio.async_sessionmaker(request_engine)


@pytest.fixture
def uninstall() -> c.Iterator[list[SaSignals]]:
    """Extensions to uninstall after the test."""
    made: list[SaSignals] = []
    yield made
    for db in made:
        sa_signals.uninstall(db.session)


def starlette_app(db: SaSignals, ran: list[str]) -> starlette.applications.Starlette:
    """``POST /items/{name}?status=&fail=`` writes ``name`` and registers a callback."""

    async def create(request: starlette.requests.Request) -> starlette.responses.Response:
        name = request.path_params["name"]
        db.session.add(Item(name=name))
        sa_signals.on_commit(lambda: ran.append(name), db.session)
        await db.session.flush()
        if request.query_params.get("fail"):
            raise RuntimeError("the handler failed")
        status = int(request.query_params.get("status", "201"))
        return starlette.responses.PlainTextResponse(name, status_code=status)

    app = starlette.applications.Starlette(
        routes=[starlette.routing.Route("/items/{name}", create, methods=["POST"])]
    )
    db.init_app(app)
    return app


class TestStarletteMiddleware:
    def test_commits_successful_requests_only(
        self, maker: t.Any, uninstall: list[SaSignals], engine: sa.Engine
    ) -> None:
        """Success commits and runs callbacks; an error status or a raise rolls back."""
        db = SaSignals(maker)
        uninstall.append(db)
        ran: list[str] = []
        app = starlette_app(db, ran)
        with starlette.testclient.TestClient(app, raise_server_exceptions=False) as client:
            assert client.post("/items/a").status_code == 201
            assert client.post("/items/b?status=409").status_code == 409
            assert client.post("/items/c?fail=1").status_code == 500
            assert client.post("/items/d").text == "d"
        assert ran == ["a", "d"]
        assert names(engine) == ["a", "d"]
        assert db.scope.keys() == set()

    def test_commit_failure_is_a_500(
        self, maker: t.Any, uninstall: list[SaSignals], engine: sa.Engine
    ) -> None:
        """A commit that raises is answered 500, not the handler's 201."""
        db = SaSignals(maker, robust=False)
        uninstall.append(db)
        ran: list[str] = []
        app = starlette_app(db, ran)

        def refuse(sender: t.Any, **kwargs: t.Any) -> None:
            raise RuntimeError("refused at commit")

        sa_signals.signals.before_commit.connect(refuse)
        try:
            with starlette.testclient.TestClient(app, raise_server_exceptions=False) as client:
                assert client.post("/items/a").status_code == 500
        finally:
            sa_signals.signals.before_commit.disconnect(refuse)
        assert ran == []
        assert names(engine) == []
        assert db.scope.keys() == set()

    @pytest.mark.backends(*DEFERRABLE)
    @pytest.mark.parametrize(("before_response", "refused"), [(None, 500), (False, 201)])
    def test_deferred_constraint_refused_at_commit(
        self,
        maker: t.Any,
        uninstall: list[SaSignals],
        engine: sa.Engine,
        before_response: bool | None,
        refused: int,
    ) -> None:
        """A COMMIT refused by a deferred foreign key is answered 500 by default, not 201.

        Committing after the response (``before_response=False``) answers 201 for data that was
        never saved: the trade-off of not making the client wait for the commit.
        """
        db = SaSignals(maker, before_response=before_response)
        uninstall.append(db)

        async def create(request: starlette.requests.Request) -> starlette.responses.Response:
            customer = int(request.path_params["customer"])
            await db.session.execute(orders.insert().values(customer_id=customer))
            return starlette.responses.PlainTextResponse("created", status_code=201)

        app = starlette.applications.Starlette(
            routes=[starlette.routing.Route("/orders/{customer}", create, methods=["POST"])]
        )
        db.init_app(app)
        with engine.begin() as connection:
            connection.execute(customers.insert().values(id=1))
        with starlette.testclient.TestClient(app, raise_server_exceptions=False) as client:
            assert client.post("/orders/1").status_code == 201
            assert client.post("/orders/404").status_code == refused
        assert count(engine, orders) == 1
        assert db.scope.keys() == set()

    def test_takes_an_async_scoped_session_on_a_scope(
        self, maker: t.Any, uninstall: list[SaSignals]
    ) -> None:
        """An async_scoped_session keyed by a Scope is used as it is; any other is refused."""
        scope = Scope()
        scoped = sa_asyncio.async_scoped_session(maker, scopefunc=scope)
        db = SaSignals(scoped)
        uninstall.append(db)
        assert db.session is scoped
        assert db.scope is scope
        other = sa_asyncio.async_scoped_session(maker, scopefunc=asyncio.current_task)
        with pytest.raises(TypeError, match="is not keyed by a Scope"):
            SaSignals(other)
        with pytest.raises(TypeError, match="takes an async_sessionmaker"):
            SaSignals(t.cast("t.Any", object()))
        with pytest.raises(ValueError, match="pass commit=True too"):
            SaSignals(maker, commit=False, before_response=True)

    def test_commits_before_the_response_unless_told_otherwise(
        self, maker: t.Any, uninstall: list[SaSignals]
    ) -> None:
        """before_response defaults to commit: True when committing, False otherwise."""
        db = SaSignals(maker)
        uninstall.append(db)
        assert db.before_response is True
        uncommitted = SaSignals(sa_asyncio.async_sessionmaker(maker.kw["bind"]), commit=False)
        uninstall.append(uncommitted)
        assert uncommitted.before_response is False

    def test_given_the_app_adds_its_middleware(
        self, maker: t.Any, uninstall: list[SaSignals]
    ) -> None:
        """SaSignals(factory, app) adds the session middleware with its settings."""
        app = starlette.applications.Starlette()
        db = SaSignals(maker, app, before_response=False)
        uninstall.append(db)
        [middleware] = app.user_middleware
        assert middleware.cls is SessionMiddleware
        assert middleware.args == (db.scope,)
        assert middleware.kwargs == {"commit": True, "before_response": False}


def fastapi_app(
    db: SaSignals, ran: list[str], *, middleware: bool, **depends: t.Any
) -> fastapi.FastAPI:
    """``POST /items/{name}?fail=``: writes through ``Depends(db.dependency)``."""
    app = fastapi.FastAPI()
    if middleware:
        db.init_app(app)
    dependency = fastapi.Depends(db.dependency, **depends)

    @app.post("/items/{name}", status_code=201)
    async def create(
        name: str, fail: str = "", session: sa_asyncio.AsyncSession = dependency
    ) -> dict[str, object]:
        session.add(Item(name=name))
        sa_signals.on_commit(lambda: ran.append(name), session)
        await session.flush()
        if fail == "http":
            raise fastapi.HTTPException(409, "conflict")
        if fail == "raise":
            raise RuntimeError("the handler failed")
        return {"name": name, "same": session is db.session()}

    @app.get("/stream/{name}")
    async def stream(
        name: str, session: sa_asyncio.AsyncSession = dependency
    ) -> starlette.responses.StreamingResponse:
        session.add(Item(name=name))
        sa_signals.on_commit(lambda: ran.append(name), session)
        await session.flush()

        async def chunks() -> c.AsyncIterator[bytes]:
            for _ in range(100):  # 5 s at most, if the disconnect went unnoticed
                yield b"."
                await asyncio.sleep(0.05)

        return starlette.responses.StreamingResponse(chunks())

    return app


class TestFastAPIDependency:
    @pytest.mark.parametrize("depends", [{}, {"scope": "function"}])
    def test_dependency_scopes_a_session_without_the_middleware(
        self, maker: t.Any, uninstall: list[SaSignals], engine: sa.Engine, depends: t.Any
    ) -> None:
        """The dependency commits when the handler returns and rolls back when it raises."""
        db = SaSignals(maker)
        uninstall.append(db)
        ran: list[str] = []
        app = fastapi_app(db, ran, middleware=False, **depends)
        with starlette.testclient.TestClient(app, raise_server_exceptions=False) as client:
            assert client.post("/items/a").json() == {"name": "a", "same": True}
            assert client.post("/items/b?fail=http").status_code == 409
            assert client.post("/items/c?fail=raise").status_code == 500
        assert ran == ["a"]
        assert names(engine) == ["a"]
        assert db.scope.keys() == set()

    def test_dependency_without_commit_commits_nothing(
        self, maker: t.Any, uninstall: list[SaSignals], engine: sa.Engine
    ) -> None:
        """With commit=False the dependency only scopes and removes the session."""
        db = SaSignals(maker, commit=False)
        uninstall.append(db)
        ran: list[str] = []
        app = fastapi_app(db, ran, middleware=False)
        with starlette.testclient.TestClient(app) as client:
            assert client.post("/items/a").status_code == 201
        assert ran == []
        assert names(engine) == []
        assert db.scope.keys() == set()

    def test_dependency_yields_the_middleware_session(
        self, maker: t.Any, uninstall: list[SaSignals], engine: sa.Engine
    ) -> None:
        """Under the middleware the dependency is the request's session, committed by it."""
        db = SaSignals(maker)
        uninstall.append(db)
        ran: list[str] = []
        app = fastapi_app(db, ran, middleware=True)
        with starlette.testclient.TestClient(app, raise_server_exceptions=False) as client:
            assert client.post("/items/a").json() == {"name": "a", "same": True}
            assert client.post("/items/b?fail=http").status_code == 409
            assert client.post("/items/c?fail=raise").status_code == 500
        assert ran == ["a"]
        assert names(engine) == ["a"]
        assert db.scope.keys() == set()


class TestInTheTransactionalTestMode:
    @pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "dependency"])
    async def test_each_request_has_its_own_session(
        self,
        aengine: sa_asyncio.AsyncEngine,
        uninstall: list[SaSignals],
        engine: sa.Engine,
        middleware: bool,
    ) -> None:
        """Requests sent through httpx's ASGITransport each get their own AsyncSession on the
        test's connection, as in production; everything is rolled back at the end."""
        db = SaSignals(sa_asyncio.async_sessionmaker(aengine))
        uninstall.append(db)
        ran: list[str] = []
        app = fastapi_app(db, ran, middleware=middleware)
        async with testing.transactional(db.session) as connection, asgi_client(app) as client:
            assert (await client.post("/items/a")).status_code == 201
            assert (await client.post("/items/b?fail=http")).status_code == 409
            assert (await client.post("/items/c")).status_code == 201
            assert ran == ["a", "c"]
            query = sa.select(Item.name).order_by(Item.name)
            assert list(await connection.scalars(query)) == ["a", "c"]
        assert names(engine) == []
        assert db.scope.keys() == set()

    @pytest.mark.backends("sqlite", "postgresql")
    async def test_commit_failing_on_a_deferred_constraint_is_a_500(
        self, aengine: sa_asyncio.AsyncEngine, uninstall: list[SaSignals]
    ) -> None:
        """A deferred foreign key broken by a request fails its commit in the test as in
        production: a 500 before the response, no callback; the next request is served."""
        db = SaSignals(sa_asyncio.async_sessionmaker(aengine), before_response=True)
        uninstall.append(db)
        sent: list[int] = []

        async def order(request: starlette.requests.Request) -> starlette.responses.Response:
            customer = int(request.path_params["customer"])
            await db.session.execute(orders.insert().values(customer_id=customer))
            sa_signals.on_commit(lambda: sent.append(customer), db.session)
            return starlette.responses.PlainTextResponse("created", status_code=201)

        app = starlette.applications.Starlette(
            routes=[starlette.routing.Route("/orders/{customer}", order, methods=["POST"])]
        )
        db.init_app(app)
        async with testing.transactional(db.session) as connection, asgi_client(app) as client:
            await connection.execute(customers.insert().values(id=1))
            assert (await client.post("/orders/404")).status_code == 500
            assert (await client.post("/orders/1")).status_code == 201
            assert sent == [1]
        assert db.scope.keys() == set()


def asgi_client(app: t.Any) -> httpx.AsyncClient:
    """A client that sends requests to ``app`` in the test's own event loop and task."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TestUvicorn:
    @pytest.mark.parametrize("before_response", [None, False])
    def test_concurrent_requests_under_uvicorn(
        self,
        maker: t.Any,
        uninstall: list[SaSignals],
        engine: sa.Engine,
        before_response: bool | None,
    ) -> None:
        """Concurrent requests on a real server: each removed, committed callbacks run once.

        Requests that fail are rolled back. A client that disconnects mid-response finds its
        request committed when the response started (the default), or rolled back when the
        commit was to follow the response.
        """
        db = SaSignals(maker, before_response=before_response)
        uninstall.append(db)
        ran: list[str] = []
        app = fastapi_app(db, ran, middleware=True)
        port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="critical", lifespan="off"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while not server.started:
                assert time.monotonic() < deadline, "uvicorn did not start in 10 s"
                time.sleep(0.02)
            kinds = ["", "http", "raise"]
            paths = [f"/items/r{i}?fail={kinds[i % 3]}" for i in range(30)]

            async def send_all() -> list[int]:
                base_url = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(base_url=base_url, timeout=20) as client:
                    responses = await asyncio.gather(*(client.post(path) for path in paths))
                # A client that goes away in the middle of a streamed response. A client of
                # its own: the server closes the connections of the failed requests, which the
                # first client could otherwise pick again from its pool.
                async with (
                    httpx.AsyncClient(base_url=base_url, timeout=20) as client,
                    client.stream("GET", "/stream/gone") as streamed,
                ):
                    assert streamed.status_code == 200
                    async for chunk in streamed.aiter_raw():
                        assert chunk.startswith(b".")
                        break
                return [response.status_code for response in responses]

            statuses = asyncio.run(asyncio.wait_for(send_all(), 60))
        finally:
            server.should_exit = True
            thread.join(timeout=10)
        assert not thread.is_alive()
        assert server.started  # the assertions below are about a server that ran
        assert statuses == [[201, 409, 500][i % 3] for i in range(30)]
        committed = sorted(f"r{i}" for i in range(0, 30, 3))
        if before_response is None:
            committed = sorted(["gone", *committed])
        assert sorted(ran) == committed  # each exactly once, the failed ones never
        assert names(engine) == committed
        assert db.scope.keys() == set()
