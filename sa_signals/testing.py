"""Helpers for testing code that uses sa_signals; none of them needs pytest.

- :func:`capture_on_commit` collects the on_commit callbacks registered in a block, and can run
  them at its end as a commit would.
- :func:`capture_signals` records every send of some signals.
- :func:`transactional` is the transactional test mode: the test's outer transaction stands in
  for the database, so ``session.commit()`` runs callbacks and commit signals as in production,
  and everything is rolled back at the end.
- :func:`raise_failures` turns callbacks and receivers that failed robustly (only logged) into
  an exception, so that a test cannot pass over them.

``capture_on_commit`` and ``transactional`` take the async sessions and factories too, entered
with ``async with``.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import dataclasses
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
import sqlalchemy.util.concurrency as sa_concurrency

from . import _test_mode
from . import signals as _signals
from ._core.capture import Capture
from ._core.install import installation_of
from ._core.runner import run
from ._core.state import async_api
from ._core.state import INSTALLATION_ATTR
from ._core.state import installation_for
from ._core.state import is_async_factory
from ._dispatch import Signal
from .exceptions import NotInstalledError
from .exceptions import ScopeError

if t.TYPE_CHECKING:
    import types

    import sqlalchemy.ext.asyncio as sa_asyncio

    from ._core.state import Installation
    from ._core.state import Item
    from .typing import AsyncSessionFactory
    from .typing import Callback
    from .typing import SessionFactory
    from .typing import SessionTarget

__all__ = [
    "OnCommitCapture",
    "SignalRecord",
    "TransactionalMode",
    "capture_on_commit",
    "capture_signals",
    "raise_failures",
    "transactional",
]


def capture_on_commit(
    target: SessionTarget | SessionFactory | AsyncSessionFactory, /, *, execute: bool = False
) -> OnCommitCapture:
    """Collect the on_commit callbacks registered on ``target`` inside the block.

    ``target`` is a session (or ``AsyncSession``): its callbacks registered in the block are
    captured. A ``sessionmaker`` or ``async_sessionmaker`` captures those of every session it
    makes inside the block (in any thread); a ``scoped_session`` or ``async_scoped_session``
    those of its current session (if the block is entered in one of its scopes) and of every
    session it makes inside the block, such as each request's.

    The yielded list is filled as the block runs and when it ends, in order, with every
    callback registered in the block whose transaction committed (the callback ran), waits on
    a Connection's COMMIT (a session joined into the test's outer transaction), is still open,
    or ran at once (registered outside a transaction); never one of a transaction or savepoint
    that rolled back.

    With ``execute=False`` the callbacks are left to run, wait or stay queued as they would.
    With ``execute=True`` each of them runs by the end of the block, once: at its commit if it
    really committed, else when the block ends without an exception (taken out of the queue
    or the Connection's wait), as after a commit: each in a distinct session, robust or strict
    as registered. Callbacks they register run too and are listed, in run order, also those
    their distinct sessions would hold for the test's Connection. For an
    ``AsyncSession`` or async factory use ``async with``: coroutine callbacks are awaited, each
    in a distinct ``AsyncSession``.
    """
    if not isinstance(execute, bool):
        msg = f"capture_on_commit() takes execute=True or execute=False, got {execute!r}"
        raise TypeError(msg)
    session, installation, factory = _capture_target(target)
    return OnCommitCapture(session, installation, factory, execute)


class OnCommitCapture:
    """What :func:`capture_on_commit` returns: a context manager, also usable with ``async with``.

    Re-entering it starts a new capture.
    """

    def __init__(
        self,
        session: sa_orm.Session | None,
        installation: Installation,
        factory: bool,
        execute: bool,
    ) -> None:
        self._session = session
        self._installation = installation
        self._factory = factory
        self._execute = execute
        self._active: list[Capture] = []

    def __enter__(self) -> list[Callback]:
        capture = Capture(self._installation, self._execute)
        capture.begin(self._session, factory=self._factory)
        self._active.append(capture)
        return capture.callbacks

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        aio = self._installation.aio
        capture = self._active.pop()
        if self._execute and exc_type is None and aio is not None and not aio.can_await():
            capture.finish(False)
            msg = (
                "capture_on_commit(execute=True) on an AsyncSession runs its callbacks when"
                " the block ends, which needs `async with`."
            )
            raise TypeError(msg)
        try:
            self._run(capture.finish(exc_type is None))
        finally:
            capture.close()

    async def __aenter__(self) -> list[Callback]:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        capture = self._active.pop()
        try:
            to_run = capture.finish(exc_type is None)
            if to_run:
                # The runner awaits coroutine callbacks through SQLAlchemy's greenlet.
                await sa_concurrency.greenlet_spawn(self._run, to_run)
        finally:
            capture.close()

    def _run(self, to_run: list[tuple[sa_orm.Session, list[Item]]]) -> None:
        first_error: Exception | None = None
        for session, items in to_run:
            error = run(items, session, self._installation)
            if error is not None and first_error is None:
                first_error = error
        if first_error is not None:
            raise first_error


def _capture_target(
    target: object,
) -> tuple[sa_orm.Session | None, Installation, bool]:
    """Return the session to watch, its installation, and whether to watch new sessions."""
    session: sa_orm.Session | None = None
    factory = True
    if isinstance(target, sa_orm.Session):
        session, factory = target, False
    elif isinstance(target, sa_orm.scoped_session):
        session = _test_mode.current_session(target.registry)
    elif not isinstance(target, sa_orm.sessionmaker):
        api = async_api()
        if api is not None and isinstance(target, api.AsyncSession):
            session, factory = target.sync_session, False
        elif api is not None and isinstance(target, api.async_scoped_session):
            current = _test_mode.current_session(target.registry)
            session = current.sync_session if current is not None else None
        elif api is None or not isinstance(target, api.async_sessionmaker):
            msg = (
                "capture_on_commit() needs a Session, a scoped_session or a sessionmaker (or"
                f" their async twins), got {target!r}"
            )
            raise TypeError(msg)
    installation = installation_of(target) if factory else installation_for(session)  # type: ignore[arg-type]
    if installation is None:
        name = type(session).__name__ if session is not None else repr(target)
        msg = (
            f"{name} is not installed: call sa_signals.install() on its sessionmaker or"
            " scoped_session before capturing its on_commit callbacks."
        )
        raise NotInstalledError(msg)
    return session, installation, factory


@dataclasses.dataclass(frozen=True)
class SignalRecord:
    """One send of a signal, as :func:`capture_signals` recorded it."""

    signal: Signal
    """The signal that was sent."""

    sender: t.Any
    """The sender: a ``Session``, or a mapped class for the model signals."""

    kwargs: dict[str, t.Any]
    """The keywords the receivers got."""


_ALL_SIGNALS: tuple[Signal, ...] = tuple(
    value for value in vars(_signals).values() if isinstance(value, Signal)
)


@contextlib.contextmanager
def capture_signals(*signals: Signal) -> c.Iterator[list[SignalRecord]]:
    """Record every send of ``signals`` inside the block, in order; all of sa_signals' if none.

    The recording receiver is connected last and disconnected at the end. Connecting it to
    ``after_commit`` makes that signal be sent, where it would be skipped for want of receivers.
    """
    records: list[SignalRecord] = []
    receivers: list[tuple[Signal, c.Callable[..., None]]] = []
    for signal in signals or _ALL_SIGNALS:
        if not isinstance(signal, Signal):
            msg = f"capture_signals() takes sa_signals signals, got {signal!r}"
            raise TypeError(msg)

        def receiver(sender: t.Any, /, *, _signal: Signal = signal, **kwargs: t.Any) -> None:
            records.append(SignalRecord(_signal, sender, kwargs))

        signal.connect(receiver, weak=False)
        receivers.append((signal, receiver))
    try:
        yield records
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver)


@contextlib.contextmanager
def raise_failures() -> c.Iterator[list[Exception]]:
    """Re-raise, when the block ends, the first exception a robust callback or receiver raised.

    Robust failures are only logged and sent on ``on_commit_failed`` / ``receiver_failed``; in a
    test they would pass unnoticed. The yielded list holds every such exception, in order. The
    block's own exception, if any, takes precedence.
    """
    failures: list[Exception] = []

    def on_failure(sender: t.Any, /, *, exception: Exception, **kwargs: t.Any) -> None:
        failures.append(exception)

    _signals.on_commit_failed.connect(on_failure, weak=False)
    _signals.receiver_failed.connect(on_failure, weak=False)
    try:
        yield failures
    finally:
        _signals.on_commit_failed.disconnect(on_failure)
        _signals.receiver_failed.disconnect(on_failure)
    if failures:
        raise failures[0]


def transactional(
    factory: SessionFactory | AsyncSessionFactory,
    /,
    *,
    bind: sa.Engine
    | sa.Connection
    | sa_asyncio.AsyncEngine
    | sa_asyncio.AsyncConnection
    | None = None,
) -> TransactionalMode:
    """Run the block in the transactional test mode, and roll everything back at its end.

    ``factory`` is the installed ``scoped_session`` or ``sessionmaker`` of the code under test.
    For the block, its sessions are bound to one Connection (from ``bind``, else the factory's
    own bind) that holds an outer transaction, with ``join_transaction_mode="create_savepoint"``
    (SQLAlchemy's recipe for joining a session into an external transaction). Their outermost
    ``commit()`` only releases a SAVEPOINT, but it counts as the real COMMIT: ``after_commit``
    receivers and on_commit callbacks run, in distinct sessions that join the same Connection,
    so they see the test's data. At the end the scoped session is removed, the factory's
    configuration restored, and the outer transaction rolled back. Yields the Connection.

    For an ``async_scoped_session`` or ``async_sessionmaker`` the same holds with ``async with``,
    which yields the ``AsyncConnection``.

    .. note:: This is a test mode: callbacks run although nothing reached the database. Given a
       Connection as ``bind``, its transaction (begun if there is none) belongs to the caller,
       who rolls it back.
    """
    return TransactionalMode(factory, bind)


class TransactionalMode:
    """What :func:`transactional` returns: a context manager.

    Enter it with ``with`` over a sync factory, with ``async with`` over an async one.
    """

    def __init__(self, factory: t.Any, bind: t.Any) -> None:
        self._factory = factory
        self._bind = bind
        self._active: list[t.Any] = []

    def __enter__(self) -> sa.Connection:
        if is_async_factory(self._factory):
            msg = "transactional() over an async factory needs `async with`."
            raise TypeError(msg)
        manager = _transactional(self._factory, bind=self._bind)
        connection = manager.__enter__()
        self._active.append(manager)
        return connection

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self._active.pop().__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> sa_asyncio.AsyncConnection:
        if not is_async_factory(self._factory):
            msg = (
                "transactional() over a synchronous factory needs `with`; give an"
                " async_sessionmaker or async_scoped_session for `async with`."
            )
            raise TypeError(msg)
        from . import _async_testing  # needs greenlet: only for async users

        manager = _async_testing.transactional(self._factory, self._bind)
        connection = await manager.__aenter__()
        self._active.append(manager)
        return connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self._active.pop().__aexit__(exc_type, exc, tb)


@contextlib.contextmanager
def _transactional(
    factory: SessionFactory, /, *, bind: sa.Engine | sa.Connection | None = None
) -> c.Iterator[sa.Connection]:
    """The sync transactional test mode; see :func:`transactional`."""
    scoped = factory if isinstance(factory, sa_orm.scoped_session) else None
    maker: object = scoped.session_factory if scoped is not None else factory
    if not isinstance(maker, sa_orm.sessionmaker):
        msg = f"transactional() needs a sessionmaker or a scoped_session, got {factory!r}"
        raise TypeError(msg)
    installation: Installation | None = getattr(maker.class_, INSTALLATION_ATTR, None)
    if installation is None:
        msg = (
            f"{factory!r} is not installed: call sa_signals.install() on it before entering"
            " the transactional test mode."
        )
        raise NotInstalledError(msg)
    if scoped is not None:
        idle = _test_mode.current_session(scoped.registry)
        if idle is not None and idle.in_transaction():
            msg = (
                "transactional() was entered while the scoped_session's current session is in"
                " a transaction; call remove() on the scoped_session first."
            )
            raise ScopeError(msg)
        if idle is not None:
            scoped.remove()
    bind = bind if bind is not None else maker.kw.get("bind")
    if bind is None:
        msg = (
            "transactional() needs an engine: configure the sessionmaker with bind=, or pass"
            " bind=."
        )
        raise TypeError(msg)
    with contextlib.ExitStack() as stack:
        if isinstance(bind, sa.Connection):
            connection = bind
            if not connection.in_transaction():
                connection.begin()
        else:
            connection = stack.enter_context(bind.connect())
            stack.callback(connection.begin().rollback)
        try:
            with _test_mode.bound(maker, installation.session_class, connection, connection):
                yield connection
        finally:
            if scoped is not None:
                for session in _test_mode.bound_sessions(scoped.registry, connection):
                    session.close()
