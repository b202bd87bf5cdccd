"""Runs work after a commit, each item inside a swapped-in distinct session."""

from __future__ import annotations

import collections
import collections.abc as c
import contextvars
import inspect
import typing as t

import sqlalchemy.orm as sa_orm

from . import signals
from ._dispatch import describe
from ._dispatch import logger
from ._dispatch import Signal
from .exceptions import CoroutineMisuseError
from .exceptions import OutsideCallbackError
from .exceptions import SessionLeftOpenError

if t.TYPE_CHECKING:
    from ._aio import AsyncSupport
    from ._state import Installation


class Work:
    """One call to make after a commit: an on_commit callback or a commit-time receiver."""

    __slots__ = ("args", "func", "is_coroutine", "kwargs", "robust", "signal")

    def __init__(
        self,
        func: c.Callable[..., object],
        robust: bool,
        args: tuple[t.Any, ...] = (),
        signal: Signal | None = None,
        is_coroutine: bool = False,
        kwargs: c.Mapping[str, t.Any] | None = None,
    ) -> None:
        self.func = func
        self.robust = robust
        self.args = args
        self.signal = signal
        self.is_coroutine = is_coroutine
        self.kwargs = kwargs


class _Batch:
    __slots__ = ("installation", "items", "origin")

    def __init__(
        self, items: c.Iterator[Work], origin: sa_orm.Session, installation: Installation
    ) -> None:
        self.items = items
        self.origin = origin
        self.installation = installation


class Slot(t.Protocol):
    """The distinct session of one commit-time call: :class:`DistinctSlot` or its async twin."""

    origin: sa_orm.Session

    def get(self) -> sa_orm.Session: ...

    def created(self) -> sa_orm.Session | None: ...

    def holds(self, session: sa_orm.Session) -> bool: ...

    def commit(self) -> None: ...

    def release(self) -> None: ...


class DistinctSlot:
    """The distinct session of the item being run, created on first use."""

    __slots__ = ("had_previous", "installation", "origin", "previous", "session")

    def __init__(self, installation: Installation, origin: sa_orm.Session) -> None:
        self.installation = installation
        self.origin = origin
        self.session: sa_orm.Session | None = None
        self.previous: sa_orm.Session | None = None
        self.had_previous = False
        scoped = installation.scoped
        if scoped is not None:
            registry = scoped.registry
            if registry.has():
                self.had_previous = True
                self.previous = registry()
                registry.clear()

    def get(self) -> sa_orm.Session:
        """Return the distinct session, creating it (and registering it) on first use."""
        scoped = self.installation.scoped
        if scoped is not None:
            session: sa_orm.Session = scoped()
            return session
        if self.session is None:
            self.session = self.installation.make_session(self.origin)
        return self.session

    def created(self) -> sa_orm.Session | None:
        """Return the distinct session if the item asked for one."""
        scoped = self.installation.scoped
        if scoped is None:
            return self.session
        registry = scoped.registry
        return registry() if registry.has() else None

    def holds(self, session: sa_orm.Session) -> bool:
        """Whether ``session`` is this slot's distinct session."""
        return session is self.created()

    def commit(self) -> None:
        """Commit the distinct session's open transaction, if any."""
        session = self.created()
        if session is not None and session.in_transaction():
            session.commit()

    def release(self) -> None:
        """Close the distinct session and put the registry back as it was. Never raises."""
        session = self.created()
        try:
            if session is not None:
                session.close()
        except Exception:
            logger.exception("closing the distinct session %r failed", session)
        finally:
            scoped = self.installation.scoped
            if scoped is not None:
                if self.had_previous:
                    scoped.registry.set(self.previous)
                else:
                    scoped.registry.clear()
                self.previous = None


_current: contextvars.ContextVar[Slot | None] = contextvars.ContextVar(
    "sa_signals_current_slot", default=None
)
_pending: contextvars.ContextVar[collections.deque[_Batch] | None] = contextvars.ContextVar(
    "sa_signals_pending", default=None
)


def current_session() -> sa_orm.Session:
    """Return the distinct session of the running on_commit callback or commit-time receiver.

    The session is created on the first call and committed when the callback returns; for a
    ``scoped_session`` install, calling the ``scoped_session`` returns the same session.
    """
    slot = _current.get()
    if slot is None:
        msg = (
            "current_session() works only inside an on_commit callback or a commit-time"
            " receiver; elsewhere use your own session or sa_signals.distinct_session()."
        )
        raise OutsideCallbackError(msg)
    return slot.get()


def is_layer_session(session: sa_orm.Session) -> bool:
    """Whether ``session`` commits inside the commit-time work the layer is running for it.

    True for the distinct session of the running item, and for the committed session itself
    when an item commits it again: neither sends commit signals, so nothing can loop.
    """
    slot = _current.get()
    return slot is not None and (slot.origin is session or slot.holds(session))


def run(items: c.Iterable[Work], origin: sa_orm.Session, installation: Installation) -> None:
    """Run ``items`` in order, each in its own distinct session.

    Inside a running item, the new items are queued to run right after it (depth first) instead
    of recursing, so callbacks registering callbacks cannot exhaust the stack. The first error of
    a non-robust item is raised once every item has run.
    """
    batch = _Batch(iter(items), origin, installation)
    pending = _pending.get()
    if pending is not None:
        pending.appendleft(batch)
        return
    pending = collections.deque((batch,))
    token = _pending.set(pending)
    first_error: Exception | None = None
    work: Work | None = None
    try:
        while pending:
            current = pending[0]
            work = next(current.items, None)
            if work is None:
                pending.popleft()
                continue
            error = _run_one(work, current.origin, current.installation)
            if error is not None and first_error is None:
                first_error = error
    except BaseException as exc:
        # KeyboardInterrupt, or the task's cancellation while a callback awaited.
        if work is not None:
            logger.error("commit-time call %s was interrupted by %r", describe(work.func), exc)
        raise
    finally:
        _pending.reset(token)
        dropped = [describe(item.func) for batch in pending for item in batch.items]
        if dropped:
            logger.error(
                "%d commit-time call(s) did not run: the run was interrupted (%s)",
                len(dropped),
                ", ".join(dropped),
            )
    if first_error is not None:
        raise first_error


def _run_one(work: Work, origin: sa_orm.Session, installation: Installation) -> Exception | None:
    was_open = origin.in_transaction()
    aio = installation.aio
    slot: Slot = DistinctSlot(installation, origin) if aio is None else aio.slot(origin)
    token = _current.set(slot)
    try:
        try:
            if work.is_coroutine and aio is None:
                raise _coroutine_error(work.func)
            result = work.func(*work.args, **(work.kwargs or {}))
            if inspect.iscoroutine(result):
                if aio is None:
                    result.close()
                    raise returned_coroutine_error(work.func)
                aio.await_(result)
            slot.commit()
        finally:
            slot.release()
            _current.reset(token)
        if not was_open and origin.in_transaction():
            _close_quietly(origin)
            msg = (
                f"{describe(work.func)} began a transaction on the session that had committed;"
                " it was rolled back. Inside a callback use the distinct session: call the"
                " scoped_session, or sa_signals.current_session()."
            )
            raise SessionLeftOpenError(msg)
    except Exception as exc:
        report(work, origin if aio is None else aio.public(origin), exc, aio)
        return None if work.robust else exc
    return None


def _coroutine_error(func: object) -> CoroutineMisuseError:
    msg = (
        f"{describe(func)} is a coroutine function, but the commit came from a synchronous"
        " Session where nothing can await it; use a plain function, or an AsyncSession."
    )
    return CoroutineMisuseError(msg)


def returned_coroutine_error(func: object) -> CoroutineMisuseError:
    """The error for a plain function that returned a coroutine, which was closed unawaited."""
    msg = (
        f"{describe(func)} returned a coroutine, which a synchronous Session cannot await; it"
        " was closed without running. Use a plain function, or an AsyncSession."
    )
    return CoroutineMisuseError(msg)


def _close_quietly(session: sa_orm.Session) -> None:
    try:
        session.rollback()
    except Exception:
        logger.exception("rolling back %r failed", session)


def report(work: Work, origin: object, exc: Exception, aio: AsyncSupport | None) -> None:
    """Log ``exc`` raised by ``work`` and send it on the matching failure signal."""
    if work.signal is None:
        logger.error("on_commit callback %s failed", describe(work.func), exc_info=exc)
        send_failure(signals.on_commit_failed, origin, aio, callback=work.func, exception=exc)
    else:
        report_receiver(work.signal, work.func, origin, exc, aio)


def report_receiver(
    signal: Signal, receiver: object, origin: object, exc: Exception, aio: AsyncSupport | None
) -> None:
    """Log a failing receiver of ``signal`` and send it on ``receiver_failed``."""
    logger.error("receiver %s of %s failed", describe(receiver), signal.name, exc_info=exc)
    send_failure(
        signals.receiver_failed, origin, aio, signal=signal, receiver=receiver, exception=exc
    )


def send_failure(
    signal: Signal, sender: object, aio: AsyncSupport | None, /, **kwargs: t.Any
) -> None:
    """Send a failure signal; a receiver that raises here is only logged."""
    if not signal.receivers:
        return
    for receiver, is_coroutine in signal.receivers_in_order(sender):
        try:
            if is_coroutine and aio is None:
                raise _coroutine_error(receiver)
            result = receiver(sender, **kwargs)
            if inspect.iscoroutine(result):
                if aio is None:
                    result.close()
                    raise returned_coroutine_error(receiver)
                aio.await_(result)
        except Exception:
            logger.exception("receiver %s of %s failed", describe(receiver), signal.name)
