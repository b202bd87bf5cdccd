"""Runs work after a commit, each item inside a swapped-in distinct session."""

from __future__ import annotations

import collections
import collections.abc as c
import contextlib
import contextvars
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
from .exceptions import OutsideCallbackError

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
    swaps: dict[int, RegistrySwap] = {}
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
    batch: _Batch, pending: collections.deque[_Batch], swaps: dict[int, RegistrySwap]
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
            # One swap per registry for the whole run (see RegistrySwap), keyed by identity.
            swap = swaps.get(id(scoped.registry))
            if swap is None:
                swap = swaps[id(scoped.registry)] = RegistrySwap(scoped.registry)
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
                raise coroutine_error(work.func)
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
                close_quietly(origin)
            raise left_open_error(work.func)
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
            close_quietly(origin)
            raise left_open_error(work.func)
    except Exception as exc:
        report(work, aio.public(origin), exc, aio)
        return None if work.robust else exc
    return None
