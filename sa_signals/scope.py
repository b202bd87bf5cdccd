"""``session_scope()`` and ``distinct_session()``: the session-lifecycle recipes, done once."""

from __future__ import annotations

import collections.abc as c
import contextlib
import contextvars
import functools
import inspect
import threading
import typing as t

import sqlalchemy.orm as sa_orm

from ._core.runner import current_task
from ._core.slot import registry_holding
from ._core.state import async_api
from ._core.state import is_async_factory
from ._log import logger
from ._not_installed import warn_if_nothing_installed

if t.TYPE_CHECKING:
    import types

    import sqlalchemy.ext.asyncio as sa_asyncio

    from .typing import AsyncSessionFactory
    from .typing import SessionFactory

R = t.TypeVar("R")


Opener: t.TypeAlias = c.Callable[[], contextlib.AbstractContextManager[sa_orm.Session]]
AsyncOpener: t.TypeAlias = (
    "c.Callable[[], contextlib.AbstractAsyncContextManager[sa_asyncio.AsyncSession]]"
)


class SessionScope:
    """A unit of work over one session: a context manager, and a decorator.

    Over an async factory it is an async context manager (``async with``) and decorates
    ``async def`` functions. As a decorator it passes the session to the function as the
    keyword ``session``; a caller that passes ``session=`` itself keeps control of that session
    (no commit, no close), so decorated functions compose inside an outer scope.
    """

    def __init__(self, opener: Opener | None, async_opener: AsyncOpener | None = None) -> None:
        self._opener = opener
        self._async_opener = async_opener
        self._active: list[t.Any] = []

    def __enter__(self) -> sa_orm.Session:
        manager = self._sync_opener()
        session = manager.__enter__()
        self._active.append(manager)
        return session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool | None:
        result: bool | None = self._active.pop().__exit__(exc_type, exc, tb)
        return result

    async def __aenter__(self) -> sa_asyncio.AsyncSession:
        manager = self._get_async_opener()()
        session = await manager.__aenter__()
        self._active.append(manager)
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool | None:
        result: bool | None = await self._active.pop().__aexit__(exc_type, exc, tb)
        return result

    def __call__(self, func: c.Callable[..., R]) -> c.Callable[..., R]:
        if inspect.iscoroutinefunction(func):
            return self._wrap_async(func)
        opener = self._sync_opener

        @functools.wraps(func)
        def wrapper(*args: t.Any, **kwargs: t.Any) -> R:
            if kwargs.get("session") is not None:
                return func(*args, **kwargs)
            with opener() as session:
                return func(*args, session=session, **kwargs)

        return wrapper

    def _wrap_async(self, func: c.Callable[..., t.Any]) -> c.Callable[..., t.Any]:
        opener = self._get_async_opener()

        @functools.wraps(func)
        async def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
            if kwargs.get("session") is not None:
                return await func(*args, **kwargs)
            async with opener() as session:
                return await func(*args, session=session, **kwargs)

        return wrapper

    def _sync_opener(self) -> contextlib.AbstractContextManager[sa_orm.Session]:
        if self._opener is None:
            msg = (
                "this scope is over an async factory: use `async with`, or decorate an"
                " `async def` function."
            )
            raise TypeError(msg)
        return self._opener()

    def _get_async_opener(self) -> AsyncOpener:
        if self._async_opener is None:
            msg = (
                "this scope is over a synchronous factory: use `with`, or decorate a plain"
                " function; give an async_sessionmaker or async_scoped_session for `async with`."
            )
            raise TypeError(msg)
        return self._async_opener


def session_scope(factory: SessionFactory | AsyncSessionFactory, /) -> SessionScope:
    """Return a scope that yields a session, commits on success and rolls back on error.

    The session is always closed at the end; for a ``scoped_session``, ``remove()`` is called, so
    the registry holds nothing afterwards. An exception is re-raised after the rollback. Over an
    ``async_sessionmaker`` or ``async_scoped_session`` the same holds with ``async with``.

    A scope entered inside another unit of work of ``factory`` nests, as Django's ``atomic()``
    does: it yields that unit's session inside a SAVEPOINT, released on success and rolled back
    (with the on_commit callbacks registered in it) on error; the outer unit's commit stays the
    real one. For a ``scoped_session`` the outer unit is its current session when that is in a
    transaction or held by an open scope; for a ``sessionmaker``, the innermost open scope (or
    :func:`distinct_session`) over the same sessionmaker in the same thread and task.
    """
    if is_async_factory(factory):
        return SessionScope(None, functools.partial(_async_unit_of_work, factory))
    _check_factory(factory, "session_scope")
    return SessionScope(functools.partial(_unit_of_work, t.cast("SessionFactory", factory)))


def distinct_session(factory: SessionFactory | AsyncSessionFactory, /) -> SessionScope:
    """Return a scope over a fresh session that commits on its own, whatever the outer one does.

    For a ``scoped_session`` the fresh session is set into its registry for the duration (so
    ``Session()`` returns it) and the previous session is put back afterwards, its transaction
    untouched. Nests to any depth.

    .. note:: SQLite lets one connection write at a time: the distinct session cannot write
       while the outer session holds an open write transaction on the same database file.
    """
    if is_async_factory(factory):
        return SessionScope(None, functools.partial(_async_distinct, factory))
    _check_factory(factory, "distinct_session")
    return SessionScope(functools.partial(_distinct, t.cast("SessionFactory", factory)))


def _check_factory(factory: object, name: str) -> None:
    if not callable(factory) or isinstance(factory, sa_orm.Session):
        msg = f"{name}() needs a sessionmaker or a scoped_session, got {factory!r}"
        raise TypeError(msg)


class _Unit:
    """A unit of work opened by a scope: the factory, its session, and where it runs."""

    __slots__ = ("factory", "owner", "session")

    def __init__(self, factory: object, session: object) -> None:
        self.factory = factory
        self.session = session
        self.owner = _owner()


_units: contextvars.ContextVar[tuple[_Unit, ...]] = contextvars.ContextVar(
    "sa_signals_units", default=()
)
"""The units of work open in this context, innermost last. A task or thread started meanwhile
inherits them: :attr:`_Unit.owner` tells whose they are."""


def _owner() -> tuple[int, object]:
    """Return the thread and the asyncio task the code runs in."""
    return threading.get_ident(), current_task()


def _enclosing(factory: object, registry: t.Any) -> t.Any:
    """Return the session a scope over ``factory`` nests in, or None to open a unit of work.

    For a scoped ``factory`` (whose ``registry`` is given): its current session, if that is in a
    transaction or held by an open scope. For a sessionmaker: the session of the innermost open
    unit of ``factory`` in this thread and task.
    """
    if registry is not None:
        if not registry.has():
            return None
        current = registry()
        if current.in_transaction() or any(unit.session is current for unit in _units.get()):
            return current
        return None
    owner = _owner()
    for unit in reversed(_units.get()):
        if unit.factory is factory and unit.owner == owner:
            return unit.session
    return None


@contextlib.contextmanager
def _opened(factory: object, session: object) -> c.Iterator[None]:
    """Record ``session`` as the open unit of work of ``factory`` for the block.

    The block is the unit's body only: its commit, whose on_commit callbacks may open units of
    their own, comes after it.
    """
    token = _units.set((*_units.get(), _Unit(factory, session)))
    try:
        yield
    finally:
        _units.reset(token)


@contextlib.contextmanager
def _unit_of_work(factory: SessionFactory) -> c.Iterator[sa_orm.Session]:
    registry = factory.registry if isinstance(factory, sa_orm.scoped_session) else None
    outer: sa_orm.Session | None = _enclosing(factory, registry)
    if outer is not None:
        with outer.begin_nested():
            yield outer
        return
    warn_if_nothing_installed(f"session_scope({factory!r})")
    session = factory()
    try:
        with _commit_or_rollback(session), _opened(factory, session):
            yield session
    finally:
        if isinstance(factory, sa_orm.scoped_session):
            factory.remove()


@contextlib.contextmanager
def _distinct(factory: SessionFactory) -> c.Iterator[sa_orm.Session]:
    warn_if_nothing_installed(f"distinct_session({factory!r})")
    if not isinstance(factory, sa_orm.scoped_session):
        session = factory()
        with _commit_or_rollback(session), _opened(factory, session):
            yield session
        return
    session = factory.session_factory()
    with (
        registry_holding(factory.registry, session),
        _commit_or_rollback(session),
        _opened(factory, session),
    ):
        yield session


@contextlib.contextmanager
def _commit_or_rollback(session: sa_orm.Session) -> c.Iterator[sa_orm.Session]:
    try:
        yield session
        session.commit()
    except BaseException:
        _rollback_quietly(session)
        raise
    finally:
        session.close()


def _rollback_quietly(session: sa_orm.Session) -> None:
    # The original exception matters more than a failing rollback (a dropped connection, say).
    try:
        session.rollback()
    except Exception:
        logger.exception("rolling back %r after an error failed", session)


def _is_async_scoped(factory: object) -> bool:
    api = async_api()
    return api is not None and isinstance(factory, api.async_scoped_session)


@contextlib.asynccontextmanager
async def _async_unit_of_work(
    factory: AsyncSessionFactory,
) -> c.AsyncIterator[sa_asyncio.AsyncSession]:
    scoped = _is_async_scoped(factory)
    outer: sa_asyncio.AsyncSession | None = _enclosing(
        factory,
        factory.registry if scoped else None,  # type: ignore[union-attr]
    )
    if outer is not None:
        async with outer.begin_nested():
            yield outer
        return
    warn_if_nothing_installed(f"session_scope({factory!r})")
    session = factory()
    try:
        async with _async_commit_or_rollback(session):
            with _opened(factory, session):
                yield session
    finally:
        if scoped:
            await factory.remove()  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def _async_distinct(
    factory: AsyncSessionFactory,
) -> c.AsyncIterator[sa_asyncio.AsyncSession]:
    warn_if_nothing_installed(f"distinct_session({factory!r})")
    if not _is_async_scoped(factory):
        session = factory()
        async with _async_commit_or_rollback(session):
            with _opened(factory, session):
                yield session
        return
    scoped = t.cast("sa_asyncio.async_scoped_session[t.Any]", factory)
    session = scoped.session_factory()
    with registry_holding(scoped.registry, session):
        async with _async_commit_or_rollback(session):
            with _opened(factory, session):
                yield session


@contextlib.asynccontextmanager
async def _async_commit_or_rollback(
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
