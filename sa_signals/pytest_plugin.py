"""pytest fixtures over :mod:`sa_signals.testing`, loaded through the ``pytest11`` entry point.

Nothing is set up unless a test asks for a fixture: no autouse fixture, no receiver connected, no
engine touched. The fixtures that run callbacks also make a test fail when a robust callback or
receiver failed during it (it would only be logged otherwise), with the original traceback.

The async fixtures need no particular async plugin: whichever runs the ``async def`` test
(pytest-asyncio, anyio's, ...), the transaction is opened and rolled back inside the test's own
coroutine, in its event loop and task.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import functools
import inspect
import typing as t

import pytest

from . import _test_mode
from . import testing
from ._core.state import is_async_factory

if t.TYPE_CHECKING:
    import sqlalchemy as sa
    import sqlalchemy.ext.asyncio as sa_asyncio
    import sqlalchemy.orm as sa_orm

    from .typing import AsyncSessionFactory
    from .typing import SessionFactory
    from .typing import SessionTarget


class CaptureOnCommit(t.Protocol):
    """The type of the ``sa_signals_capture_on_commit`` fixture, for annotating tests."""

    def __call__(
        self,
        target: SessionTarget | SessionFactory | AsyncSessionFactory | None = None,
        /,
        *,
        execute: bool = False,
    ) -> testing.OnCommitCapture: ...


_FAILURES = pytest.StashKey[list[Exception]]()


class _InTest:
    """Stands for an async fixture's value until the test's coroutine makes it."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


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
    if is_async_factory(sa_signals_session_factory):
        msg = (
            "sa_signals_session_factory is an async factory: use the sa_signals_async_session"
            " or sa_signals_async_transaction fixture, in an `async def` test."
        )
        pytest.fail(msg, pytrace=False)
    _watch_failures(request)
    with testing.transactional(sa_signals_session_factory) as connection:
        yield connection


@pytest.fixture
def sa_signals_session(
    sa_signals_transaction: sa.Connection, sa_signals_session_factory: SessionFactory
) -> c.Iterator[sa_orm.Session]:
    """A session of the factory in the transactional test mode, closed after the test, before the
    rollback: for a ``scoped_session``, its current session, or outside its scopes (a Flask
    application context, a request's unit of work) a session of its own."""
    with contextlib.closing(_test_session(sa_signals_session_factory)) as session:
        yield session


@pytest.fixture
def sa_signals_capture_on_commit(request: pytest.FixtureRequest) -> CaptureOnCommit:
    """Return :func:`sa_signals.testing.capture_on_commit`, for use as a context manager.

    Without a target it captures on ``sa_signals_session_factory``: every session it makes in
    the block (and the current one of a ``scoped_session``)::

        with sa_signals_capture_on_commit(execute=True) as callbacks:
            ...

    For an ``AsyncSession`` or ``async_scoped_session``, enter it with ``async with``.
    """
    _watch_failures(request)

    def capture(
        target: SessionTarget | SessionFactory | AsyncSessionFactory | None = None,
        /,
        *,
        execute: bool = False,
    ) -> testing.OnCommitCapture:
        if target is None:
            target = request.getfixturevalue("sa_signals_session_factory")
        return testing.capture_on_commit(target, execute=execute)

    return capture


@pytest.fixture
def sa_signals_async_transaction(
    request: pytest.FixtureRequest, sa_signals_session_factory: AsyncSessionFactory
) -> sa_asyncio.AsyncConnection:
    """Run the ``async def`` test in the transactional test mode; the test's ``AsyncConnection``.

    The async twin of ``sa_signals_transaction``, for an ``async_scoped_session`` or
    ``async_sessionmaker``: the mode is entered and left inside the test's coroutine.
    """
    _check_async_test(request, "sa_signals_async_transaction")
    _watch_failures(request)
    return t.cast("sa_asyncio.AsyncConnection", _InTest("transaction"))


@pytest.fixture
def sa_signals_async_session(
    request: pytest.FixtureRequest, sa_signals_async_transaction: sa_asyncio.AsyncConnection
) -> sa_asyncio.AsyncSession:
    """An ``AsyncSession`` of the factory in the transactional test mode, closed after the test,
    before the rollback: for an ``async_scoped_session``, the current session of the test's
    task, or outside its scopes (a request's unit of work) a session of its own."""
    _check_async_test(request, "sa_signals_async_session")
    return t.cast("sa_asyncio.AsyncSession", _InTest("session"))


@pytest.fixture
def sa_signals_capture_signals() -> t.Callable[
    ..., contextlib.AbstractContextManager[list[testing.SignalRecord]]
]:
    """Return :func:`sa_signals.testing.capture_signals`, for use as a context manager."""
    return testing.capture_signals


def _check_async_test(request: pytest.FixtureRequest, name: str) -> None:
    if not inspect.iscoroutinefunction(request.function):
        msg = (
            f"{name} works only for an `async def` test (run by an async plugin such as"
            " pytest-asyncio or anyio's); a plain test uses the sync fixtures."
        )
        pytest.fail(msg, pytrace=False)


def _in_transaction(
    test: c.Callable[..., c.Awaitable[object]], factory: AsyncSessionFactory
) -> c.Callable[..., c.Awaitable[object]]:
    """Wrap the ``async def`` test so that it runs in the transactional test mode."""

    @functools.wraps(test)
    async def run_test(**kwargs: t.Any) -> object:
        async with testing.transactional(factory) as connection:
            session: sa_asyncio.AsyncSession | None = None
            for name, value in kwargs.items():
                if isinstance(value, _InTest):
                    if value.name == "transaction":
                        kwargs[name] = connection
                    else:
                        session = session or _test_session(factory)
                        kwargs[name] = session
            try:
                return await test(**kwargs)
            finally:
                if session is not None:
                    await session.close()

    return run_test


def _test_session(factory: t.Any) -> t.Any:
    """Return the session a test gets from ``factory``.

    Outside every scope of a scoped factory, such as the requests of a web application
    (``contrib.flask``, ``contrib.starlette``), the test has a session of its own: each request
    makes its own as in production, and the test's cannot be one of them.
    """
    registry = getattr(factory, "registry", None)
    if registry is not None and not _test_mode.in_scope(registry):
        return factory.session_factory()
    return factory()


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
    """Run an async test in the transactional test mode if it asked for it; fail the test with
    the first robust failure that happened during it."""
    __tracebackhide__ = True
    funcargs: dict[str, object] = getattr(item, "funcargs", {})
    if _FAILURES in item.stash and any(isinstance(v, _InTest) for v in funcargs.values()):
        # Whichever plugin runs the coroutine reads item.obj when the test runs.
        test = item.obj  # type: ignore[attr-defined]
        factory = t.cast("AsyncSessionFactory", funcargs["sa_signals_session_factory"])
        item.obj = _in_transaction(test, factory)  # type: ignore[attr-defined]
        try:
            result = yield
        finally:
            item.obj = test  # type: ignore[attr-defined]
    else:
        result = yield
    failures = item.stash.get(_FAILURES, None)
    if failures:
        first = failures[0]
        failures.clear()
        raise first
    return result


@pytest.fixture
def sa_signals_outbox_drain(
    sa_signals_session_factory: SessionFactory,
) -> c.Callable[[], t.Any]:
    """Return a function that runs every due outbox row now and returns how many ran.

    It drains ``sa_signals_session_factory`` (an awaitable for an async one): rows committed by
    the code under test and left to workers, or whose retry after a failed run is due (a
    delayed row waits for its time).
    """
    from .outbox import drain  # imported on use: the outbox is optional

    return functools.partial(drain, sa_signals_session_factory)
