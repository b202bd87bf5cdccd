"""The transactional test mode for async factories: imported only once one is met.

See :func:`sa_signals.testing.transactional`. This module imports ``sqlalchemy.ext.asyncio``,
which needs greenlet; sync users never import it.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import typing as t

import sqlalchemy.ext.asyncio as sa_asyncio

from ._core.install import async_support
from ._core.state import TRANSACTIONAL_ATTR
from .exceptions import NotInstalledError
from .exceptions import ScopeError

if t.TYPE_CHECKING:
    from .typing import AsyncSessionFactory


@contextlib.asynccontextmanager
async def transactional(
    factory: AsyncSessionFactory,
    bind: sa_asyncio.AsyncEngine | sa_asyncio.AsyncConnection | None,
) -> c.AsyncIterator[sa_asyncio.AsyncConnection]:
    """The async twin of the sync transactional test mode; yields the ``AsyncConnection``."""
    aio = async_support(factory, create=False)
    if aio is None:
        msg = (
            f"{factory!r} is not installed: call sa_signals.install() on it before entering"
            " the transactional test mode."
        )
        raise NotInstalledError(msg)
    maker, scoped = aio.maker, aio.scoped
    if scoped is not None and scoped.registry.has():
        if scoped.registry().in_transaction():
            msg = (
                "transactional() was entered while the async_scoped_session's current session"
                " is in a transaction; await remove() on the async_scoped_session first."
            )
            raise ScopeError(msg)
        await scoped.remove()
    bind = bind if bind is not None else maker.kw.get("bind")
    if bind is None:
        msg = (
            "transactional() needs an engine: configure the async_sessionmaker with bind=, or"
            " pass bind=."
        )
        raise TypeError(msg)
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(bind, sa_asyncio.AsyncConnection):
            connection = bind
            if not connection.in_transaction():
                await connection.begin()
        else:
            connection = await stack.enter_async_context(bind.connect())
            stack.push_async_callback((await connection.begin()).rollback)
        saved = dict(maker.kw)
        maker.configure(bind=connection, join_transaction_mode="create_savepoint")
        # The sync Connection is what the listeners and the distinct sessions see.
        marked = connection.sync_connection
        assert marked is not None  # started above
        marked.__dict__[TRANSACTIONAL_ATTR] = True
        try:
            yield connection
        finally:
            del marked.__dict__[TRANSACTIONAL_ATTR]
            maker.kw.clear()
            maker.kw.update(saved)
            if scoped is not None:
                await _remove_bound(scoped, connection)


async def _remove_bound(
    scoped: sa_asyncio.async_scoped_session[t.Any], connection: sa_asyncio.AsyncConnection
) -> None:
    """Close and remove the scoped sessions bound to ``connection``, in every task's scope.

    A test runner may run set-up, test and clean-up in tasks of their own (unittest's
    ``IsolatedAsyncioTestCase`` does): with ``scopefunc=asyncio.current_task`` each made one.
    """
    await scoped.remove()
    sessions: dict[t.Any, sa_asyncio.AsyncSession] = getattr(scoped.registry, "registry", {})
    for key, session in list(sessions.items()):
        if session.bind is connection:
            del sessions[key]
            await session.close()
