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
import functools
import inspect
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
import sqlalchemy.util.concurrency as sa_concurrency

from . import signals as _signals
from ._dispatch import Signal
from ._failures import WRAPPED_CALLBACK_ATTR
from ._runner import _current
from ._runner import func_of
from ._runner import run
from ._runner import Work
from ._state import async_api
from ._state import INSTALLATION_ATTR
from ._state import installation_for
from ._state import is_async_factory
from ._state import state_of
from ._state import TRANSACTIONAL_ATTR
from .exceptions import NotInstalledError
from .exceptions import ScopeError

if t.TYPE_CHECKING:
    import types

    import sqlalchemy.ext.asyncio as sa_asyncio

    from ._runner import Item
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


def capture_on_commit(target: SessionTarget, /, *, execute: bool = False) -> OnCommitCapture:
    """Collect the on_commit callbacks registered on ``target`` inside the block.

    ``target`` is a session, or a ``scoped_session`` standing for its current session (or their
    async twins). The yielded list is filled when the block ends, in registration order, with
    the callbacks still queued then: those of savepoints rolled back inside the block are left
    out (they would never run), and so are those of a transaction that ended inside the block
    (they ran, or were dropped).

    With ``execute=False`` the callbacks stay queued for the real commit. With ``execute=True``
    they are taken out of the queue and run when the block ends without an exception, as after a
    commit: each in a distinct session, robust or strict as registered. Callbacks they register
    in their own transaction are run after it commits and are added to the list. For an
    ``AsyncSession`` use ``async with``: coroutine callbacks are awaited, each in a distinct
    ``AsyncSession``.
    """
    return OnCommitCapture(_resolve_session(target, "capture_on_commit"), execute)


class OnCommitCapture:
    """What :func:`capture_on_commit` returns: a context manager, also usable with ``async with``.

    Re-entering it starts a new capture.
    """

    def __init__(self, session: sa_orm.Session, execute: bool) -> None:
        installation = installation_for(session)
        if installation is None:
            msg = (
                f"{type(session).__name__} is not installed: call sa_signals.install() on its"
                " sessionmaker or scoped_session before capturing its on_commit callbacks."
            )
            raise NotInstalledError(msg)
        self._session = session
        self._installation = installation
        self._execute = execute
        self._queue: list[Item] | None = None
        self._outer_cut = 0
        self._callbacks: list[Callback] = []

    def __enter__(self) -> list[Callback]:
        # The queue only grows at its end, is cut by savepoint rollbacks (which lower state.cut)
        # and is replaced when its transaction ends: the block's callbacks are its tail from
        # state.cut on, or all of a new queue.
        state = state_of(self._session)
        self._queue = state.queue
        self._outer_cut = state.cut  # an enclosing capture's, put back (lowered) on exit
        state.cut = len(state.queue)
        self._callbacks = []
        return self._callbacks

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        aio = self._installation.aio
        if self._execute and exc_type is None and aio is not None and not aio.can_await():
            self._take(False)
            msg = (
                "capture_on_commit(execute=True) on an AsyncSession runs its callbacks when"
                " the block ends, which needs `async with`."
            )
            raise TypeError(msg)
        captured = self._take(exc_type is None)
        if captured:
            run(captured, self._session, self._installation)

    async def __aenter__(self) -> list[Callback]:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        captured = self._take(exc_type is None)
        if captured:
            # The runner awaits coroutine callbacks through SQLAlchemy's greenlet.
            await sa_concurrency.greenlet_spawn(run, captured, self._session, self._installation)

    def _take(self, succeeded: bool) -> list[Item]:
        """List the block's callbacks; return them, dequeued, if they are to run now."""
        state = state_of(self._session)
        queue = state.queue
        start = state.cut if queue is self._queue else 0
        state.cut = min(self._outer_cut, state.cut)
        self._queue = None
        captured = queue[start:]
        self._callbacks.extend(func_of(entry) for entry in captured)
        if not (self._execute and succeeded and captured):
            return []
        del queue[start:]
        state.marks[:] = [mark for mark in state.marks if mark[1] < start]
        return [_recording_entry(entry, self._callbacks) for entry in captured]


def _recording_entry(entry: Item, callbacks: list[Callback]) -> Item:
    """Return ``entry`` with its callback wrapped by :func:`_recording`, as robust as it was."""
    if isinstance(entry, Work):
        return Work(_recording(entry.func, callbacks), entry.robust)
    return _recording(entry, callbacks)


def _recording(callback: c.Callable[..., object], callbacks: list[Callback]) -> Callback:
    """Wrap ``callback`` so that what it registers on its distinct session is recorded too."""

    @functools.wraps(callback)
    def recording() -> object:
        finished = True
        try:
            result = callback()
            if inspect.iscoroutine(result):
                finished = False
                return _awaiting(result, callbacks)
            return result
        finally:
            if finished:
                _record_registered(callbacks)

    setattr(recording, WRAPPED_CALLBACK_ATTR, callback)
    return recording


async def _awaiting(
    coroutine: c.Coroutine[t.Any, t.Any, object], callbacks: list[Callback]
) -> object:
    try:
        return await coroutine
    finally:
        _record_registered(callbacks)


def _record_registered(callbacks: list[Callback]) -> None:
    slot = _current.get()
    session = slot.created() if slot is not None else None
    if session is not None:
        # Still queued: the distinct session commits after the callback returns.
        queue = state_of(session).queue
        for index, entry in enumerate(queue):
            callbacks.append(func_of(entry))
            queue[index] = _recording_entry(entry, callbacks)


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
        from . import _atesting  # needs greenlet: only for async users

        manager = _atesting.transactional(self._factory, self._bind)
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
    if getattr(maker.class_, INSTALLATION_ATTR, None) is None:
        msg = (
            f"{factory!r} is not installed: call sa_signals.install() on it before entering"
            " the transactional test mode."
        )
        raise NotInstalledError(msg)
    if scoped is not None and scoped.registry.has():
        if scoped.registry().in_transaction():
            msg = (
                "transactional() was entered while the scoped_session's current session is in"
                " a transaction; call remove() on the scoped_session first."
            )
            raise ScopeError(msg)
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
        saved = dict(maker.kw)
        maker.configure(bind=connection, join_transaction_mode="create_savepoint")
        connection.__dict__[TRANSACTIONAL_ATTR] = True
        try:
            yield connection
        finally:
            del connection.__dict__[TRANSACTIONAL_ATTR]
            maker.kw.clear()
            maker.kw.update(saved)
            if scoped is not None:
                scoped.remove()


def _resolve_session(target: object, name: str) -> sa_orm.Session:
    if isinstance(target, sa_orm.scoped_session):
        session: sa_orm.Session = target()
        return session
    if isinstance(target, sa_orm.Session):
        return target
    api = async_api()
    if api is not None:
        if isinstance(target, api.AsyncSession):
            return t.cast("sa_orm.Session", target.sync_session)
        if isinstance(target, api.async_scoped_session):
            return t.cast("sa_orm.Session", target().sync_session)
    msg = (
        f"{name}() needs a Session or a scoped_session (or their async twins), got {target!r};"
        " for a sessionmaker, pass the session it made."
    )
    raise TypeError(msg)
