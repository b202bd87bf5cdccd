"""The pytest plugin, run as users run it: in pytest runs of their own (``pytester``)."""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest
import sqlalchemy as sa

from tests.conftest import URL_VARIABLES

pytest_plugins = ["pytester"]

EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "testing"

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
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
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


def test_capture_needs_a_session_for_a_sessionmaker(sa_signals_capture_on_commit):
    with pytest.raises(TypeError, match="pass the session it made"):
        with sa_signals_capture_on_commit():
            pass


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
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
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
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define a fixture named sa_signals_session_factory*"])


def test_costs_nothing_unused(pytester: pytest.Pytester) -> None:
    """Loaded but unused, the plugin connects no receiver and installs nothing."""
    pytester.makepyfile(
        """
        from sa_signals import _bridge
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
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
