"""pytest fixtures over :mod:`sa_signals.testing`, loaded through the ``pytest11`` entry point.

Nothing is set up unless a test asks for a fixture: no autouse fixture, no receiver connected, no
engine touched. The fixtures that run callbacks also make a test fail when a robust callback or
receiver failed during it (it would only be logged otherwise), with the original traceback.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import typing as t

import pytest

from . import testing

if t.TYPE_CHECKING:
    import sqlalchemy as sa
    import sqlalchemy.orm as sa_orm

    from .typing import Callback
    from .typing import SessionFactory
    from .typing import SessionTarget


class CaptureOnCommit(t.Protocol):
    """The type of the ``sa_signals_capture_on_commit`` fixture, for annotating tests."""

    def __call__(
        self, target: SessionTarget | None = None, /, *, execute: bool = False
    ) -> contextlib.AbstractContextManager[list[Callback]]: ...


_FAILURES = pytest.StashKey[list[Exception]]()


@pytest.fixture
def sa_signals_session_factory() -> SessionFactory:
    """The installed ``scoped_session`` or ``sessionmaker`` of the code under test.

    Override it in a ``conftest.py``; the other fixtures use it.
    """
    msg = (
        "the sa_signals fixtures need the session factory of the code under test: define a"
        " fixture named sa_signals_session_factory that returns its installed scoped_session"
        " or sessionmaker."
    )
    pytest.fail(msg, pytrace=False)


@pytest.fixture
def sa_signals_transaction(
    request: pytest.FixtureRequest, sa_signals_session_factory: SessionFactory
) -> c.Iterator[sa.Connection]:
    """Run the test in the transactional test mode; yield the test's Connection.

    ``commit()`` on the factory's sessions runs on_commit callbacks and ``after_commit``
    receivers as in production, and everything is rolled back after the test. See
    :func:`sa_signals.testing.transactional`.
    """
    _watch_failures(request)
    with testing.transactional(sa_signals_session_factory) as connection:
        yield connection


@pytest.fixture
def sa_signals_session(
    sa_signals_transaction: sa.Connection, sa_signals_session_factory: SessionFactory
) -> c.Iterator[sa_orm.Session]:
    """A session of the factory in the transactional test mode (for a ``scoped_session``, its
    current session); closed after the test, before the rollback."""
    with contextlib.closing(sa_signals_session_factory()) as session:
        yield session


@pytest.fixture
def sa_signals_capture_on_commit(request: pytest.FixtureRequest) -> CaptureOnCommit:
    """Return :func:`sa_signals.testing.capture_on_commit`, for use as a context manager.

    Without a target it captures on the current session of ``sa_signals_session_factory``::

        with sa_signals_capture_on_commit(execute=True) as callbacks:
            ...
    """
    _watch_failures(request)

    def capture(
        target: SessionTarget | None = None, /, *, execute: bool = False
    ) -> contextlib.AbstractContextManager[list[Callback]]:
        if target is None:
            target = request.getfixturevalue("sa_signals_session_factory")
        return testing.capture_on_commit(target, execute=execute)

    return capture


@pytest.fixture
def sa_signals_capture_signals() -> t.Callable[
    ..., contextlib.AbstractContextManager[list[testing.SignalRecord]]
]:
    """Return :func:`sa_signals.testing.capture_signals`, for use as a context manager."""
    return testing.capture_signals


def _watch_failures(request: pytest.FixtureRequest) -> None:
    stash = request.node.stash
    if _FAILURES in stash:
        return
    manager = testing.raise_failures()
    stash[_FAILURES] = manager.__enter__()
    # A failure left at teardown (the test itself failed first) is raised there.
    request.addfinalizer(lambda: manager.__exit__(None, None, None))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> c.Iterator[None]:
    """Fail the test with the first robust failure that happened during it."""
    __tracebackhide__ = True
    result = yield
    failures = item.stash.get(_FAILURES, None)
    if failures:
        first = failures[0]
        failures.clear()
        raise first
    return result
