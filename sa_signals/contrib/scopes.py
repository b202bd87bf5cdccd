"""``Scope``: a ``scopefunc`` for scoped sessions keyed by a unit of work, cleaned at its end.

A ``Scope`` keeps its current key in a context variable, so it follows threads and asyncio tasks
alike: each thread, and each task (which runs in a copy of its creator's context), sees the key
entered in it. It serves ``scoped_session`` and ``async_scoped_session`` registries; units with
an ``async_scoped_session`` run with ``async with scope.enter_async(key):``.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextlib
import contextvars
import threading
import typing as t

import sqlalchemy.orm as sa_orm
import sqlalchemy.util as sa_util

from .._core.state import async_api
from .._log import logger
from .._not_installed import warn_if_nothing_installed
from ..exceptions import ScopeError

if t.TYPE_CHECKING:
    import sqlalchemy.ext.asyncio as sa_asyncio

AnyScoped: t.TypeAlias = "sa_orm.scoped_session[t.Any] | sa_asyncio.async_scoped_session[t.Any]"
"""A ``scoped_session`` or an ``async_scoped_session``."""

T = t.TypeVar("T")

_NO_KEY: t.Final = object()


class Scope:
    """A ``scopefunc`` whose key is set for the duration of a unit of work.

    Build the ``scoped_session`` with :meth:`scoped_session` (or pass ``scopefunc=scope`` and
    :meth:`track` it), then run each unit of work inside :meth:`enter`::

        scope = Scope()
        Session = scope.scoped_session(sa_orm.sessionmaker(engine))

        with scope.enter(job_id):
            Session.add(...)
            Session.commit()

    On leaving :meth:`enter`, the session of every tracked ``scoped_session`` is removed (closed,
    so an uncommitted transaction rolls back) and its key deleted from the registry, also when
    the block raised or closing failed: no key outlives its unit of work. Calling the scope
    outside a unit raises :class:`~sa_signals.ScopeError`.

    For an ``async_scoped_session`` (:meth:`async_scoped_session`), run each unit inside
    ``async with scope.enter_async(key):``, whose exit awaits ``AsyncSession.close()``.
    """

    def __init__(self, name: str = "sa_signals_scope") -> None:
        self._key: contextvars.ContextVar[t.Hashable] = contextvars.ContextVar(name)
        self._lock = threading.Lock()
        self._entered: set[t.Hashable] = set()
        self._sessions: list[AnyScoped] = []

    def __repr__(self) -> str:
        return f"Scope({self._key.name!r})"

    def __call__(self) -> t.Hashable:
        """Return the key of the unit of work being run."""
        key = self._key.get(_NO_KEY)
        if key is _NO_KEY:
            msg = (
                "the scoped_session was used outside a unit of work: run the code inside"
                " 'with scope.enter(key):' (or the integration's middleware)."
            )
            raise ScopeError(msg)
        return key

    def scoped_session(
        self, factory: sa_orm.sessionmaker[t.Any], /
    ) -> sa_orm.scoped_session[t.Any]:
        """Return a tracked ``scoped_session`` over ``factory`` with this scope as scopefunc."""
        scoped: sa_orm.scoped_session[t.Any] = sa_orm.scoped_session(factory, scopefunc=self)
        self._sessions.append(scoped)
        return scoped

    def async_scoped_session(
        self, factory: sa_asyncio.async_sessionmaker[t.Any], /
    ) -> sa_asyncio.async_scoped_session[t.Any]:
        """Return a tracked ``async_scoped_session`` over ``factory`` with this scope."""
        import sqlalchemy.ext.asyncio as sa_asyncio  # needs greenlet: only when asked for

        scoped: sa_asyncio.async_scoped_session[t.Any] = sa_asyncio.async_scoped_session(
            factory, scopefunc=self
        )
        self._sessions.append(scoped)
        return scoped

    def track(self, scoped: AnyScoped, /) -> None:
        """Remove the sessions of ``scoped`` (built with ``scopefunc=scope``) at each exit.

        ``scoped`` is a ``scoped_session`` or an ``async_scoped_session``.
        """
        if not isinstance(scoped, sa_orm.scoped_session) and not _is_async_scoped(scoped):
            msg = f"track() takes a scoped_session or an async_scoped_session, got {scoped!r}"
            raise TypeError(msg)
        registry = scoped.registry
        # ThreadLocalRegistry (no scopefunc) subclasses ScopedRegistry.
        if getattr(registry, "scopefunc", None) is not self:
            msg = (
                f"{scoped!r} does not use this scope: build it with scope.scoped_session(factory)"
                " (scope.async_scoped_session(factory)) or pass scopefunc=scope."
            )
            raise TypeError(msg)
        if scoped not in self._sessions:
            self._sessions.append(scoped)

    @property
    def active(self) -> bool:
        """Whether a unit of work is entered in the current context."""
        return self._key.get(_NO_KEY) is not _NO_KEY

    def keys(self) -> set[t.Hashable]:
        """Return the keys that hold a session in any tracked registry (none between units)."""
        found: set[t.Hashable] = set()
        for scoped in self._sessions:
            registry: sa_util.ScopedRegistry[t.Any] = scoped.registry
            found.update(registry.registry)
        return found

    def sessions(self) -> list[t.Any]:
        """Return the sessions the current unit holds, in the order their registries were tracked.

        Each is a ``Session`` or an ``AsyncSession``; a registry the unit has not used has none.
        """
        key = self()
        found = []
        for scoped in self._sessions:
            registry: sa_util.ScopedRegistry[t.Any] = scoped.registry
            session = registry.registry.get(key)
            if session is not None:
                found.append(session)
        return found

    @contextlib.contextmanager
    def enter(self, key: t.Hashable = None, /) -> c.Iterator[t.Hashable]:
        """Run the block as the unit of work ``key`` (a fresh key if None); yield the key.

        A key already entered and not yet left (in any thread) raises
        :class:`~sa_signals.ScopeError`: two units sharing a key would share a session. So does a
        scope that tracks an ``async_scoped_session``: use :meth:`enter_async` for it.
        """
        if any(_is_async_scoped(scoped) for scoped in self._sessions):
            msg = (
                "this scope tracks an async_scoped_session, whose sessions are closed by"
                " awaiting: run the unit with 'async with scope.enter_async(key):'."
            )
            raise ScopeError(msg)
        warn_if_nothing_installed(f"a unit of work of {self!r}")
        key, token = self._begin(key)
        try:
            yield key
        finally:
            try:
                for session in self._pop(key):
                    _close_quietly(session)
            finally:
                self._finish(key, token)

    @contextlib.asynccontextmanager
    async def enter_async(self, key: t.Hashable = None, /) -> c.AsyncIterator[t.Hashable]:
        """Run the ``async with`` block as the unit of work ``key``; yield the key.

        As :meth:`enter`, for scopes with ``async_scoped_session`` registries (``scoped_session``
        ones too): on leaving, each ``AsyncSession`` is closed by awaiting ``close()``. The exit
        is shielded: a task cancelled while it runs (a client that disconnected) still closes
        every session and deletes every key, then raises ``CancelledError``.
        """
        warn_if_nothing_installed(f"a unit of work of {self!r}")
        key, token = self._begin(key)
        try:
            yield key
        finally:
            try:
                popped = self._pop(key)
                if popped:
                    await _shielded(self._aclose(popped))
            finally:
                self._finish(key, token)

    def _begin(self, key: t.Hashable) -> tuple[t.Hashable, contextvars.Token[t.Hashable]]:
        if key is None:
            key = object()
        with self._lock:
            if key in self._entered:
                msg = (
                    f"the scope key {key!r} is already in use by a running unit of work; give"
                    " each concurrent unit its own key."
                )
                raise ScopeError(msg)
            self._entered.add(key)
        return key, self._key.set(key)

    def _finish(self, key: t.Hashable, token: contextvars.Token[t.Hashable]) -> None:
        with self._lock:
            self._entered.discard(key)
        # Left in another context than it was entered in (a server that closes a streamed
        # response elsewhere), the reset fails: that context is not ours to change.
        with contextlib.suppress(ValueError):
            self._key.reset(token)

    def _pop(self, key: t.Hashable) -> list[t.Any]:
        # By key, not through the scopefunc, so that the end does not depend on the context
        # it runs in. Keys go first: a failing close cannot leave one behind.
        popped = []
        for scoped in self._sessions:
            registry: sa_util.ScopedRegistry[t.Any] = scoped.registry
            session = registry.registry.pop(key, None)
            if session is not None:
                popped.append(session)
        return popped

    @staticmethod
    async def _aclose(sessions: list[t.Any]) -> None:
        for session in sessions:
            if isinstance(session, sa_orm.Session):
                _close_quietly(session)
                continue
            try:
                await session.close()
            except Exception:
                logger.exception("closing %r failed", session)


def remove_session(scoped: sa_orm.scoped_session[t.Any], /) -> None:
    """Close the current session of ``scoped`` and delete its registry key. Never raises.

    Unlike ``scoped.remove()``, the key is deleted even when closing the session fails (the
    failure is logged on the ``sa_signals`` logger).
    """
    registry = scoped.registry
    try:
        if registry.has():
            _close_quietly(registry())
    finally:
        registry.clear()


def _close_quietly(session: sa_orm.Session) -> None:
    try:
        session.close()
    except Exception:
        logger.exception("closing %r failed", session)


def _is_async_scoped(scoped: object) -> bool:
    api = async_api()
    return api is not None and isinstance(scoped, api.async_scoped_session)


async def _shielded(coroutine: c.Coroutine[t.Any, t.Any, T]) -> T:
    """Await ``coroutine`` to its end in its own task, even if the caller is cancelled meanwhile.

    A cancellation that arrives meanwhile (anyio's cancel scopes deliver it again at every
    await) is raised once the coroutine is done.
    """
    task = asyncio.ensure_future(coroutine)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            cancelled = exc
    result = task.result()
    if cancelled is not None:
        raise cancelled
    return result
