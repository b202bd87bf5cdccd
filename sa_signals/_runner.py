"""Runs work after a commit, each item inside a swapped-in distinct session."""

from __future__ import annotations

import collections
import collections.abc as c
import contextlib
import contextvars
import inspect
import threading
import types
import typing as t

import sqlalchemy.orm as sa_orm
import sqlalchemy.util as sa_util

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
    __slots__ = ("installation", "items", "origin", "slot")

    def __init__(
        self, items: c.Iterator[Work], origin: sa_orm.Session, installation: Installation
    ) -> None:
        self.items = items
        self.origin = origin
        self.installation = installation
        self.slot: DistinctSlot | None = None


class Slot(t.Protocol):
    """The distinct session of the running commit-time call: :class:`DistinctSlot` or its twin."""

    origin: sa_orm.Session

    def get(self) -> sa_orm.Session: ...

    def created(self) -> sa_orm.Session | None: ...

    def holds(self, session: sa_orm.Session) -> bool: ...


def _local_layout_known() -> bool:
    # ThreadLocalRegistry keeps its object in a threading.local, as attribute "value"; checked
    # once here, so that a different layout falls back to the registry's own has().
    probe: sa_util.ThreadLocalRegistry[object] = sa_util.ThreadLocalRegistry(object)
    local = getattr(probe, "registry", None)
    if not isinstance(local, threading.local) or "value" in local.__dict__:
        return False
    made = probe()
    return local.__dict__.get("value") is made and probe.has()


_LOCAL_LAYOUT_KNOWN = _local_layout_known()


def _thread_local_of(registry: object) -> threading.local | None:
    """Return the ``threading.local`` a ``scoped_session``'s thread-local registry uses.

    Looking into its ``__dict__`` tells whether the registry holds a session without the
    ``AttributeError`` that ``has()`` raises and catches when it holds none (~0.25 us).
    """
    if _LOCAL_LAYOUT_KNOWN and type(registry) is sa_util.ThreadLocalRegistry:
        local = getattr(registry, "registry", None)
        if isinstance(local, threading.local):
            return local
    return None


class _Swap:
    """A scoped registry emptied for the items of one run and put back as it was afterwards.

    Emptying it once per run rather than once per item keeps an item that never touches the
    database cheap. It is put back before a failure is reported, before a batch of another
    installation runs, and at the end of the run, so nothing outside the items sees it empty.
    """

    __slots__ = ("active", "had_previous", "local", "previous", "registry")

    def __init__(self, registry: t.Any) -> None:
        self.registry = registry
        self.local = _thread_local_of(registry)
        self.active = False
        self.had_previous = False
        self.previous: sa_orm.Session | None = None

    def empty(self) -> None:
        """Save what the registry holds and empty it (callers check :attr:`active` first)."""
        registry = self.registry
        self.had_previous = registry.has()
        if self.had_previous:
            self.previous = registry()
            registry.clear()
        self.active = True

    def restore(self) -> None:
        """Put back what the registry held before :meth:`empty`."""
        if not self.active:
            return
        self.active = False
        if self.had_previous:
            self.registry.set(self.previous)
        else:
            self.registry.clear()
        self.previous = None


class DistinctSlot:
    """The distinct session of the item being run, created on first use.

    One slot serves the items of a batch of a synchronous install in turn, each getting a
    session of its own.
    """

    __slots__ = ("installation", "local", "origin", "registry", "scoped", "session", "swap")

    def __init__(
        self, installation: Installation, origin: sa_orm.Session, swap: _Swap | None
    ) -> None:
        self.installation = installation
        self.origin = origin
        self.session: sa_orm.Session | None = None
        self.swap = swap
        # Pinned for the whole batch, like the swap.
        self.scoped = installation.scoped if swap is not None else None
        self.registry = None if swap is None else swap.registry
        self.local = None if swap is None else swap.local

    def get(self) -> sa_orm.Session:
        """Return the distinct session, creating it (and registering it) on first use."""
        scoped = self.scoped
        if scoped is not None:
            session: sa_orm.Session = scoped()
            return session
        if self.session is None:
            self.session = self.installation.make_session(self.origin)
        return self.session

    def created(self) -> sa_orm.Session | None:
        """Return the distinct session if the item asked for one."""
        registry = self.registry
        if registry is None:
            return self.session
        local = self.local
        if local is not None:
            made: sa_orm.Session | None = local.__dict__.get("value")
            return made
        return registry() if registry.has() else None

    def holds(self, session: sa_orm.Session) -> bool:
        """Whether ``session`` is this slot's distinct session."""
        return session is self.created()

    def finish(self, session: sa_orm.Session) -> None:
        """Commit ``session``, the distinct session the item made, then close it."""
        try:
            if session.in_transaction():
                session.commit()
        finally:
            self._close(session)

    def release(self) -> None:
        """Close the distinct session the item made, if any. Never raises."""
        session = self.created()
        if session is not None:
            self._close(session)

    def _close(self, session: sa_orm.Session) -> None:
        # Empties the registry again for the next item; the slot serves a whole batch.
        try:
            session.close()
        except Exception:
            logger.exception("closing the distinct session %r failed", session)
        finally:
            self.session = None
            if self.registry is not None:
                self.registry.clear()


WRAPPED_CALLBACK_ATTR = "_sa_signals_callback"
"""Set by the testing helpers on a wrapper they queue in place of a user's callback."""

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
    swaps: dict[int, _Swap] = {}
    try:
        while pending:
            current = pending[0]
            error = _run_batch(current, pending, swaps)
            if error is not None and first_error is None:
                first_error = error
            if pending[0] is current:  # done, not interrupted by a nested batch
                pending.popleft()
    finally:
        for swap in swaps.values():
            swap.restore()
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


def _run_batch(
    batch: _Batch, pending: collections.deque[_Batch], swaps: dict[int, _Swap]
) -> Exception | None:
    """Run the items of ``batch`` until it is done or an item queues a nested batch.

    For a synchronous install, the batch's slot stays current from one item to the next (set
    once, not once per item); only the error path steps out of it (see :func:`_outside`). An
    async install gets a slot per item from its :class:`~sa_signals._aio.AsyncSupport`.
    """
    installation = batch.installation
    aio = installation.aio
    slot = batch.slot
    if aio is not None:
        for swap in swaps.values():
            swap.restore()  # async items see the synchronous registries as before
    elif slot is None:
        swap = None
        scoped = installation.scoped
        if scoped is not None:
            # One swap per registry for the whole run (see _Swap), keyed by identity.
            swap = swaps.get(id(scoped.registry))
            if swap is None:
                swap = swaps[id(scoped.registry)] = _Swap(scoped.registry)
        slot = batch.slot = DistinctSlot(installation, batch.origin, swap)
    if slot is not None:
        for other in swaps.values():
            if other is not slot.swap:
                other.restore()  # a nested batch of another installation sees them as before
    first_error: Exception | None = None
    work: Work | None = None
    token = _current.set(slot) if slot is not None else None
    try:
        if slot is not None:
            for work in batch.items:
                error = _run_one(work, slot)
                if error is not None and first_error is None:
                    first_error = error
                if pending[0] is not batch:  # the item queued a nested batch: it runs first
                    break
        else:
            assert aio is not None
            for work in batch.items:
                error = _run_one_async(work, batch.origin, installation, aio)
                if error is not None and first_error is None:
                    first_error = error
                if pending[0] is not batch:
                    break
    except BaseException as exc:
        # KeyboardInterrupt, or the task's cancellation while a callback awaited.
        if work is not None:
            logger.error("commit-time call %s was interrupted by %r", describe(work.func), exc)
        raise
    finally:
        if token is not None:
            _current.reset(token)
    return first_error


def _run_one(work: Work, slot: DistinctSlot) -> Exception | None:
    origin = slot.origin
    was_open = origin.in_transaction()
    swap = slot.swap
    if swap is not None and not swap.active:
        swap.empty()
    try:
        try:
            if work.is_coroutine:
                raise _coroutine_error(work.func)
            kwargs = work.kwargs
            result = work.func(*work.args, **kwargs) if kwargs else work.func(*work.args)
            if isinstance(result, types.CoroutineType):  # inspect.iscoroutine(), without a call
                result.close()
                raise returned_coroutine_error(work.func)
        except BaseException:
            slot.release()
            raise
        # slot.created(), inlined: most items never ask for a distinct session.
        registry = slot.registry
        if registry is None:
            made = slot.session
        elif slot.local is not None:
            made = slot.local.__dict__.get("value")
        else:
            made = registry() if registry.has() else None
        if made is not None:
            slot.finish(made)
        if not was_open and origin.in_transaction():
            with _outside(slot):
                _close_quietly(origin)
            raise _left_open_error(work.func)
    except Exception as exc:
        with _outside(slot):
            report(work, origin, exc, None)
        return None if work.robust else exc
    return None


@contextlib.contextmanager
def _outside(slot: DistinctSlot) -> c.Iterator[None]:
    """Step out of ``slot`` (no current slot, the registry as before the run) for a while.

    Failure receivers and the rollback of a misused committed session see the state the
    committing code left, as if no item were running.
    """
    token = _current.set(None)
    if slot.swap is not None:
        slot.swap.restore()
    try:
        yield
    finally:
        _current.reset(token)


def _run_one_async(
    work: Work, origin: sa_orm.Session, installation: Installation, aio: AsyncSupport
) -> Exception | None:
    was_open = origin.in_transaction()
    slot = aio.slot(origin)
    token = _current.set(slot)
    try:
        try:
            result = work.func(*work.args, **(work.kwargs or {}))
            if inspect.iscoroutine(result):
                aio.await_(result)
            slot.commit()
        finally:
            slot.release()
            _current.reset(token)
        if not was_open and origin.in_transaction():
            _close_quietly(origin)
            raise _left_open_error(work.func)
    except Exception as exc:
        report(work, aio.public(origin), exc, aio)
        return None if work.robust else exc
    return None


def _left_open_error(func: object) -> SessionLeftOpenError:
    msg = (
        f"{describe(func)} began a transaction on the session that had committed; it was"
        " rolled back. Inside a callback use the distinct session: call the scoped_session,"
        " or sa_signals.current_session()."
    )
    return SessionLeftOpenError(msg)


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
        # capture_on_commit(execute=True) runs a recording wrapper: report the user's callback.
        callback = getattr(work.func, WRAPPED_CALLBACK_ATTR, work.func)
        logger.error("on_commit callback %s failed", describe(callback), exc_info=exc)
        send_failure(signals.on_commit_failed, origin, aio, callback=callback, exception=exc)
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
