"""SaSignals: a session per Flask application context, and Flask-SQLAlchemy's db.session."""

from __future__ import annotations

import collections.abc as c
import concurrent.futures
import contextlib
import importlib
import sys
import threading
import typing as t
import urllib.error
import urllib.request

import flask
import flask_sqlalchemy
import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
import werkzeug.serving

import sa_signals
from sa_signals import signals
from sa_signals import testing
from sa_signals.contrib.flask import app_context_key
from sa_signals.contrib.flask import SaSignals
from tests.conftest import item_names as names
from tests.conftest import Recorder
from tests.models import Audit
from tests.models import customers
from tests.models import Item
from tests.models import orders


class Views:
    """A Flask app whose views use ``session`` and register on_commit callbacks."""

    def __init__(self, session: sa_orm.scoped_session[t.Any], recorder: Recorder) -> None:
        self.app = flask.Flask(__name__)
        self.session = session
        self.recorder = recorder
        self.seen: list[sa_orm.Session] = []
        self.lock = threading.Lock()
        app = self.app
        app.before_request(self.remember)
        app.add_url_rule("/items/<name>", view_func=self.create, methods=["POST"])
        app.add_url_rule("/fail/<name>", view_func=self.fail, methods=["POST"])
        app.add_url_rule("/abort/<name>", view_func=self.abort, methods=["POST"])

    def remember(self) -> None:
        with self.lock:
            self.seen.append(self.session())

    def add(self, name: str) -> None:
        self.session.add(Item(name=name))
        sa_signals.on_commit(self.recorder.do(name), self.session)

    def create(self, name: str) -> tuple[str, int]:
        self.add(name)
        if flask.request.args.get("commit"):
            self.session.commit()
        return "created", 201

    def fail(self, name: str) -> str:
        self.add(name)
        self.session.flush()
        raise RuntimeError("the view failed")

    def abort(self, name: str) -> str:
        self.add(name)
        self.session.flush()
        flask.abort(409)

    def assert_all_removed(self) -> None:
        """No registry key is left, and every session seen is closed."""
        assert self.session.registry.registry == {}
        assert not any(session.in_transaction() for session in self.seen)


@pytest.fixture(params=[True, False], ids=["commit", "no-commit"])
def commit(request: pytest.FixtureRequest) -> bool:
    return t.cast("bool", request.param)


@pytest.fixture
def views(engine: sa.Engine, recorder: Recorder, commit: bool) -> c.Iterator[Views]:
    """The app, with SaSignals over a sessionmaker; commits after requests if ``commit``."""
    maker = sa_orm.sessionmaker(engine)
    ext = SaSignals(maker, commit=commit)
    views = Views(ext.session, recorder)
    ext.init_app(views.app)
    yield views
    sa_signals.uninstall(ext.session)


class TestCommitAfterRequest:
    @pytest.mark.parametrize("commit", [True], indirect=True)
    def test_commits_successful_requests(
        self, views: Views, engine: sa.Engine, recorder: Recorder
    ) -> None:
        """Each successful request is committed; its callbacks ran once before the response."""
        client = views.app.test_client()
        assert client.post("/items/a").status_code == 201
        assert client.post("/items/b").status_code == 201
        assert names(engine) == ["a", "b"]
        recorder.assert_done(["a", "b"])
        assert len({id(session) for session in views.seen}) == 2
        views.assert_all_removed()

    @pytest.mark.parametrize("commit", [True], indirect=True)
    def test_failing_request_never_commits(
        self, views: Views, engine: sa.Engine, recorder: Recorder
    ) -> None:
        """A view that raises gets a 500; its work is rolled back and its callbacks never run."""
        response = views.app.test_client().post("/fail/a")
        assert response.status_code == 500
        assert names(engine) == []
        recorder.assert_done([])
        views.assert_all_removed()

    @pytest.mark.parametrize("commit", [True], indirect=True)
    def test_error_response_never_commits(
        self, views: Views, engine: sa.Engine, recorder: Recorder
    ) -> None:
        """A response with a status of 400 or more is not committed."""
        assert views.app.test_client().post("/abort/a").status_code == 409
        assert names(engine) == []
        recorder.assert_done([])
        views.assert_all_removed()

    @pytest.mark.parametrize("commit", [True], indirect=True)
    def test_failing_commit_becomes_a_500(
        self, views: Views, engine: sa.Engine, recorder: Recorder
    ) -> None:
        """A commit that fails turns the response into a 500 and runs no callback."""
        client = views.app.test_client()
        assert client.post("/items/dup").status_code == 201
        assert client.post("/items/dup").status_code == 500
        assert names(engine) == ["dup"]
        recorder.assert_done(["dup"])
        views.assert_all_removed()

    @pytest.mark.parametrize("commit", [False], indirect=True)
    def test_does_not_commit_unless_asked(
        self, views: Views, engine: sa.Engine, recorder: Recorder
    ) -> None:
        """Without commit=True, what the view did not commit is rolled back at teardown."""
        client = views.app.test_client()
        assert client.post("/items/a").status_code == 201
        assert client.post("/items/b?commit=1").status_code == 201
        assert names(engine) == ["b"]
        recorder.assert_done(["b"])
        views.assert_all_removed()

    def test_mixed_requests_run_committed_callbacks_once(
        self, views: Views, engine: sa.Engine, recorder: Recorder, commit: bool
    ) -> None:
        """Over many requests, exactly the committed ones ran their callback, once each."""
        client = views.app.test_client()
        expected = []
        for number in range(12):
            name = f"item-{number:02}"
            if number % 3 == 0:
                assert client.post(f"/fail/{name}").status_code == 500
            elif number % 3 == 1:
                assert client.post(f"/abort/{name}").status_code == 409
            else:
                assert client.post(f"/items/{name}?commit=1").status_code == 201
                expected.append(name)
        assert names(engine) == expected
        recorder.assert_done(expected)
        assert len(views.seen) == 12
        views.assert_all_removed()


def test_non_robust_callback_failure_is_a_500(engine: sa.Engine) -> None:
    """A failing non-robust callback turns the response into a 500; the data stays."""
    ext = SaSignals(sa_orm.sessionmaker(engine), commit=True)
    app = flask.Flask(__name__)
    app.logger.disabled = True
    ext.init_app(app)

    def explode() -> None:
        raise LookupError("callback failed")

    @app.post("/items/<name>")
    def create(name: str) -> str:
        ext.session.add(Item(name=name))
        sa_signals.on_commit(explode, ext.session, robust=False)
        return "created"

    try:
        assert app.test_client().post("/items/a").status_code == 500
    finally:
        sa_signals.uninstall(ext.session)
    assert names(engine) == ["a"]
    assert ext.session.registry.registry == {}


class TestApplicationContext:
    @pytest.mark.parametrize("commit", [False], indirect=True)
    def test_app_context_without_a_request(self, views: Views, engine: sa.Engine) -> None:
        """A bare application context (a CLI command) has its own session, removed at exit."""
        with views.app.app_context():
            views.session.add(Item(name="cli"))
            views.session.commit()
            assert views.session.registry.registry != {}
        assert names(engine) == ["cli"]
        views.assert_all_removed()

    @pytest.mark.parametrize("commit", [False], indirect=True)
    def test_outside_an_app_context_raises(self, views: Views) -> None:
        """The session is bound to an application context."""
        with pytest.raises(RuntimeError, match="application context"):
            views.session()
        with pytest.raises(RuntimeError, match="application context"):
            app_context_key()

    @pytest.mark.parametrize("commit", [False], indirect=True)
    def test_registers_once_per_app(self, views: Views) -> None:
        """init_app() on an app that already has the extension is refused."""
        ext = views.app.extensions["sa_signals"]
        with pytest.raises(RuntimeError, match="already registered"):
            ext.init_app(views.app)

    def test_rejects_other_factories(self, engine: sa.Engine) -> None:
        """A session instance is not a factory."""
        with pytest.raises(TypeError, match="needs a sessionmaker or a scoped_session"):
            SaSignals(sa_orm.Session(engine))  # type: ignore[arg-type]


class TestInTheTransactionalTestMode:
    @pytest.mark.parametrize("commit", [True], indirect=True)
    @pytest.mark.parametrize("pushed", [False, True], ids=["bare", "app-context-pushed"])
    def test_each_request_has_its_own_session(
        self, views: Views, engine: sa.Engine, recorder: Recorder, pushed: bool
    ) -> None:
        """Test-client requests each get their own session on the test's Connection, as in
        production, also inside an application context the test pushed: a failed request
        leaves nothing to the next; everything is rolled back at the end."""
        with testing.transactional(views.session) as connection, contextlib.ExitStack() as stack:
            if pushed:
                stack.enter_context(views.app.app_context())
            client = views.app.test_client()
            assert client.post("/items/a").status_code == 201
            assert client.post("/fail/b").status_code == 500
            assert client.post("/items/c").status_code == 201
            recorder.assert_done(["a", "c"])
            assert list(connection.scalars(sa.select(Item.name).order_by(Item.name))) == ["a", "c"]
            assert len({id(session) for session in views.seen}) == 3
            assert all(session.bind is connection for session in views.seen)
        assert names(engine) == []
        views.assert_all_removed()

    @pytest.mark.parametrize("commit", [False], indirect=True)
    def test_capture_lists_the_callbacks_of_every_request(
        self, views: Views, recorder: Recorder
    ) -> None:
        """Capturing on the extension's session outside a request sees each request's session:
        the callbacks of the one that committed are listed, not those rolled back."""
        with (
            testing.transactional(views.session),
            testing.capture_on_commit(views.session) as callbacks,
        ):
            client = views.app.test_client()
            assert client.post("/items/a").status_code == 201  # never committed
            assert client.post("/items/b?commit=1").status_code == 201
        assert len(callbacks) == 1
        recorder.assert_done(["b"])

    @pytest.mark.backends("sqlite", "postgresql")
    def test_commit_failing_on_a_deferred_constraint_is_a_500(self, engine: sa.Engine) -> None:
        """A deferred foreign key broken by a request fails its commit in the test as in
        production: a 500, no callback; the next request is served."""
        ext = SaSignals(sa_orm.sessionmaker(engine), commit=True)
        app = flask.Flask(__name__)
        app.logger.disabled = True
        ext.init_app(app)
        sent: list[int] = []

        @app.post("/orders/<int:customer>")
        def order(customer: int) -> tuple[str, int]:
            ext.session.execute(orders.insert().values(customer_id=customer))
            sa_signals.on_commit(lambda: sent.append(customer), ext.session)
            return "created", 201

        try:
            with testing.transactional(ext.session) as connection:
                connection.execute(customers.insert().values(id=1))
                client = app.test_client()
                assert client.post("/orders/404").status_code == 500
                assert client.post("/orders/1").status_code == 201
                assert sent == [1]
        finally:
            sa_signals.uninstall(ext.session)
        assert ext.session.registry.registry == {}


@pytest.mark.parametrize("commit", [True], indirect=True)
def test_threaded_server_concurrent_requests(
    views: Views, engine: sa.Engine, recorder: Recorder
) -> None:
    """Under a threaded server, concurrent requests each commit or fail on their own."""
    views.app.logger.disabled = True
    server = werkzeug.serving.make_server("127.0.0.1", 0, views.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"

    def post(path: str) -> int:
        request = urllib.request.Request(base + path, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return t.cast("int", response.status)
        except urllib.error.HTTPError as error:
            return error.code

    paths = [f"/{'fail' if n % 4 == 0 else 'items'}/item-{n:02}" for n in range(24)]
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(post, paths, timeout=60))
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
    expected = sorted(p.rsplit("/", 1)[1] for p in paths if p.startswith("/items"))
    assert statuses == [500 if p.startswith("/fail") else 201 for p in paths]
    assert names(engine) == expected
    assert sorted(t.cast("list[str]", recorder.done)) == expected
    assert len(views.seen) == 24
    views.assert_all_removed()


@pytest.fixture
def db_app(engine: sa.Engine) -> c.Iterator[tuple[flask.Flask, flask_sqlalchemy.SQLAlchemy]]:
    """A Flask-SQLAlchemy app over the test database."""
    app = flask.Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = engine.url.render_as_string(hide_password=False)
    db = flask_sqlalchemy.SQLAlchemy(app)
    yield app, db
    sa_signals.uninstall(db.session)
    with app.app_context():
        db.engine.dispose()


class TestFlaskSQLAlchemy:
    def test_installing_db_session_just_works(
        self, db_app: tuple[flask.Flask, flask_sqlalchemy.SQLAlchemy], engine: sa.Engine
    ) -> None:
        """install(db.session): callbacks run after the view's commit, in a distinct session."""
        app, db = db_app
        sa_signals.install(db.session)
        distinct: list[bool] = []

        @app.post("/items/<name>")
        def create(name: str) -> str:
            request_session = db.session()

            def audit() -> None:
                distinct.append(db.session() is not request_session)
                db.session.add(Audit(message=f"created {name}"))

            db.session.add(Item(name=name))
            sa_signals.on_commit(audit, db.session)
            db.session.commit()
            return "ok"

        client = app.test_client()
        assert client.post("/items/a").text == "ok"
        assert client.post("/items/b").text == "ok"
        assert distinct == [True, True]
        with engine.connect() as connection:
            messages = connection.scalars(sa.select(Audit.message).order_by(Audit.message))
            assert list(messages) == ["created a", "created b"]
        assert db.session.registry.registry == {}

    def test_extension_over_db_session(
        self,
        db_app: tuple[flask.Flask, flask_sqlalchemy.SQLAlchemy],
        engine: sa.Engine,
        recorder: Recorder,
    ) -> None:
        """SaSignals(db.session, commit=True) commits good requests and drops failing ones."""
        app, db = db_app
        views = Views(db.session, recorder)
        views.app = app
        SaSignals(db.session, app, commit=True)
        app.before_request(views.remember)
        app.add_url_rule("/items/<name>", view_func=views.create, methods=["POST"])
        app.add_url_rule("/fail/<name>", view_func=views.fail, methods=["POST"])
        client = app.test_client()
        assert client.post("/items/a").status_code == 201
        assert client.post("/fail/b").status_code == 500
        assert client.post("/items/c").status_code == 201
        assert names(engine) == ["a", "c"]
        recorder.assert_done(["a", "c"])
        views.assert_all_removed()


@pytest.mark.skipif(
    not hasattr(signals, "models_committed"), reason="needs signals.models_committed"
)
@pytest.mark.backends("postgresql", "mariadb")
def test_models_committed_over_db_session(
    db_app: tuple[flask.Flask, flask_sqlalchemy.SQLAlchemy], connect: t.Any
) -> None:
    """The documented migration: net committed rows, reported once after the real COMMIT."""
    app, db = db_app
    sa_signals.install(db.session)
    calls = connect.record(signals.models_committed)
    with app.app_context():
        db.session.add(Item(name="outer"))
        db.session.flush()
        with db.session.begin_nested():
            db.session.add(Item(name="released"))
        assert calls == []
        savepoint = db.session.begin_nested()
        db.session.add(Item(name="dropped"))
        db.session.flush()
        savepoint.rollback()
        db.session.scalars(sa.select(Item).where(Item.name == "outer")).one().value = 5
        db.session.commit()
    assert len(calls) == 1
    sender, kwargs = calls[0]
    assert isinstance(sender, sa_orm.Session)
    changes = sorted((change.operation, change.identity) for change in kwargs["changes"])
    assert [operation for operation, _ in changes] == ["insert", "insert"]


def test_import_without_flask_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the module without Flask installed says which extra to install."""
    monkeypatch.setitem(sys.modules, "flask", None)
    monkeypatch.delitem(sys.modules, "sa_signals.contrib.flask")
    with pytest.raises(ImportError, match=r'pip install "sa-signals\[flask\]"'):
        importlib.import_module("sa_signals.contrib.flask")
