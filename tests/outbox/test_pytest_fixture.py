"""The pytest plugin's sa_signals_outbox_drain fixture."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import outbox

metadata = sa.MetaData()
outbox.table(metadata)
done = []


@outbox.handler("plugin_tests.later", inline=False)
def later(n):
    done.append(n)


@pytest.fixture
def sa_signals_session_factory(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    metadata.create_all(engine)
    maker = sa_orm.sessionmaker(engine)
    sa_signals.install(maker)
    yield maker
    sa_signals.uninstall(maker)
    engine.dispose()
"""

TESTS = """
from sa_signals import outbox
from conftest import done, later


def test_drain_runs_what_the_code_enqueued(sa_signals_session_factory, sa_signals_outbox_drain):
    with sa_signals_session_factory.begin() as session:
        outbox.enqueue(session, later, 1)
        outbox.enqueue(session, later, 2)
    assert done == []
    assert sa_signals_outbox_drain() == 2
    assert done == [1, 2]
    assert sa_signals_outbox_drain() == 0
"""


def test_drain_fixture_runs_due_rows(pytester: pytest.Pytester) -> None:
    """The fixture drains the session factory's outbox and returns how many rows ran."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_outbox_plugin=TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=1)
