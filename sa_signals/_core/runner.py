"""Runs commit-time work in batches, each call inside a swapped-in distinct session.

One loop serves sync and async installs: an item that returns a coroutine is awaited through
SQLAlchemy's greenlet (see :mod:`.aio`), and the slot commits and closes an ``AsyncSession`` by
awaiting. The run under way lives in a context variable, but counts only for the thread and
asyncio task that started it, while it lasts: a task, thread or copied context started by a
callback commits as if no callback were running.
"""

from __future__ import annotations

import collections
import collections.abc as c
import contextlib
import contextvars
import sys
import threading
import types
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from .._log import describe
from .._log import logger
from ..exceptions import ChangeLoopError
from ..exceptions import OutsideCallbackError
from .aio import AWAIT
from .failures import close_quietly
from .failures import is_closed_context_error
from .failures import left_open_error
from .failures import report
from .failures import returned_coroutine_error
from .slot import RegistrySwap
from .slot import Slot
from .state import TRANSACTION_FIELDS_KNOWN
from .work import func_of
from .work import robust_of
from .work import Work

if t.TYPE_CHECKING:
    from .state import Installation
    from .state import Item

MAX_ROUNDS = 10
"""How many rounds of change sets commit-time work may cause, each by committing what the last
one sent; the sends of the round after are dropped and reported (see :func:`later`)."""

_CoroutineType = types.CoroutineType
_get_ident = threading.get_ident
_FIELDS_KNOWN = TRANSACTION_FIELDS_KNOWN


class _Batch:
    __slots__ = ("away_from", "installation", "interrupted", "items", "origin", "slot")

    def __init__(
        self,
        items: c.Iterator[Item],
        origin: sa_orm.Session,
        installation: Installation,
        away_from: sa.Connection | None = None,
    ) -> None:
        self.items = items
        self.origin = origin
        self.installation = installation
        self.away_from = away_from
        self.slot: Slot | None = None
        self.interrupted = False
        """Set when an item queues a nested batch, which must run before the next item."""


class Run:
    """The commit-time work under way in one thread or task."""

    __slots__ = (
        "batches",
        "live",
        "next_round",
        "raises",
        "round",
        "slot",
        "swaps",
        "task",
        "thread",
    )

    def __init__(self, first: _Batch, raises: bool) -> None:
        self.batches = collections.deque((first,))
        """Batches to run, the running one first; a nested batch goes in front of it."""
        self.next_round: list[_Batch] = []
        """Change sets of commits made by this round's work, sent once it is done."""
        self.round = 0
        self.slot: Slot | None = None
        """The slot of the item being run; None between items and while a failure is reported."""
        self.swaps: dict[int, RegistrySwap] = {}
        """One swap per scoped registry, by identity, for the whole run."""
        self.thread = _get_ident()
        self.task = current_task()
        self.live = True
        self.raises = raises
        """Whether the next strict failure is returned, to be raised (not reported): true until
        one was, so that every other failure is reported instead, each failure once."""


_run: contextvars.ContextVar[Run | None] = contextvars.ContextVar("sa_signals_run", default=None)


def current_task() -> object:
    """Return the asyncio task the caller runs in, or None outside one.

    asyncio is only looked up: importing it would slow every sync program, and a program that
    never imported it runs no task.
    """
    aio = sys.modules.get("asyncio")
    if aio is None:
        return None
    loop = aio._get_running_loop()
    return None if loop is None else aio.current_task(loop)


def active_run() -> Run | None:
    """Return the run under way in this thread and task, if any.

    A context copied while a run was under way (a task or thread a callback started,
    ``contextvars.copy_context()``) still holds it; there, and once it ended, it does not count.
    """
    run = _run.get()
    if run is None or not run.live or run.thread != _get_ident() or run.task is not current_task():
        return None
    return run


def current_session() -> sa_orm.Session:
    """Return the distinct session of the running on_commit callback or commit-time receiver.

    The session is created on the first call and committed when the callback returns; for a
    ``scoped_session`` install, calling the ``scoped_session`` returns the same session.
    """
    return current_slot("current_session").get()


def current_slot(name: str) -> Slot:
    """Return the slot of the running call, or raise the error ``name()`` gives outside one."""
    run = active_run()
    slot = run.slot if run is not None else None
    if slot is not None:
        return slot
    if _run.get() is not None:
        msg = (
            f"{name}() was called from another thread or asyncio task than the running"
            " callback; pass the session to that code, or use sa_signals.distinct_session()."
        )
    else:
        msg = (
            f"{name}() works only inside an on_commit callback or a commit-time receiver;"
            " elsewhere use your own session or sa_signals.distinct_session()."
        )
    raise OutsideCallbackError(msg)


def is_layer_session(session: sa_orm.Session) -> bool:
    """Whether ``session`` commits inside the commit-time work the layer is running for it.

    True for the distinct session of the running item, and for the committed session itself
    when an item commits it again: neither sends commit signals, so nothing can loop.
    """
    run = active_run()
    if run is None:
        return False
    slot = run.slot
    return slot is not None and (slot.origin is session or slot.holds(session))


def later(items: c.Sequence[Item], origin: sa_orm.Session, installation: Installation) -> bool:
    """Queue ``items`` for the next round of the run under way; False if there is none.

    The change sets of a commit made by commit-time work go there: sent once everything the
    current round caused has run, at most :data:`MAX_ROUNDS` rounds deep.
    """
    run = active_run()
    if run is None:
        return False
    run.next_round.append(_Batch(iter(items), origin, installation))
    return True


def run(
    items: c.Iterable[Item],
    origin: sa_orm.Session,
    installation: Installation,
    *,
    away_from: sa.Connection | None = None,
    raise_first: bool = True,
) -> Exception | None:
    """Run ``items`` in order, each in its own distinct session; return the first error of a
    non-robust item, for the caller to raise.

    A failure is reported (logged and sent on its failure signal) unless it is returned; with
    ``raise_first=False`` (the caller raises another error already) nothing is returned.

    Inside a running item, the new items are queued to run right after it (depth first) instead
    of recursing, so callbacks registering callbacks cannot exhaust the stack; their errors are
    returned by the outermost call. With ``away_from``, a Connection finishing its COMMIT,
    distinct sessions that would be bound to it are bound to its Engine.
    """
    batch = _Batch(iter(items), origin, installation, away_from)
    current = active_run()
    if current is not None:
        current.batches[0].interrupted = True
        current.batches.appendleft(batch)
        return None
    state = Run(batch, raise_first)
    token = _run.set(state)
    first_error: Exception | None = None
    try:
        while True:
            batches = state.batches
            while batches:
                running = batches[0]
                running.interrupted = False
                error = _run_batch(state, running)
                if error is not None and first_error is None:
                    first_error = error
                if not running.interrupted:  # done, not interrupted by a nested batch
                    batches.popleft()
            if not state.next_round:
                break
            state.round += 1
            if state.round > MAX_ROUNDS:
                _drop_round(state)
                break
            batches.extend(state.next_round)
            state.next_round = []
    finally:
        state.live = False
        state.slot = None
        for swap in state.swaps.values():
            swap.restore()
        _run.reset(token)
        dropped = [describe(func_of(item)) for batch in state.batches for item in batch.items]
        if dropped:
            logger.error(
                "%d commit-time call(s) did not run: the run was interrupted (%s)",
                len(dropped),
                ", ".join(dropped),
            )
    return first_error


def _run_batch(state: Run, batch: _Batch) -> Exception | None:
    """Run the items of ``batch`` until it is done or an item queues a nested batch.

    The batch's slot (and its emptied registry) stays in place from one item to the next; only
    the error path steps out of it (see :func:`_outside`).
    """
    slot = batch.slot
    if slot is None:
        installation = batch.installation
        aio = installation.aio
        scoped = installation.scoped if aio is None else aio.scoped
        swap: RegistrySwap | None = None
        if scoped is not None:
            swap = state.swaps.get(id(scoped.registry))
            if swap is None:
                swap = state.swaps[id(scoped.registry)] = RegistrySwap(scoped.registry)
        slot = batch.slot = Slot(installation, batch.origin, swap, batch.away_from)
    for other in state.swaps.values():
        if other is not slot.swap:
            other.restore()  # a batch of another installation sees the others as before
    if slot.swap is not None:
        slot.swap.empty()
    state.slot = slot
    try:
        return _run_items(state, batch, slot)
    finally:
        state.slot = None


def _run_items(state: Run, batch: _Batch, slot: Slot) -> Exception | None:
    origin = slot.origin
    # Whether the committed session is in a transaction: only the testing helpers run items
    # while it is; an item that opens it is settled (which closes it), so the flag is read
    # again only then. After each item, the committed session's `_transaction` is read from
    # its __dict__ (a dict lookup costs less than the attribute read on a Session).
    origin_open = _open(origin)
    fields: _ByKey = origin.__dict__ if _FIELDS_KNOWN else _Fields(origin)
    # `made in values` once the item made a distinct session: looked up in the registry's
    # storage, the same for the whole batch (one thread, one task).
    values, made = _storage(slot)
    # An async install awaits a coroutine an item returned right here, in the same try as the
    # call: its failure is the item's. A sync install leaves it to _settle(), which refuses it.
    await_ = None if slot.aio is None else AWAIT
    first_error: Exception | None = None
    item: Item | None = None
    try:
        for item in batch.items:
            try:
                result = item()
                if result is not None and await_ is not None and type(result) is _CoroutineType:
                    await_(result)
                    result = None
            except Exception as exc:
                error = _failed(state, item, slot, exc, origin_open)
                origin_open = _open(origin)
            except BaseException:
                slot.release()
                raise
            else:
                if result is None and fields["_transaction"] is None and made not in values:
                    # The common case: nothing returned, made or left open: nothing to settle.
                    if batch.interrupted:
                        break  # the item queued a nested batch: it runs first
                    continue
                error = _settle(state, item, slot, result, origin_open)
                origin_open = _open(origin)
            if error is not None and first_error is None:
                first_error = error
            if batch.interrupted:
                break
    except BaseException as exc:
        # KeyboardInterrupt, a task's cancellation while a callback awaited, or the like: the
        # rest of the run is dropped (and logged by run()).
        if item is not None:
            logger.error("commit-time call %s was interrupted by %r", describe(func_of(item)), exc)
        raise
    return first_error


class _ByKey(t.Protocol):
    def __getitem__(self, key: str, /) -> object: ...


class _Fields:
    """Stands for the committed session's ``__dict__`` where its layout is not known."""

    __slots__ = ("session",)

    def __init__(self, session: sa_orm.Session) -> None:
        self.session = session

    def __getitem__(self, key: str) -> object:
        return True if self.session.in_transaction() else None


def _storage(slot: Slot) -> tuple[c.Container[object], object]:
    """Return where the registry of ``slot`` keeps a session made by the running item, and
    under which key."""
    if slot.local is not None:  # a thread-local registry's
        return slot.local.__dict__, "value"
    if slot.by_task is not None:  # an async_scoped_session's, keyed by this task
        return slot.by_task, slot.key
    return _Made(slot), "value"


class _Made:
    """Stands for a thread-local registry's storage: "value" is in it once a session was made."""

    __slots__ = ("slot",)

    def __init__(self, slot: Slot) -> None:
        self.slot = slot

    def __contains__(self, key: object) -> bool:
        return self.slot.created() is not None


def _open(session: sa_orm.Session) -> bool:
    """Whether ``session`` is in a transaction."""
    return session._transaction is not None if _FIELDS_KNOWN else session.in_transaction()


def _failed(
    state: Run, item: Item, slot: Slot, exc: Exception, was_open: bool
) -> Exception | None:
    """Close what the failed item made (and the committed session, if it began a transaction
    there); return ``exc`` to be raised, or report it (see :func:`_reported`)."""
    slot.release()
    origin = slot.origin
    if not was_open and is_closed_context_error(exc):
        error = left_open_error(func_of(item))
        error.__cause__ = exc
        exc = error
    with _outside(state, slot):
        if not was_open and origin.in_transaction():
            close_quietly(origin)
        return _reported(state, item, slot, exc)


def _settle(
    state: Run, item: Item, slot: Slot, result: object, was_open: bool
) -> Exception | None:
    """Finish an item that returned: refuse a coroutine it returned where nothing awaits it
    (one of an async install was awaited already), commit its distinct session, check what it
    left behind."""
    if type(result) is _CoroutineType:
        result.close()  # never awaited: close it rather than leak a RuntimeWarning
        return _failed(state, item, slot, returned_coroutine_error(func_of(item)), was_open)
    origin = slot.origin
    try:
        made = slot.created()
        if made is not None:
            slot.finish(made)
        if not was_open and _open(origin):
            with _outside(state, slot):
                close_quietly(origin)
            raise left_open_error(func_of(item))
    except Exception as exc:
        with _outside(state, slot):
            return _reported(state, item, slot, exc)
    return None


def _reported(state: Run, item: Item, slot: Slot, exc: Exception) -> Exception | None:
    """Return ``exc`` if it is the run's first strict failure, to be raised; else report it."""
    if state.raises and not robust_of(item):
        state.raises = False
        return exc
    _report(item, slot, exc)
    return None


@contextlib.contextmanager
def _outside(state: Run, slot: Slot) -> c.Iterator[None]:
    """Step out of ``slot`` (no current slot, the registry as before the run) for a while.

    Failure receivers and the rollback of a misused committed session see the state the
    committing code left, as if no item were running. The registry is emptied again after,
    for the next item.
    """
    state.slot = None
    swap = slot.swap
    if swap is not None:
        swap.restore()
    try:
        yield
    finally:
        state.slot = slot
        if swap is not None:
            swap.empty()


def _report(item: Item, slot: Slot, exc: Exception) -> None:
    aio = slot.aio
    origin = slot.origin if aio is None else aio.public(slot.origin)
    if type(item) is Work:
        report(item.func, item.signal, origin, exc, aio)
    else:
        report(item, None, origin, exc, aio)


def _drop_round(state: Run) -> None:
    """Report the sends of a round past :data:`MAX_ROUNDS`, which do not run."""
    for batch in state.next_round:
        aio = batch.installation.aio
        origin = batch.origin if aio is None else aio.public(batch.origin)
        for item in batch.items:
            func = func_of(item)
            signal = item.signal if type(item) is Work else None
            name = signal.name if signal is not None else "on_commit"
            msg = (
                f"{describe(func)} was not sent {name}: commit-time work committed changes"
                f" {MAX_ROUNDS} rounds in a row, each round's receivers writing what the next"
                " round reports. Make the receiver's write conditional, so that it stops."
            )
            report(func, signal, origin, ChangeLoopError(msg), aio)
    state.next_round = []
