"""``Scope``: a ``scopefunc`` for ``scoped_session`` keyed by a unit of work, cleaned at its end.

A ``Scope`` keeps its current key in a context variable, so it follows threads and asyncio tasks
alike: each thread, and each task (which runs in a copy of its creator's context), sees the key
entered in it.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import contextvars
import threading
import typing as t

import sqlalchemy.orm as sa_orm
import sqlalchemy.util as sa_util

from .._dispatch import logger
from ..exceptions import ScopeError

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
    outside :meth:`enter` raises :class:`~sa_signals.ScopeError`.
    """

    def __init__(self, name: str = "sa_signals_scope") -> None:
        self._key: contextvars.ContextVar[t.Hashable] = contextvars.ContextVar(name)
        self._lock = threading.Lock()
        self._entered: set[t.Hashable] = set()
        self._sessions: list[sa_orm.scoped_session[t.Any]] = []

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

    def track(self, scoped: sa_orm.scoped_session[t.Any], /) -> None:
        """Remove the sessions of ``scoped`` (built with ``scopefunc=scope``) at each exit."""
        if not isinstance(scoped, sa_orm.scoped_session):
            msg = f"track() takes a scoped_session, got {scoped!r}"
            raise TypeError(msg)
        registry = scoped.registry
        # ThreadLocalRegistry (no scopefunc) subclasses ScopedRegistry.
        if getattr(registry, "scopefunc", None) is not self:
            msg = (
                f"{scoped!r} does not use this scope: build it with scope.scoped_session(factory)"
                " or scoped_session(factory, scopefunc=scope)."
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

    @contextlib.contextmanager
    def enter(self, key: t.Hashable = None, /) -> c.Iterator[t.Hashable]:
        """Run the block as the unit of work ``key`` (a fresh key if None); yield the key.

        A key already entered and not yet left (in any thread) raises
        :class:`~sa_signals.ScopeError`: two units sharing a key would share a session.
        """
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
        token = self._key.set(key)
        try:
            yield key
        finally:
            try:
                self._end(key)
            finally:
                with self._lock:
                    self._entered.discard(key)
                # Left in another context than it was entered in (a server that closes a streamed
                # response elsewhere), the reset fails: that context is not ours to change.
                with contextlib.suppress(ValueError):
                    self._key.reset(token)

    def _end(self, key: t.Hashable) -> None:
        # By key, not through the scopefunc, so that the end does not depend on the context
        # it runs in.
        for scoped in self._sessions:
            registry: sa_util.ScopedRegistry[t.Any] = scoped.registry
            session: sa_orm.Session | None = registry.registry.pop(key, None)
            if session is not None:
                _close_quietly(session)


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
