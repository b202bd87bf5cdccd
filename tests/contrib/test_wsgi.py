"""SessionMiddleware: one session per WSGI request, removed when the response is closed."""

from __future__ import annotations

import collections.abc as c
import threading
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
import werkzeug.test

import sa_signals
from sa_signals.contrib.scopes import Scope
from sa_signals.contrib.wsgi import SessionMiddleware
from tests.conftest import item_names as names
from tests.models import Item

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIEnvironment

Scoped = sa_orm.scoped_session[sa_orm.Session]


class App:
    """A bare WSGI application: ``/commit/<name>``, ``/flush/<name>``, ``/fail``, ``/stream``."""

    def __init__(self, Session: Scoped, recorder: t.Any) -> None:
        self.Session = Session
        self.recorder = recorder
        self.sessions: list[sa_orm.Session] = []

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> c.Iterable[bytes]:
        _, action, *rest = environ["PATH_INFO"].split("/")
        session = self.Session()
        self.sessions.append(session)
        if action == "fail":
            session.add(Item(name="failed"))
            sa_signals.on_commit(self.recorder.do("failed"), session)
            session.flush()
            raise RuntimeError("the view failed")
        if action == "stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return self.stream()
        session.add(Item(name=rest[0]))
        sa_signals.on_commit(self.recorder.do(rest[0]), session)
        if action == "commit":
            session.commit()
        else:
            session.flush()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def stream(self) -> c.Iterator[bytes]:
        # The body is produced after the application returned: the session is still there.
        yield b"first "
        self.Session.add(Item(name="streamed"))
        self.Session.commit()
        yield str(self.Session() is self.sessions[-1]).encode()


@pytest.fixture
def scope() -> Scope:
    return Scope()


@pytest.fixture
def ScopedSession(scope: Scope, engine: sa.Engine) -> c.Iterator[Scoped]:
    scoped = scope.scoped_session(sa_orm.sessionmaker(engine))
    sa_signals.install(scoped)
    yield scoped
    sa_signals.uninstall(scoped)


@pytest.fixture
def app(ScopedSession: Scoped, recorder: t.Any) -> App:
    return App(ScopedSession, recorder)


@pytest.fixture
def client(app: App, scope: Scope) -> werkzeug.test.Client:
    return werkzeug.test.Client(SessionMiddleware(app, scope))


class TestSessionMiddleware:
    def test_each_request_has_its_session_removed(
        self, client: werkzeug.test.Client, app: App, scope: Scope, recorder: t.Any
    ) -> None:
        """Every request gets a fresh session, closed and unkeyed once the response is closed."""
        for name in ("a", "b", "c"):
            assert client.get(f"/commit/{name}").text == "ok"
            assert scope.keys() == set()
        assert len({id(session) for session in app.sessions}) == 3
        assert not any(session.in_transaction() for session in app.sessions)
        recorder.assert_done(["a", "b", "c"])

    def test_never_commits_for_the_app(
        self, client: werkzeug.test.Client, engine: sa.Engine, recorder: t.Any, scope: Scope
    ) -> None:
        """What the application did not commit is rolled back; its callbacks never run."""
        assert client.get("/flush/a").status_code == 200
        assert names(engine) == []
        recorder.assert_done([])
        assert scope.keys() == set()

    def test_failing_request_is_rolled_back_and_removed(
        self,
        client: werkzeug.test.Client,
        engine: sa.Engine,
        recorder: t.Any,
        scope: Scope,
        app: App,
    ) -> None:
        """An application error propagates; the session is rolled back and removed."""
        with pytest.raises(RuntimeError, match="the view failed"):
            client.get("/fail")
        assert scope.keys() == set()
        assert not app.sessions[-1].in_transaction()
        assert names(engine) == []
        recorder.assert_done([])
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    def test_streamed_body_keeps_its_session(
        self, client: werkzeug.test.Client, engine: sa.Engine, scope: Scope
    ) -> None:
        """A streamed body uses the request's session; it is removed when the body is closed."""
        response = client.get("/stream", buffered=False)
        assert scope.keys() != set()
        assert response.get_data() == b"first True"
        response.close()
        assert scope.keys() == set()
        assert names(engine) == ["streamed"]

    def test_body_close_is_forwarded(self, scope: Scope, ScopedSession: Scoped) -> None:
        """The application's own close() runs, then the unit of work ends."""
        closed: list[bool] = []

        class Body:
            def __iter__(self) -> c.Iterator[bytes]:
                ScopedSession()
                yield b"x"

            def close(self) -> None:
                closed.append(scope.keys() != set())

        def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Body:
            start_response("200 OK", [])
            return Body()

        response = werkzeug.test.Client(SessionMiddleware(wsgi, scope)).get("/")
        assert response.get_data() == b"x"
        response.close()
        assert closed == [True]
        assert scope.keys() == set()

    def test_closed_from_another_thread(
        self, client: werkzeug.test.Client, scope: Scope, engine: sa.Engine
    ) -> None:
        """A server that closes the response in another thread still ends the unit."""
        response = client.get("/stream", buffered=False)
        assert response.get_data() == b"first True"
        closer = threading.Thread(target=response.close)
        closer.start()
        closer.join(timeout=10)
        assert scope.keys() == set()
        assert names(engine) == ["streamed"]
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
