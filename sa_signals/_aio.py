"""The machinery behind async installs: imported only once an async factory is met.

An ``AsyncSession`` runs its sync ``Session`` inside SQLAlchemy's greenlet, so the layer's
listeners run there too: coroutine callbacks and receivers are awaited from them through
SQLAlchemy's await bridge, inside the task that awaits ``commit()``. This module imports
``sqlalchemy.ext.asyncio``, which needs greenlet; sync users never import it.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import typing as t

import sqlalchemy.exc as sa_exc
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm
import sqlalchemy.util.concurrency as sa_concurrency

from ._dispatch import logger
from ._state import INSTALLATION_ATTR
from ._state import registry_holding
from .exceptions import CoroutineMisuseError
from .exceptions import InstallError
from .exceptions import ScopeError

if t.TYPE_CHECKING:
    from ._state import Installation
    from .typing import AsyncSessionFactory

T = t.TypeVar("T")

_await: c.Callable[[c.Awaitable[t.Any]], t.Any] = getattr(
    sa_concurrency, "await_", None
) or getattr(sa_concurrency, "await_only")  # noqa: B009 - the SQLAlchemy 2.0 name
_MISSING: t.Any = object()


class AsyncSupport:
    """What an install on an async factory added, and how its sessions are reached.

    The factory gets its own subclass of its ``sync_session_class``, so that the listeners never
    reach sessions of other factories; :meth:`restore` puts the original class back.
    """

    __slots__ = ("maker", "previous", "scoped", "session_class")

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

    def apply(self) -> None:
        """Make the factory build its sync sessions from the installed subclass."""
        self.maker.configure(sync_session_class=self.session_class)

    def restore(self) -> None:
        """Give the factory back the ``sync_session_class`` it had before the install."""
        if self.previous is _MISSING:
            self.maker.kw.pop("sync_session_class", None)
        else:
            self.maker.configure(sync_session_class=self.previous)

    @staticmethod
    def public(session: sa_orm.Session) -> t.Any:
        """Return the ``AsyncSession`` the user holds for ``session`` (itself if there is none)."""
        proxy = sa_asyncio.async_session(session)
        return session if proxy is None else proxy

    @staticmethod
    def await_(awaitable: c.Awaitable[T]) -> T:
        """Await ``awaitable`` from inside SQLAlchemy's greenlet."""
        result: T = _await(awaitable)
        return result

    @staticmethod
    def can_await() -> bool:
        """Whether the caller runs inside SQLAlchemy's greenlet, where awaiting works."""
        return sa_concurrency.in_greenlet()

    def slot(self, origin: sa_orm.Session) -> AsyncSlot:
        """Return the distinct-session slot of one commit-time call."""
        return AsyncSlot(self, origin)


def async_support(target: AsyncSessionFactory, *, create: bool) -> AsyncSupport | None:
    """Return the install of ``target``; a new, not yet applied one if ``create`` is set."""
    if isinstance(target, sa_asyncio.async_scoped_session):
        maker = target.session_factory
        scoped: sa_asyncio.async_scoped_session[t.Any] | None = target
        if not isinstance(maker, sa_asyncio.async_sessionmaker):
            msg = (
                f"the async_scoped_session {target!r} was built on {maker!r}; install() needs"
                " one built on an async_sessionmaker."
            )
            raise InstallError(msg)
    else:
        maker, scoped = target, None
    previous = maker.kw.get("sync_session_class", _MISSING)
    current: type[sa_orm.Session] = (
        maker.class_.sync_session_class if previous is _MISSING else previous
    )
    installation: Installation | None = current.__dict__.get(INSTALLATION_ATTR)
    if (
        installation is not None
        and installation.aio is not None
        and installation.aio.maker is maker
    ):
        return installation.aio
    if not create:
        return None
    subclass = type(current.__name__, (current,), {"__module__": current.__module__})
    return AsyncSupport(maker, scoped, subclass, previous)


class AsyncSlot:
    """The distinct ``AsyncSession`` of the item being run, created on first use."""

    __slots__ = ("aio", "had_previous", "origin", "previous", "session")

    def __init__(self, aio: AsyncSupport, origin: sa_orm.Session) -> None:
        self.aio = aio
        self.origin = origin
        self.session: sa_asyncio.AsyncSession | None = None
        self.previous: sa_asyncio.AsyncSession | None = None
        self.had_previous = False
        scoped = aio.scoped
        if scoped is not None:
            registry = scoped.registry
            if registry.has():
                self.had_previous = True
                self.previous = registry()
                registry.clear()

    def get_async(self) -> sa_asyncio.AsyncSession:
        """Return the distinct ``AsyncSession``, creating (and registering) it on first use."""
        scoped = self.aio.scoped
        if scoped is not None:
            session: sa_asyncio.AsyncSession = scoped()
            return session
        if self.session is None:
            self.session = self.aio.maker()
        return self.session

    def get(self) -> sa_orm.Session:
        """Return the sync ``Session`` of the distinct ``AsyncSession``."""
        return self.get_async().sync_session

    def created(self) -> sa_orm.Session | None:
        """Return the sync session behind the distinct ``AsyncSession``, if one was asked for."""
        session = self.created_async()
        return None if session is None else session.sync_session

    def created_async(self) -> sa_asyncio.AsyncSession | None:
        """Return the distinct ``AsyncSession`` if the item asked for one."""
        scoped = self.aio.scoped
        if scoped is None:
            return self.session
        registry = scoped.registry
        return registry() if registry.has() else None

    def holds(self, session: sa_orm.Session) -> bool:
        """Whether ``session`` is the sync session of this slot's distinct session."""
        created = self.created_async()
        return created is not None and created.sync_session is session

    def commit(self) -> None:
        """Commit the distinct session's open transaction, if any."""
        session = self.created_async()
        if session is None or not session.in_transaction():
            return
        try:
            self.aio.await_(session.commit())
        except sa_exc.MissingGreenlet as exc:
            msg = (
                "a callback run at once by on_commit() outside a transaction wrote through its"
                " distinct AsyncSession, which cannot be committed outside SQLAlchemy's"
                " greenlet; register it with `await sa_signals.on_commit_async(...)`."
            )
            raise CoroutineMisuseError(msg) from exc

    def release(self) -> None:
        """Close the distinct session and put the registry back as it was. Never raises."""
        session = self.created_async()
        try:
            if session is not None:
                if self.aio.can_await():
                    self.aio.await_(session.close())
                else:
                    session.sync_session.close()
        except Exception:
            logger.exception("closing the distinct session %r failed", session)
        finally:
            scoped = self.aio.scoped
            if scoped is not None:
                if self.had_previous:
                    scoped.registry.set(self.previous)
                else:
                    scoped.registry.clear()
                self.previous = None


@contextlib.asynccontextmanager
async def unit_of_work(factory: AsyncSessionFactory) -> c.AsyncIterator[sa_asyncio.AsyncSession]:
    """The async ``session_scope()``: commit on success, roll back on error, always close."""
    if not isinstance(factory, sa_asyncio.async_scoped_session):
        async with _commit_or_rollback(factory()) as session:
            yield session
        return
    registry = factory.registry
    if registry.has() and registry().in_transaction():
        msg = (
            "session_scope() was entered while the async_scoped_session's current session is"
            " in a transaction; pass that session down, or use distinct_session() for an"
            " independent one."
        )
        raise ScopeError(msg)
    try:
        async with _commit_or_rollback(factory()) as session:
            yield session
    finally:
        await factory.remove()


@contextlib.asynccontextmanager
async def distinct(factory: AsyncSessionFactory) -> c.AsyncIterator[sa_asyncio.AsyncSession]:
    """The async ``distinct_session()``: a fresh session swapped into the registry."""
    if not isinstance(factory, sa_asyncio.async_scoped_session):
        async with _commit_or_rollback(factory()) as session:
            yield session
        return
    session = factory.session_factory()
    with registry_holding(factory.registry, session):
        async with _commit_or_rollback(session):
            yield session


@contextlib.asynccontextmanager
async def _commit_or_rollback(
    session: sa_asyncio.AsyncSession,
) -> c.AsyncIterator[sa_asyncio.AsyncSession]:
    try:
        yield session
        await session.commit()
    except BaseException:
        try:
            await session.rollback()
        except Exception:
            logger.exception("rolling back %r after an error failed", session)
        raise
    finally:
        await session.close()
