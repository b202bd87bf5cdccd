"""Shared fixtures: engines over SQLite, PostgreSQL and MariaDB, installed sessions, a recorder.

SQLite always runs. PostgreSQL and MariaDB run when their URL is given in
``SA_SIGNALS_TEST_POSTGRESQL_URL`` / ``SA_SIGNALS_TEST_MARIADB_URL``; a server that was named but
cannot be reached fails the run instead of skipping it.

Tests that take the ``flavour`` fixture (directly, or through ``AnySession`` / ``any_session``)
run twice: ``sync`` with a ``scoped_session``, and ``async`` with an ``async_scoped_session`` over
the backend's async driver (aiosqlite, asyncpg, aiomysql; the URL is derived from the sync one,
or given in ``SA_SIGNALS_TEST_POSTGRESQL_ASYNC_URL`` / ``SA_SIGNALS_TEST_MARIADB_ASYNC_URL``).
An async-flavoured test body runs inside one asyncio task, in SQLAlchemy's greenlet, so it
writes ``flavour.aw(session.commit())`` for both flavours.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextlib
import inspect
import logging
import os
import pathlib
import typing as t

import hypothesis
import pytest
import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm
import sqlalchemy.pool as sa_pool
import sqlalchemy.util.concurrency as sa_concurrency

import sa_signals
from tests import not_installed
from tests.models import Base
from tests.models import deferred_metadata
from tests.models import Item

pytest_plugins = ["tests.leaks"]

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


ASYNC_URL_VARIABLES = {
    "postgresql": "SA_SIGNALS_TEST_POSTGRESQL_ASYNC_URL",
    "mariadb": "SA_SIGNALS_TEST_MARIADB_ASYNC_URL",
}

ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
"""The async driver for each backend; MySQL-family URLs use ``mysql+aiomysql``."""


SERVICE_VARIABLES = {
    "redis": "SA_SIGNALS_TEST_REDIS_URL",
    "rabbitmq": "SA_SIGNALS_TEST_BROKER_URL",
    "valgrind": "SA_SIGNALS_TEST_VALGRIND",
}
"""Servers (and tools) that tests marked ``services(...)`` need, each named by its variable: a
URL, or any value for valgrind."""


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to start when a named database server's driver is not installed."""
    for backend in configured_backends()[1:]:
        url = sa.make_url(os.environ[URL_VARIABLES[backend]])
        for each in (url, async_url(backend, url)):
            try:
                each.get_dialect().import_dbapi()
            except ImportError as exc:
                msg = (
                    f"{URL_VARIABLES[backend]} names a {backend} server, but the driver of"
                    f" {each.drivername} is missing ({exc}):"
                    ' pip install -e ".[test-servers]"'
                )
                raise pytest.UsageError(msg) from exc


def pytest_pycollect_makemodule(
    module_path: pathlib.Path, parent: pytest.Collector
) -> pytest.File | None:
    """Collect a test module importing packages that are not installed as a placeholder."""
    return not_installed.module_collector(module_path, parent)


NOT_INSTALLED = pytest.StashKey[list[str]]()
"""The missing packages whose tests were deselected."""


def pytest_report_collectionfinish(config: pytest.Config) -> str | None:
    """Name the missing packages whose tests were deselected, and how to install them."""
    packages = config.stash.get(NOT_INSTALLED, [])
    if not packages:
        return None
    return (
        f"deselected for want of {', '.join(packages)}:"
        ' pip install -e ".[dev]" installs every test dependency'
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the tests of missing servers, tools and packages: deselected, not skipped.

    That covers tests limited to database backends none of which was named, and tests marked
    ``requires(...)`` (or modules importing packages) that are not installed, too.
    """
    missing = {name for name, var in SERVICE_VARIABLES.items() if not os.environ.get(var)}
    packages: set[str] = set()
    kept, left_out = [], []
    for item in items:
        marker = item.get_closest_marker("services")
        unnamed_service = marker is not None and bool(missing & set(marker.args))
        skip = item.get_closest_marker("skip")
        no_backend = skip is not None and "empty parameter set" in str(skip.kwargs.get("reason"))
        needs = [name for mark in item.iter_markers("requires") for name in mark.args]
        absent = not_installed.missing(needs)
        packages.update(absent)
        (left_out if unnamed_service or no_backend or absent else kept).append(item)
    config.stash[NOT_INSTALLED] = sorted(packages)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "flavour" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("flavours")
        flavours = list(marker.args) if marker is not None else ["sync", "async"]
        metafunc.parametrize("flavour", flavours, indirect=True)
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


def async_url(backend: str, engine: sa.Engine | sa.URL) -> sa.URL:
    """The async URL of ``backend``: from its variable, or ``engine``'s with the async driver."""
    given = os.environ.get(ASYNC_URL_VARIABLES.get(backend, ""))
    if given:
        return sa.make_url(given)
    driver = ASYNC_DRIVERS.get(backend, "mysql+aiomysql")
    url = engine if isinstance(engine, sa.URL) else engine.url
    return url.set(drivername=driver)


def async_engine(backend: str, engine: sa.Engine) -> sa_asyncio.AsyncEngine:
    """A new async engine on the database of ``engine`` (the tables exist already)."""
    if backend != "sqlite":
        return sa_asyncio.create_async_engine(async_url(backend, engine), pool_size=10)
    # A queue pool, as SQLAlchemy >= 2.0.38 defaults to: the tests count checked-out connections.
    new = sa_asyncio.create_async_engine(
        async_url(backend, engine),
        connect_args={"timeout": 10},
        poolclass=sa_pool.AsyncAdaptedQueuePool,
    )

    # As for pysqlite: let SQLAlchemy emit BEGIN itself so that SAVEPOINT works.
    @sa_event.listens_for(new.sync_engine, "connect")
    def _connect(dbapi_connection: t.Any, record: object) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa_event.listens_for(new.sync_engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return new


class Flavour:
    """Drives a test in one flavour: ``sync``, or ``async`` inside one task of ``runner``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_async = name == "async"
        self.runner = asyncio.Runner() if self.is_async else None

    def __repr__(self) -> str:
        return self.name

    def aw(self, value: t.Any) -> t.Any:
        """Return ``value``, awaited first if it is awaitable (the async API's result)."""
        if self.is_async and inspect.isawaitable(value):
            return sa_concurrency.await_only(value)
        return value

    def run(self, coroutine: c.Coroutine[t.Any, t.Any, t.Any]) -> t.Any:
        """Run ``coroutine`` to completion in this flavour's event loop."""
        assert self.runner is not None
        return self.runner.run(coroutine)

    @contextlib.contextmanager
    def begin(self, session: t.Any) -> c.Iterator[t.Any]:
        """``with session.begin():`` in either flavour."""
        with self.enter(session.begin()) as transaction:
            yield transaction

    @contextlib.contextmanager
    def nested(self, session: t.Any) -> c.Iterator[t.Any]:
        """``with session.begin_nested():`` in either flavour."""
        with self.enter(session.begin_nested()) as transaction:
            yield transaction

    @contextlib.contextmanager
    def enter(self, manager: t.Any) -> c.Iterator[t.Any]:
        """``with manager``, or ``async with manager`` in the async flavour."""
        if not self.is_async:
            with manager as transaction:
                yield transaction
            return
        transaction = self.aw(manager.__aenter__())
        try:
            yield transaction
        except BaseException as exc:
            if not self.aw(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self.aw(manager.__aexit__(None, None, None))


@pytest.fixture
def flavour(request: pytest.FixtureRequest) -> c.Iterator[Flavour]:
    """``sync`` or ``async``; see the module docstring."""
    new = Flavour(request.param)
    yield new
    if new.runner is not None:
        new.runner.close()


class InTask:
    """A fixture value made inside the async test's task, where task scopes exist."""

    def __init__(self, make: c.Callable[[], object]) -> None:
        self.make = make


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests in ``arunner``, async-flavoured ones in SQLAlchemy's greenlet."""
    names = pyfuncitem._fixtureinfo.argnames
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        runner = pyfuncitem.funcargs["arunner"]
        assert isinstance(runner, asyncio.Runner), "an async def test needs the arunner fixture"
        runner.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
        return True
    flavour = pyfuncitem.funcargs.get("flavour")
    if not isinstance(flavour, Flavour) or not flavour.is_async:
        return None

    def body() -> None:
        args = {name: pyfuncitem.funcargs[name] for name in names}
        for name, value in args.items():
            if isinstance(value, InTask):
                args[name] = value.make()
        pyfuncitem.obj(**args)

    flavour.run(sa_concurrency.greenlet_spawn(body))
    return True


@pytest.fixture
def AnySession(flavour: Flavour, backend: str, engine: sa.Engine) -> c.Iterator[t.Any]:
    """An installed ``scoped_session``, or ``async_scoped_session`` per task, by flavour."""
    if not flavour.is_async:
        scoped = sa_orm.scoped_session(sa_orm.sessionmaker(engine))
        sa_signals.install(scoped)
        yield scoped
        scoped.remove()
        sa_signals.uninstall(scoped)
        return
    new = async_engine(backend, engine)
    ascoped = sa_asyncio.async_scoped_session(
        sa_asyncio.async_sessionmaker(new), scopefunc=asyncio.current_task
    )
    sa_signals.install(ascoped)
    yield ascoped
    sa_signals.uninstall(ascoped)
    flavour.run(_close_all(ascoped, new))


async def _close_all(
    scoped: sa_asyncio.async_scoped_session[t.Any], engine: sa_asyncio.AsyncEngine | None
) -> None:
    for session in list(scoped.registry.registry.values()):
        await session.close()
    scoped.registry.registry.clear()
    if engine is not None:
        await engine.dispose()


@pytest.fixture
def arunner() -> c.Iterator[asyncio.Runner]:
    """The event loop an ``async def`` test and its async fixtures run in."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture
def aengine(
    arunner: asyncio.Runner, backend: str, engine: sa.Engine
) -> c.Iterator[sa_asyncio.AsyncEngine]:
    """An async engine on ``engine``'s database, disposed in ``arunner``."""
    new = async_engine(backend, engine)
    yield new
    arunner.run(new.dispose())


@pytest.fixture
def AsyncScoped(
    arunner: asyncio.Runner, aengine: sa_asyncio.AsyncEngine
) -> c.Iterator[sa_asyncio.async_scoped_session[sa_asyncio.AsyncSession]]:
    """An installed ``async_scoped_session`` scoped to the current task."""
    scoped = sa_asyncio.async_scoped_session(
        sa_asyncio.async_sessionmaker(aengine), scopefunc=asyncio.current_task
    )
    sa_signals.install(scoped)
    yield scoped
    sa_signals.uninstall(scoped)
    arunner.run(_close_all(scoped, None))


@pytest.fixture
def any_session(AnySession: t.Any, flavour: Flavour) -> t.Any:
    """The current session of ``AnySession`` (made inside the test's task when async)."""
    if flavour.is_async:
        return InTask(AnySession)
    return AnySession()


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


def count(engine: sa.Engine, model: type[t.Any]) -> int:
    """The number of rows of ``model``'s table, read on a connection of its own."""
    with engine.connect() as connection:
        return connection.scalar(sa.select(sa.func.count()).select_from(model)) or 0


def item_names(engine: sa.Engine) -> list[str]:
    """The names of every ``Item`` row, sorted, read on a connection of its own."""
    with engine.connect() as connection:
        return list(connection.scalars(sa.select(Item.name).order_by(Item.name)))


class Recorder:
    """Makes callbacks that record their name when run; ``assert_done`` checks what ran.

    With ``coroutines=True`` (the async flavour) the callbacks are coroutine functions that
    yield to the event loop before recording, so the order checks prove they were awaited.
    """

    def __init__(self, coroutines: bool = False) -> None:
        self.done: list[object] = []
        self.coroutines = coroutines

    def do(self, name: object) -> c.Callable[[], t.Any]:
        def callback() -> None:
            self.done.append(name)

        async def acallback() -> None:
            await asyncio.sleep(0)
            self.done.append(name)

        chosen: t.Any = acallback if self.coroutines else callback
        chosen.__qualname__ = f"do({name!r})"
        return t.cast("c.Callable[[], t.Any]", chosen)

    def fail(self, name: object, exc: Exception | None = None) -> c.Callable[[], t.Any]:
        def callback() -> None:
            self.done.append(name)
            raise exc or RuntimeError(f"callback {name} failed")

        async def acallback() -> None:
            await asyncio.sleep(0)
            callback()

        chosen: t.Any = acallback if self.coroutines else callback
        chosen.__qualname__ = f"fail({name!r})"
        return t.cast("c.Callable[[], t.Any]", chosen)

    def assert_done(self, expected: list[object]) -> None:
        assert self.done == expected


@pytest.fixture
def recorder(request: pytest.FixtureRequest) -> Recorder:
    """A recorder; its callbacks are coroutine functions in the async flavour."""
    if "flavour" in request.fixturenames:
        return Recorder(coroutines=request.getfixturevalue("flavour").is_async)
    return Recorder()


class Connector:
    """Connects receivers for one test and disconnects them all at the end."""

    def __init__(self) -> None:
        self._connected: list[tuple[t.Any, t.Any]] = []

    def __call__(
        self, signal: t.Any, receiver: t.Any, sender: t.Any = None, **options: t.Any
    ) -> t.Any:
        """Connect ``receiver`` strongly; ``options`` (``robust``, ``on``) go to connect()."""
        if sender is None:
            signal.connect(receiver, weak=False, **options)
        else:
            signal.connect(receiver, sender=sender, weak=False, **options)
        self._connected.append((signal, receiver))
        return receiver

    def record(
        self, signal: t.Any, sender: t.Any = None, **options: t.Any
    ) -> list[tuple[t.Any, dict[str, t.Any]]]:
        """Connect a receiver that records ``(sender, kwargs)`` of every send."""
        calls: list[tuple[t.Any, dict[str, t.Any]]] = []

        def receiver(sender: t.Any, **kwargs: t.Any) -> None:
            calls.append((sender, kwargs))

        self(signal, receiver, sender, **options)
        return calls

    def disconnect_all(self) -> None:
        for signal, receiver in self._connected:
            signal.disconnect(receiver)


@pytest.fixture
def connect() -> c.Iterator[Connector]:
    connector = Connector()
    yield connector
    connector.disconnect_all()


class _InternalErrors(logging.Handler):
    """Collects the layer's own failures, which it logs rather than raise after a COMMIT."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("sa_signals failed"):
            self.records.append(record)


@pytest.fixture(autouse=True)
def no_internal_error(request: pytest.FixtureRequest) -> c.Iterator[None]:
    """Fail any test during which the layer logged a failure of its own, and any test marked
    ``internal_error`` (one that breaks the layer on purpose) during which it logged none."""
    handler = _InternalErrors()
    logger = logging.getLogger("sa_signals")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if request.node.get_closest_marker("internal_error") is not None:
        assert handler.records, "the test broke the layer, but the layer logged no failure"
    else:
        assert not handler.records, [handler.format(record) for record in handler.records]
