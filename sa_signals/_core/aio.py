"""The asyncio side of an async install: its factory, and awaiting from SQLAlchemy's greenlet.

An ``AsyncSession`` runs its sync ``Session`` inside SQLAlchemy's greenlet, so the layer's
listeners run there too: coroutine callbacks and receivers are awaited from them through
SQLAlchemy's await bridge, inside the task that awaits ``commit()``. An :class:`AsyncSupport`
exists only once an async factory was installed, so ``sqlalchemy.ext.asyncio`` (and greenlet)
is imported by the user, never by this module.
"""

from __future__ import annotations

import collections.abc as c
import sys
import typing as t

import sqlalchemy.util.concurrency as sa_concurrency

if t.TYPE_CHECKING:
    import sqlalchemy.ext.asyncio as sa_asyncio
    import sqlalchemy.orm as sa_orm

T = t.TypeVar("T")

MISSING: t.Any = object()
"""``AsyncSupport.previous`` when the factory had no ``sync_session_class`` of its own."""

AWAIT: c.Callable[[c.Awaitable[t.Any]], t.Any] = getattr(
    sa_concurrency, "await_", None
) or getattr(sa_concurrency, "await_only")  # noqa: B009 - the SQLAlchemy 2.0 name
"""SQLAlchemy's function that awaits from inside its greenlet: the runner calls it directly for
every coroutine callback."""


class AsyncSupport:
    """What an install on an async factory added, and how its sessions are reached.

    The factory gets its own subclass of its ``sync_session_class``, so that the listeners never
    reach sessions of other factories; :meth:`restore` puts the original class back.
    """

    __slots__ = ("_async_session", "maker", "previous", "scoped", "session_class")

    def __init__(
        self,
        maker: sa_asyncio.async_sessionmaker[t.Any],
        scoped: sa_asyncio.async_scoped_session[t.Any] | None,
        session_class: type[sa_orm.Session],
        previous: t.Any,
    ) -> None:
        self.maker = maker
        self.scoped = scoped
        self.session_class = session_class
        self.previous = previous
        # Imported by the user already: an async factory exists.
        self._async_session = sys.modules["sqlalchemy.ext.asyncio"].async_session

    def apply(self) -> None:
        """Make the factory build its sync sessions from the installed subclass."""
        self.maker.configure(sync_session_class=self.session_class)

    def restore(self) -> None:
        """Give the factory back the ``sync_session_class`` it had before the install."""
        if self.previous is MISSING:
            self.maker.kw.pop("sync_session_class", None)
        else:
            self.maker.configure(sync_session_class=self.previous)

    def public(self, session: sa_orm.Session) -> t.Any:
        """Return the ``AsyncSession`` the user holds for ``session`` (itself if there is none)."""
        proxy = self._async_session(session)
        return session if proxy is None else proxy

    @staticmethod
    def await_(awaitable: c.Awaitable[T]) -> T:
        """Await ``awaitable`` from inside SQLAlchemy's greenlet."""
        result: T = AWAIT(awaitable)
        return result

    @staticmethod
    def can_await() -> bool:
        """Whether the caller runs inside SQLAlchemy's greenlet, where awaiting works."""
        return sa_concurrency.in_greenlet()
