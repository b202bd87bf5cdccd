"""Shared fixtures: engines over SQLite, PostgreSQL and MariaDB, installed sessions, a recorder.

SQLite always runs. PostgreSQL and MariaDB run when their URL is given in
``SA_SIGNALS_TEST_POSTGRESQL_URL`` / ``SA_SIGNALS_TEST_MARIADB_URL``; a server that was named but
cannot be reached fails the run instead of skipping it.
"""

from __future__ import annotations

import collections.abc as c
import os
import typing as t

import hypothesis
import pytest
import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

import sa_signals
from tests.models import Base
from tests.models import deferred_metadata

# CI must not fail on an example that no earlier run saw: there, every run draws the same ones.
hypothesis.settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")

URL_VARIABLES = {
    "postgresql": "SA_SIGNALS_TEST_POSTGRESQL_URL",
    "mariadb": "SA_SIGNALS_TEST_MARIADB_URL",
}


def configured_backends() -> list[str]:
    return ["sqlite"] + [name for name, var in URL_VARIABLES.items() if os.environ.get(var)]


DEFERRABLE = ("sqlite", "postgresql")
"""Backends with DEFERRABLE INITIALLY DEFERRED constraints."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    backends = configured_backends()
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None:
        backends = [name for name in backends if name in marker.args]
    metafunc.parametrize("backend", backends, scope="session")


def _sqlite_engine(path: str) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 2})

    # pysqlite's own transaction handling breaks SAVEPOINT: let SQLAlchemy emit BEGIN itself.
    @sa_event.listens_for(engine, "connect")
    def _connect(dbapi_connection: t.Any, record: object) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    @sa_event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


_engines: dict[str, sa.Engine] = {}


@pytest.fixture(scope="session")
def engine(backend: str, tmp_path_factory: pytest.TempPathFactory) -> c.Iterator[sa.Engine]:
    """An engine for ``backend`` with the test tables created (once per run)."""
    if backend not in _engines:
        if backend == "sqlite":
            new = _sqlite_engine(str(tmp_path_factory.mktemp("db") / "test.db"))
        else:
            new = sa.create_engine(os.environ[URL_VARIABLES[backend]], pool_size=10)
        with new.connect() as connection:  # fails here, not skips, if the server is down
            connection.execute(sa.text("SELECT 1"))
        Base.metadata.drop_all(new)
        if backend in DEFERRABLE:
            deferred_metadata.drop_all(new)
            deferred_metadata.create_all(new)
        Base.metadata.create_all(new)
        _engines[backend] = new
    return _engines[backend]


@pytest.fixture(scope="session", autouse=True)
def _dispose_engines() -> c.Iterator[None]:
    yield
    for engine in _engines.values():
        engine.dispose()


@pytest.fixture(autouse=True)
def _clean_rows(request: pytest.FixtureRequest) -> c.Iterator[None]:
    """Empty every table after each test that used a database."""
    yield
    if "engine" not in request.fixturenames:
        return
    engine: sa.Engine = request.getfixturevalue("engine")
    with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())
        if engine.dialect.name in DEFERRABLE:
            for table in reversed(deferred_metadata.sorted_tables):
                connection.execute(table.delete())


@pytest.fixture
def Session(engine: sa.Engine) -> c.Iterator[sa_orm.scoped_session[sa_orm.Session]]:
    """An installed ``scoped_session``; removed and uninstalled afterwards."""
    scoped = sa_orm.scoped_session(sa_orm.sessionmaker(engine))
    sa_signals.install(scoped)
    yield scoped
    scoped.remove()
    sa_signals.uninstall(scoped)


@pytest.fixture
def session(Session: sa_orm.scoped_session[sa_orm.Session]) -> sa_orm.Session:
    """The current session of the installed ``Session``."""
    return Session()


class Recorder:
    """Makes callbacks that record their name when run; ``assert_done`` checks what ran."""

    def __init__(self) -> None:
        self.done: list[object] = []

    def do(self, name: object) -> c.Callable[[], None]:
        def callback() -> None:
            self.done.append(name)

        callback.__qualname__ = f"do({name!r})"
        return callback

    def fail(self, name: object, exc: Exception | None = None) -> c.Callable[[], None]:
        def callback() -> None:
            self.done.append(name)
            raise exc or RuntimeError(f"callback {name} failed")

        callback.__qualname__ = f"fail({name!r})"
        return callback

    def assert_done(self, expected: list[object]) -> None:
        assert self.done == expected


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


class Connector:
    """Connects receivers for one test and disconnects them all at the end."""

    def __init__(self) -> None:
        self._connected: list[tuple[t.Any, t.Any]] = []

    def __call__(self, signal: t.Any, receiver: t.Any, sender: t.Any = None) -> t.Any:
        if sender is None:
            signal.connect(receiver, weak=False)
        else:
            signal.connect(receiver, sender=sender, weak=False)
        self._connected.append((signal, receiver))
        return receiver

    def record(self, signal: t.Any, sender: t.Any = None) -> list[tuple[t.Any, dict[str, t.Any]]]:
        """Connect a receiver that records ``(sender, kwargs)`` of every send."""
        calls: list[tuple[t.Any, dict[str, t.Any]]] = []

        def receiver(sender: t.Any, **kwargs: t.Any) -> None:
            calls.append((sender, kwargs))

        self(signal, receiver, sender)
        return calls

    def disconnect_all(self) -> None:
        for signal, receiver in self._connected:
            signal.disconnect(receiver)


@pytest.fixture
def connect() -> c.Iterator[Connector]:
    connector = Connector()
    yield connector
    connector.disconnect_all()
