"""Types for annotating code that uses sa_signals."""

from __future__ import annotations

import collections.abc as c
import typing as t

import sqlalchemy.orm as sa_orm

if t.TYPE_CHECKING:
    import sqlalchemy.ext.asyncio as sa_asyncio

Operation: t.TypeAlias = t.Literal["insert", "update", "delete"]
"""What a :class:`~sa_signals.Change` did to its row."""

OPERATIONS: t.Final = ("insert", "update", "delete")
"""Every :data:`Operation`, in this order."""

Callback: t.TypeAlias = c.Callable[[], object]
"""A callback for ``on_commit``: called with no arguments, its return value ignored."""

AsyncCallback: t.TypeAlias = c.Callable[[], c.Awaitable[object]]
"""A coroutine function for ``on_commit`` with an ``AsyncSession``: awaited after the commit."""

SessionTarget: t.TypeAlias = (
    "sa_orm.Session | sa_orm.scoped_session[t.Any]"
    " | sa_asyncio.AsyncSession | sa_asyncio.async_scoped_session[t.Any]"
)
"""What ``on_commit`` accepts: a session, or a scoped session standing for its current one."""

SessionFactory: t.TypeAlias = "sa_orm.sessionmaker[t.Any] | sa_orm.scoped_session[t.Any]"
"""A factory the sync scope helpers make sessions from."""

AsyncSessionFactory: t.TypeAlias = (
    "sa_asyncio.async_sessionmaker[t.Any] | sa_asyncio.async_scoped_session[t.Any]"
)
"""A factory the async scope helpers make sessions from."""

InstallTarget: t.TypeAlias = (
    "sa_orm.scoped_session[t.Any] | sa_orm.sessionmaker[t.Any] | type[sa_orm.Session]"
    " | sa_asyncio.async_scoped_session[t.Any] | sa_asyncio.async_sessionmaker[t.Any]"
)
"""What ``install()`` accepts."""
