"""Runs work after a commit, each item inside a swapped-in distinct session."""

from __future__ import annotations

import collections
import collections.abc as c
import contextlib
import contextvars
import functools
import inspect
import types
import typing as t

import sqlalchemy.orm as sa_orm

from ._dispatch import describe
from ._dispatch import logger
from ._dispatch import Signal
from ._failures import close_quietly
from ._failures import coroutine_error
from ._failures import left_open_error
from ._failures import report
from ._failures import returned_coroutine_error
from ._slot import DistinctSlot
from ._slot import RegistrySwap
from ._slot import Slot
from ._state import TRANSACTION_FIELDS_KNOWN
from .exceptions import OutsideCallbackError

if t.TYPE_CHECKING:
    from ._aio import AsyncSupport
    from ._state import Installation


@t.final
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

    def __call__(self) -> object:
        """Make the call as the synchronous runner does, where no coroutine can be awaited."""
        if self.is_coroutine:
            raise coroutine_error(self.func)
        kwargs = self.kwargs
        return self.func(*self.args, **kwargs) if kwargs else self.func(*self.args)


Item: t.TypeAlias = "c.Callable[..., object] | Work"
"""One call the runner makes: a commit-time receiver (a :class:`Work`), or an on_commit callback
as queued: the callback itself when robust (nothing is allocated per registration), a
:class:`Work` otherwise."""


class _Batch:
    __slots__ = ("installation", "interrupted", "items", "origin", "slot")

    def __init__(
        self, items: c.Iterator[Item], origin: sa_orm.Session, installation: Installation
    ) -> None:
        self.items = items
        self.origin = origin
        self.installation = installation
        self.slot: DistinctSlot | None = None
        self.interrupted = False
        """Set when an item queues a nested batch, which must run before the next item."""


_FIELDS_KNOWN = TRANSACTION_FIELDS_KNOWN

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


def run(items: c.Iterable[Item], origin: sa_orm.Session, installation: Installation) -> None:
    """Run ``items`` in order, each in its own distinct session.

    Inside a running item, the new items are queued to run right after it (depth first) instead
    of recursing, so callbacks registering callbacks cannot exhaust the stack. The first error of
    a non-robust item is raised once every item has run.
    """
    batch = _Batch(iter(items), origin, installation)
    pending = _pending.get()
    if pending is not None:
        pending[0].interrupted = True
        pending.appendleft(batch)
        return
    pending = collections.deque((batch,))
    token = _pending.set(pending)
    first_error: Exception | None = None
    swaps: dict[int, RegistrySwap] = {}
    try:
        while pending:
            current = pending[0]
            current.interrupted = False
            error = _run_batch(current, swaps)
            if error is not None and first_error is None:
                first_error = error
            if not current.interrupted:  # done, not interrupted by a nested batch
                pending.popleft()
    finally:
        for swap in swaps.values():
            swap.restore()
        _pending.reset(token)
        dropped = [describe(func_of(item)) for batch in pending for item in batch.items]
        if dropped:
            logger.error(
                "%d commit-time call(s) did not run: the run was interrupted (%s)",
                len(dropped),
                ", ".join(dropped),
            )
    if first_error is not None:
        raise first_error


def _run_batch(batch: _Batch, swaps: dict[int, RegistrySwap]) -> Exception | None:
    """Run the items of ``batch`` until it is done or an item queues a nested batch.

    For a synchronous install, the batch's slot stays current from one item to the next (set
    once, not once per item); only the error path steps out of it (see :func:`_outside`). An
    async install gets a slot per item from its :class:`~sa_signals._aio.AsyncSupport`.
    """
    installation = batch.installation
    aio = installation.aio
    if aio is not None:
        for other in swaps.values():
            other.restore()  # async items see the synchronous registries as before
        return _run_each(batch, functools.partial(_run_one_async, origin=batch.origin, aio=aio))
    slot = batch.slot
    if slot is None:
        swap: RegistrySwap | None = None
        scoped = installation.scoped
        if scoped is not None:
            # One swap per registry for the whole run (see RegistrySwap), keyed by identity.
            swap = swaps.get(id(scoped.registry))
            if swap is None:
                swap = swaps[id(scoped.registry)] = RegistrySwap(scoped.registry)
        slot = batch.slot = DistinctSlot(installation, batch.origin, swap)
    for other in swaps.values():
        if other is not slot.swap:
            other.restore()  # a nested batch of another installation sees them as before
    token = _current.set(slot)
    try:
        return _run_sync(batch, slot)
    finally:
        _current.reset(token)


def _run_sync(batch: _Batch, slot: DistinctSlot) -> Exception | None:
    origin = slot.origin
    swap = slot.swap
    if swap is not None and not swap.active:
        swap.empty()
    if not _FIELDS_KNOWN or origin.in_transaction():
        return _run_each(batch, functools.partial(_run_one, slot=slot))
    # The hot loop: _run_each() and _run_one() inlined for the common case. The committed
    # session is closed when a batch starts (but in the testing helpers) and closed again after
    # any item that opened it, so it is checked after items only. The registry's thread-local
    # storage is looked into after each item: the same dict for the whole batch, which runs in
    # one thread (None when the slot has no thread-local registry).
    values = slot.local.__dict__ if slot.local is not None else None
    first_error: Exception | None = None
    item: Item | None = None
    try:
        for item in batch.items:
            try:
                result = item()
            except Exception as exc:
                error = _failed(item, slot, exc, False)
            except BaseException:
                slot.release()
                raise
            else:
                if (
                    result is None
                    and origin._transaction is None
                    and ("value" not in values if values is not None else not slot.created())
                ):
                    # Nothing made, returned or left open: nothing to settle.
                    if batch.interrupted:
                        break  # the item queued a nested batch: it runs first
                    continue
                error = _settle(item, slot, result, False)
            if error is not None and first_error is None:
                first_error = error
            if batch.interrupted:
                break
    except BaseException as exc:
        _log_interrupted(item, exc)
        raise
    return first_error


def _run_each(batch: _Batch, run_one: c.Callable[[Item], Exception | None]) -> Exception | None:
    """Run the items of ``batch`` with ``run_one`` until it is done or one queues a nested batch;
    return the first error of a non-robust item."""
    first_error: Exception | None = None
    item: Item | None = None
    try:
        for item in batch.items:
            error = run_one(item)
            if error is not None and first_error is None:
                first_error = error
            if batch.interrupted:
                break
    except BaseException as exc:
        _log_interrupted(item, exc)
        raise
    return first_error


def _run_one(item: Item, slot: DistinctSlot) -> Exception | None:
    was_open = slot.origin.in_transaction()
    try:
        result = item()
    except Exception as exc:
        return _failed(item, slot, exc, was_open)
    except BaseException:
        slot.release()
        raise
    return _settle(item, slot, result, was_open)


def _failed(item: Item, slot: DistinctSlot, exc: Exception, was_open: bool) -> Exception | None:
    """Close what the failed item made (and the committed session, if it began a transaction
    there), report ``exc``; return it if the item is not robust."""
    slot.release()
    origin = slot.origin
    with _outside(slot):
        if not was_open and origin.in_transaction():
            close_quietly(origin)
        _report(item, origin, exc, None)
    return exc if not _robust(item) else None


def _settle(item: Item, slot: DistinctSlot, result: object, was_open: bool) -> Exception | None:
    """Finish an item that returned: commit its distinct session, check what it left behind."""
    origin = slot.origin
    try:
        try:
            if isinstance(result, types.CoroutineType):  # inspect.iscoroutine(), without a call
                result.close()
                raise returned_coroutine_error(func_of(item))
        except BaseException:
            slot.release()
            raise
        made = slot.created()
        if made is not None:
            slot.finish(made)
        if not was_open and origin.in_transaction():
            with _outside(slot):
                close_quietly(origin)
            raise left_open_error(func_of(item))
    except Exception as exc:
        with _outside(slot):
            _report(item, origin, exc, None)
        return exc if not _robust(item) else None
    return None


@contextlib.contextmanager
def _outside(slot: DistinctSlot) -> c.Iterator[None]:
    """Step out of ``slot`` (no current slot, the registry as before the run) for a while.

    Failure receivers and the rollback of a misused committed session see the state the
    committing code left, as if no item were running. The registry is emptied again after,
    for the next item.
    """
    token = _current.set(None)
    swap = slot.swap
    if swap is not None:
        swap.restore()
    try:
        yield
    finally:
        _current.reset(token)
        if swap is not None:
            swap.empty()


def _run_one_async(item: Item, origin: sa_orm.Session, aio: AsyncSupport) -> Exception | None:
    was_open = origin.in_transaction()
    slot = aio.slot(origin)
    token = _current.set(slot)
    error: Exception | None
    try:
        try:
            if type(item) is not Work:
                result = item()
            else:
                result = item.func(*item.args, **(item.kwargs or {}))
            if inspect.iscoroutine(result):
                aio.await_(result)
            slot.commit()
        finally:
            slot.release()
            _current.reset(token)
    except Exception as exc:
        error = exc
    else:
        error = None
    if not was_open and origin.in_transaction():
        close_quietly(origin)
        if error is None:
            error = left_open_error(func_of(item))
    if error is None:
        return None
    _report(item, aio.public(origin), error, aio)
    return error if not _robust(item) else None


def _log_interrupted(item: Item | None, exc: BaseException) -> None:
    # KeyboardInterrupt, a task's cancellation while a callback awaited, or the like: the rest
    # of the run is dropped (and logged by run()).
    if item is not None:
        logger.error("commit-time call %s was interrupted by %r", describe(func_of(item)), exc)


def func_of(item: Item) -> c.Callable[..., object]:
    """Return the callback or receiver ``item`` calls."""
    return item.func if type(item) is Work else item


def _robust(item: Item) -> bool:
    return item.robust if type(item) is Work else True


def _report(item: Item, origin: object, exc: Exception, aio: AsyncSupport | None) -> None:
    if type(item) is Work:
        report(item.func, item.signal, origin, exc, aio)
    else:
        report(item, None, origin, exc, aio)
