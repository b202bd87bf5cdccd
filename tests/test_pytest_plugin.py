"""The pytest plugin, run as users run it: in pytest runs of their own (``pytester``)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import sqlalchemy as sa

from tests.conftest import ASYNC_DRIVERS
from tests.conftest import URL_VARIABLES

pytest_plugins = ["pytester"]

ROOT = pathlib.Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "testing"
ASYNC_EXAMPLE = ROOT / "examples" / "testing_async"

MAIL_SERVER = """
def refuse(message):
    raise ConnectionRefusedError(f"mail server refused {message!r}")
"""

FAILING_TEST = """
import mail_server
import shop


def test_mail_server_down(sa_signals_session, monkeypatch):
    monkeypatch.setattr(shop, "deliver", mail_server.refuse)
    shop.place_order("tea")
"""


def database_url(backend: str, pytester: pytest.Pytester) -> str:
    if backend == "sqlite":
        return f"sqlite:///{pytester.path / 'shop.db'}"
    return os.environ[URL_VARIABLES[backend]]


@pytest.mark.backends("sqlite", "postgresql")
def test_example_app_in_its_own_process(
    backend: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented examples pass, leave no row behind, and a failing callback fails its test."""
    for path in EXAMPLE.glob("*.py"):
        shutil.copy(path, pytester.path)
    pytester.makepyfile(mail_server=MAIL_SERVER, test_failing=FAILING_TEST)
    url = database_url(backend, pytester)
    monkeypatch.setenv("SHOP_DATABASE_URL", url)
    engine = sa.create_engine(url)
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
        result.assert_outcomes(passed=10, failed=1)
        result.stdout.fnmatch_lines(
            [
                "*_ test_mail_server_down _*",
                "shop.py:*: in <lambda>",
                "*send_confirmation(order_id)*",
                "shop.py:*: in send_confirmation",
                "*deliver(subject)*",
                "*raise ConnectionRefusedError*",
                "E   *ConnectionRefusedError: mail server refused 'Order *: tea'",
                "FAILED test_failing.py::test_mail_server_down - ConnectionRefusedError*",
            ]
        )
        with engine.connect() as connection:
            for table in ("shop_orders", "shop_emails"):
                assert connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) == 0
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE IF EXISTS shop_orders"))
            connection.execute(sa.text("DROP TABLE IF EXISTS shop_emails"))
        engine.dispose()


@pytest.mark.parametrize(
    ("folder", "driver"), [("testing", "sqlite"), ("testing_async", "sqlite+aiosqlite")]
)
def test_documented_command_in_a_checkout(
    folder: str, driver: str, tmp_path: pathlib.Path
) -> None:
    """``pytest examples/testing`` run at the root of a checkout, as documented, passes.

    The folder's own ``pytest.ini`` makes it pytest's root, so the repository's options (no
    plugin, a coverage floor) do not apply to it.
    """
    env = {
        **os.environ,
        "SHOP_DATABASE_URL": f"{driver}:///{tmp_path / 'shop.db'}",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", f"examples/{folder}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 10 passed in " in result.stdout.splitlines()[-1]


CONFTEST = """
import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals


class Base(sa_orm.DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    engine = sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('db') / 'notes.db'}")

    # SQLAlchemy's recipe for SAVEPOINTs with pysqlite.
    @sa.event.listens_for(engine, "connect")
    def connect(dbapi_connection, record):
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def begin(connection):
        connection.exec_driver_sql("BEGIN")

    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sa_signals_session_factory(engine):
    maker = sa_orm.sessionmaker(engine)
    sa_signals.install(maker)
    yield maker
    sa_signals.uninstall(maker)
"""

PLUGIN_TESTS = """
import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from conftest import Note
from sa_signals import signals


def test_commit_runs_callbacks(sa_signals_session, sa_signals_transaction):
    seen = []
    sa_signals_session.add(Note())
    sa_signals.on_commit(
        lambda: seen.append(sa_signals.current_session().connection()), sa_signals_session
    )
    sa_signals_session.commit()
    assert seen == [sa_signals_transaction]


def test_capture_on_a_given_session(sa_signals_session, sa_signals_capture_on_commit):
    ran = []
    sa_signals_session.add(Note())
    with sa_signals_capture_on_commit(sa_signals_session, execute=True) as callbacks:
        sa_signals.on_commit(lambda: ran.append(1), sa_signals_session)
    assert len(callbacks) == 1
    assert ran == [1]


def test_capture_on_the_factory(sa_signals_session_factory, sa_signals_capture_on_commit):
    ran = []
    with sa_signals_capture_on_commit(execute=True) as callbacks:
        with sa_signals_session_factory() as session:
            session.begin()
            sa_signals.on_commit(lambda: ran.append(1), session)
            session.rollback()
            session.begin()
            sa_signals.on_commit(lambda: ran.append(2), session)
            session.commit()
        assert ran == [2]
    assert len(callbacks) == 1


def test_capture_signals(sa_signals_session, sa_signals_capture_signals):
    with sa_signals_capture_signals(signals.before_commit) as records:
        sa_signals_session.add(Note())
        sa_signals_session.commit()
    assert [record.sender for record in records] == [sa_signals_session]


def test_robust_failure_fails_the_test(sa_signals_session):
    def broken():
        raise LookupError("robust callback broke")

    sa_signals_session.add(Note())
    sa_signals.on_commit(broken, sa_signals_session)
    sa_signals_session.commit()


def test_failure_after_a_failed_assertion(sa_signals_session):
    def broken():
        raise LookupError("second failure")

    sa_signals_session.add(Note())
    sa_signals.on_commit(broken, sa_signals_session)
    sa_signals_session.commit()
    assert False, "the test failed first"


def test_rows_rolled_back(engine):
    with engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(Note)) == 0
"""


def test_fixtures_in_process(pytester: pytest.Pytester) -> None:
    """Each fixture does what its documentation says, and robust failures fail their test."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_plugin=PLUGIN_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=5, failed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_failure_after_a_failed_assertion _*",
            "E * LookupError: second failure",
            "*_ test_robust_failure_fails_the_test _*",
            "*raise LookupError*",
            "E * LookupError: robust callback broke",
            "*_ test_failure_after_a_failed_assertion _*",
            "E * AssertionError: the test failed first",
        ]
    )


def test_missing_factory_fixture_names_the_fix(pytester: pytest.Pytester) -> None:
    """Without a sa_signals_session_factory fixture the error says to define one."""
    pytester.makepyfile("def test_it(sa_signals_session):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define a fixture named sa_signals_session_factory*"])


def test_costs_nothing_unused(pytester: pytest.Pytester) -> None:
    """Loaded but unused, the plugin connects no receiver and installs nothing."""
    pytester.makepyfile(
        """
        from sa_signals._core import bridge as _bridge
        from sa_signals import signals

        def test_nothing_set_up(request):
            assert request.config.pluginmanager.has_plugin("sa_signals")
            assert _bridge._installed == []
            assert not any(
                getattr(signals, name).receivers
                for name in dir(signals)
                if hasattr(getattr(signals, name), "receivers")
            )
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=1)


ASYNC_MAIL_SERVER = """
async def refuse(message):
    raise ConnectionRefusedError(f"mail server refused {message!r}")
"""

ASYNC_FAILING_TEST = """
import pytest

import mail_server
import shop


@pytest.mark.asyncio
async def test_mail_server_down(sa_signals_async_session, monkeypatch):
    monkeypatch.setattr(shop, "deliver", mail_server.refuse)
    await shop.place_order("tea")
"""


@pytest.mark.backends("sqlite", "postgresql")
def test_async_example_app_in_its_own_process(
    backend: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The async examples pass (pytest-asyncio, unittest), leave no row, and report failures."""
    for path in [*ASYNC_EXAMPLE.glob("*.py"), ASYNC_EXAMPLE / "pytest.ini"]:
        shutil.copy(path, pytester.path)
    pytester.makepyfile(mail_server=ASYNC_MAIL_SERVER, test_failing=ASYNC_FAILING_TEST)
    url = sa.make_url(database_url(backend, pytester)).set(drivername=ASYNC_DRIVERS[backend])
    monkeypatch.setenv("SHOP_DATABASE_URL", url.render_as_string(hide_password=False))
    engine = sa.create_engine(database_url(backend, pytester))
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
        result.assert_outcomes(passed=10, failed=1)
        result.stdout.fnmatch_lines(
            [
                "*_ test_mail_server_down _*",
                "shop.py:*: in confirm",
                "*await send_confirmation(order_id)*",
                "shop.py:*: in send_confirmation",
                "*await deliver(subject)*",
                "*raise ConnectionRefusedError*",
                "E   *ConnectionRefusedError: mail server refused 'Order *: tea'",
                "FAILED test_failing.py::test_mail_server_down - ConnectionRefusedError*",
            ]
        )
        with engine.connect() as connection:
            for table in ("ashop_orders", "ashop_emails"):
                assert connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) == 0
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE IF EXISTS ashop_orders"))
            connection.execute(sa.text("DROP TABLE IF EXISTS ashop_emails"))
        engine.dispose()


ASYNC_CONFTEST = """
import asyncio
import inspect

import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm

import sa_signals


class Base(sa_orm.DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    # The simplest async runner there is: no async plugin is loaded.
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True


async def create(engine):
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    await engine.dispose()


@pytest.fixture(scope="session")
def path(tmp_path_factory):
    return tmp_path_factory.mktemp("db") / "notes.db"


@pytest.fixture
def engine(path):
    engine = sa_asyncio.create_async_engine(f"sqlite+aiosqlite:///{path}", poolclass=sa.NullPool)

    # SQLAlchemy's recipe for SAVEPOINTs with pysqlite.
    @sa.event.listens_for(engine.sync_engine, "connect")
    def connect(dbapi_connection, record):
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine.sync_engine, "begin")
    def begin(connection):
        connection.exec_driver_sql("BEGIN")

    asyncio.run(create(engine))
    return engine


@pytest.fixture
def sa_signals_session_factory(engine):
    maker = sa_asyncio.async_sessionmaker(engine)
    sa_signals.install(maker)
    yield maker
    sa_signals.uninstall(maker)
"""

ASYNC_PLUGIN_TESTS = """
import sqlalchemy as sa

import sa_signals
from conftest import Note

seen = []


async def test_commit_runs_coroutine_callbacks(
    sa_signals_async_session, sa_signals_async_transaction
):
    async def callback():
        session = sa_signals.current_async_session()
        count = await session.scalar(sa.select(sa.func.count(Note.id)))
        seen.append((await session.connection(), count))

    sa_signals_async_session.add(Note())
    sa_signals.on_commit(callback, sa_signals_async_session)
    await sa_signals_async_session.commit()
    assert seen == [(sa_signals_async_transaction, 1)]


async def test_capture_on_a_given_session(sa_signals_async_session, sa_signals_capture_on_commit):
    ran = []

    async def callback():
        ran.append(1)

    sa_signals_async_session.add(Note())
    await sa_signals_async_session.flush()
    async with sa_signals_capture_on_commit(sa_signals_async_session, execute=True) as callbacks:
        sa_signals.on_commit(callback, sa_signals_async_session)
    assert callbacks == [callback]
    assert ran == [1]


async def test_robust_failure_fails_the_test(sa_signals_async_session):
    async def broken():
        raise LookupError("robust coroutine broke")

    sa_signals_async_session.add(Note())
    sa_signals.on_commit(broken, sa_signals_async_session)
    await sa_signals_async_session.commit()


async def test_failing_test_still_rolled_back(sa_signals_async_session):
    sa_signals_async_session.add(Note())
    await sa_signals_async_session.commit()
    assert False, "the test failed"


def test_sync_test_refused(sa_signals_async_session):
    pass


def test_sync_fixture_refused(sa_signals_session):
    pass


async def test_rows_rolled_back(engine):
    async with engine.connect() as connection:
        assert await connection.scalar(sa.select(sa.func.count()).select_from(Note)) == 0
"""


def test_async_fixtures_in_process(pytester: pytest.Pytester) -> None:
    """The async fixtures work under any runner of async tests, and roll back every test."""
    pytester.makeconftest(ASYNC_CONFTEST)
    pytester.makepyfile(test_plugin=ASYNC_PLUGIN_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=3, failed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*sa_signals_async_transaction works only for an `async def` test*",
            "*an async factory: use the sa_signals_async_session or sa_signals_async_transaction*",
            "*_ test_robust_failure_fails_the_test _*",
            "*raise LookupError*",
            "E * LookupError: robust coroutine broke",
            "*_ test_failing_test_still_rolled_back _*",
            "E * AssertionError: the test failed",
        ]
    )
