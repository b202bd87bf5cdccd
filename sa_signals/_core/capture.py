"""A test's capture of on_commit callbacks: every callback registered on the watched sessions
during a block, whatever their transactions do meanwhile.

A capture watches one session from where its queue stands, every session of an installation
whose state is made during the block, or both. It lists the callbacks that the block's
transactions committed (they ran), handed to a caller's Connection (held) or left queued, never
those rolled back. With ``execute``, it runs them all by the block's end, each once: committed
ones at their commit, held and queued ones when the block ends; what they register is run and
listed too, in run order (right after each, as callbacks registering callbacks run), also where
their own sessions are joined into the test's Connection.
"""

from __future__ import annotations

import types
import typing as t

from .failures import WRAPPED_CALLBACK_ATTR
from .runner import active_run
from .runner import run
from .state import state_of
from .state import Watch
from .work import func_of
from .work import robust_of
from .work import Work

if t.TYPE_CHECKING:
    import collections.abc as c

    import sqlalchemy.orm as sa_orm

    from .state import Installation
    from .state import Item
    from .state import Outcome
    from .state import SessionState


class Capture:
    """The callbacks of one capture block; an :class:`~.state.Observer`."""

    def __init__(self, installation: Installation, execute: bool) -> None:
        self.installation = installation
        self.execute = execute
        self.callbacks: list[c.Callable[..., object]] = []
        """What was registered, in order (run order, with ``execute``)."""
        self._watched: list[tuple[SessionState, sa_orm.Session]] = []
        self._taken: list[tuple[sa_orm.Session, list[Item]]] = []
        self._factory = False
        self._running = 0
        """How many callbacks this capture executes are under way."""
        self._executed: list[SessionState] = []
        """The states of sessions made by callbacks this capture executes: what they hold on a
        Connection counts as committed, like the callback that made them."""

    def begin(self, session: sa_orm.Session | None, *, factory: bool) -> None:
        """Watch ``session`` from where its queue stands, and with ``factory`` every session
        of the installation whose state is made from now on."""
        if session is not None:
            state = state_of(session)
            self.watch(state, session, len(state.queue))
        if factory:
            self._factory = True
            self.installation.observers.append(self)

    def watch(self, state: SessionState, session: sa_orm.Session, start: int) -> None:
        """Watch ``state``'s queue from ``start`` on (once: a watched state stays as it is)."""
        if any(watch.observer is self for watch in state.watches):
            return
        state.watches.append(Watch(self, start))
        self._watched.append((state, session))
        if self._running:
            self._executed.append(state)

    def ended(
        self, state: SessionState, session: sa_orm.Session, items: list[Item], outcome: Outcome
    ) -> list[Item]:
        """List the watched part of ``items``; with ``execute``, make sure it runs once."""
        watch = next(watch for watch in state.watches if watch.observer is self)
        start = min(watch.start, len(items))
        watch.start = 0  # the next transaction's queue starts empty
        mine = items[start:]
        if not mine or outcome == "rolled back":
            return items
        if not self.execute:
            self.callbacks.extend(func_of(item) for item in mine)
            return items
        if outcome == "committed":
            return items[:start] + [self._recording(item) for item in mine]
        if active_run() is not None and any(executed is state for executed in self._executed):
            # Held by the session of an executed callback: run right after that callback, as
            # if its session had committed (a nested batch of the run under way, whose errors
            # that run raises or reports).
            run([self._recording(item) for item in mine], session, self.installation)
            return items[:start]
        self._taken.append((session, mine))  # held: it runs when the block ends
        return items[:start]

    def finish(self, succeeded: bool) -> list[tuple[sa_orm.Session, list[Item]]]:
        """Stop watching; return what is to run now (with ``execute``, the block succeeded)."""
        if self._factory:
            self.installation.observers.remove(self)
            self._factory = False
        run_now = self.execute and succeeded
        to_run = self._taken if run_now else []
        if not run_now:
            self.callbacks.extend(func_of(item) for _, items in self._taken for item in items)
        self._taken = []
        for state, session in self._watched:
            watch = next((watch for watch in state.watches if watch.observer is self), None)
            if watch is None:
                continue
            state.watches.remove(watch)
            start = watch.start
            still = state.queue[start:]
            if not still:
                continue
            if run_now:
                del state.queue[start:]
                state.marks[:] = [mark for mark in state.marks if mark[1] < start]
                state.plain = None
                to_run.append((session, still))
            else:
                self.callbacks.extend(func_of(item) for item in still)
        self._watched = []
        return [(session, [self._recording(item) for item in items]) for session, items in to_run]

    def close(self) -> None:
        """Stop watching the sessions that callbacks executed after :meth:`finish` made."""
        for state, _ in self._watched:
            state.watches[:] = [watch for watch in state.watches if watch.observer is not self]
        self._watched = []
        self._executed = []

    def _recording(self, item: Item) -> Item:
        """Wrap ``item`` so that it is listed when it runs, with what it registers meanwhile."""
        func = func_of(item)
        observers = self.installation.observers

        def recording() -> object:
            self.callbacks.append(func)
            # A factory capture watches new sessions anyway; else only while the item runs.
            added = self not in observers
            if added:
                observers.append(self)
            self._running += 1
            try:
                result = item()
            except BaseException:
                self._leave(added)
                raise
            if isinstance(result, types.CoroutineType):
                return self._awaiting(result, added)
            self._leave(added)
            return result

        setattr(recording, WRAPPED_CALLBACK_ATTR, func)
        return recording if robust_of(item) else Work(recording, False)

    def _leave(self, added: bool) -> None:
        self._running -= 1
        if added:
            self.installation.observers.remove(self)

    async def _awaiting(self, coroutine: c.Coroutine[t.Any, t.Any, object], added: bool) -> object:
        try:
            return await coroutine
        finally:
            self._leave(added)
