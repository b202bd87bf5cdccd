"""The transactional test mode for async factories: imported only once one is met.

See :func:`sa_signals.testing.transactional`. This module imports ``sqlalchemy.ext.asyncio``,
which needs greenlet; sync users never import it.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import typing as t

import sqlalchemy.ext.asyncio as sa_asyncio

from . import _test_mode
from ._core.install import async_support
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
    if scoped is not None:
        idle = _test_mode.current_session(scoped.registry)
        if idle is not None and idle.in_transaction():
            msg = (
                "transactional() was entered while the async_scoped_session's current session"
                " is in a transaction; await remove() on the async_scoped_session first."
            )
            raise ScopeError(msg)
        if idle is not None:
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
        # The sync Connection is what the listeners and the distinct sessions see.
        marked = connection.sync_connection
        assert marked is not None  # started above
        try:
            with _test_mode.bound(maker, aio.session_class, marked, connection):
                yield connection
        finally:
            if scoped is not None:
                # A test runner may run set-up, test and clean-up in tasks of their own
                # (unittest's IsolatedAsyncioTestCase does): each made a scoped session.
                for session in _test_mode.bound_sessions(scoped.registry, connection):
                    await session.close()
