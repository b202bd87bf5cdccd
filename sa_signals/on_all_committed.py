"""``on_all_committed()``: run a callback once the transactions of several sessions committed.

Rails' ``after_all_transactions_commit``, for the sessions an application holds at once: one
per database, or several of one request. Each session gets an on_commit callback of its own
(an arrival), with the savepoint and rollback rules of :func:`~sa_signals.on_commit`; the one
that arrives last, when every other one did, calls the callback. An arrival dropped by a
rollback never arrives, so the callback never runs.
"""

from __future__ import annotations

import typing as t

import sqlalchemy.util.concurrency as sa_concurrency

from ._core.failures import WRAPPED_CALLBACK_ATTR
from ._core.join import Join
from ._dispatch import is_coroutine_function
from ._log import describe
from .on_commit import on_commit

if t.TYPE_CHECKING:
    import collections.abc as c

    from .typing import AsyncCallback
    from .typing import Callback
    from .typing import SessionTarget


def on_all_committed(
    callback: Callback | AsyncCallback, /, *targets: SessionTarget, robust: bool = True
) -> None:
    """Run ``callback`` once the outermost transaction of every one of ``targets`` committed.

    ``targets`` are sessions or scoped sessions, as :func:`~sa_signals.on_commit` takes them
    (an ``AsyncSession`` also takes a coroutine function). The callback is dropped if any of
    those transactions, or a savepoint of one that was open at registration, rolls back; a
    target not in a transaction counts as committed already, so with none in a transaction
    the callback runs at once. It runs once, after the last of those COMMITs, as an on_commit
    callback of the session that committed last: in a distinct session of its factory, after
    that session's own callbacks registered before it, reported or raised as ``robust`` says.

    The transactions are not atomic together: one may commit while another rolls back, and then
    the callback does not run, although the first one's data is committed.
    """
    if not targets:
        msg = (
            "on_all_committed() needs the sessions to wait for:"
            " on_all_committed(callback, session, other_session)."
        )
        raise TypeError(msg)
    if not callable(callback):
        msg = f"on_all_committed() needs a callable, got {callback!r}"
        raise TypeError(msg)
    join = Join(range(len(targets)))
    arrival = _AsyncArrival if is_coroutine_function(callback) else _Arrival
    for index, target in enumerate(targets):
        on_commit(arrival(join, index, callback), target, robust=robust)


async def on_all_committed_async(
    callback: Callback | AsyncCallback, /, *targets: SessionTarget, robust: bool = True
) -> None:
    """Register ``callback`` like :func:`on_all_committed`; if no target is in a transaction,
    run it now and return once it is done (awaited if it is a coroutine function)."""
    await sa_concurrency.greenlet_spawn(on_all_committed, callback, *targets, robust=robust)


class _Arrival:
    """The on_commit callback of one session: calls the callback if it is the last to arrive."""

    __slots__ = (WRAPPED_CALLBACK_ATTR, "index", "join")

    def __init__(self, join: Join, index: int, callback: c.Callable[[], object]) -> None:
        self.join = join
        self.index = index
        # Failures are reported as the user's callback's (see failures.report()).
        setattr(self, WRAPPED_CALLBACK_ATTR, callback)

    def __call__(self) -> object:
        if self.join.arrive(self.index):
            return getattr(self, WRAPPED_CALLBACK_ATTR)()
        return None

    def __repr__(self) -> str:
        callback = getattr(self, WRAPPED_CALLBACK_ATTR)
        return f"<on_all_committed({describe(callback)}), session {self.index + 1}>"


class _AsyncArrival(_Arrival):
    """An arrival for a coroutine function, itself one, so that on_commit() checks it as such."""

    __slots__ = ()

    async def __call__(self) -> object:
        if self.join.arrive(self.index):
            return await getattr(self, WRAPPED_CALLBACK_ATTR)()
        return None
