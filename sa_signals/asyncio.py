"""Async helpers: :func:`on_commit_async` and :func:`current_async_session`.

See ``docs/asyncio.md``. Importing this module does not need greenlet; using an
``AsyncSession`` does (``pip install "sa-signals[asyncio]"``).
"""

from __future__ import annotations

import typing as t

import sqlalchemy.util.concurrency as sa_concurrency

from ._core.runner import current_slot
from ._core.state import async_api
from .exceptions import OutsideCallbackError
from .on_commit import on_commit

if t.TYPE_CHECKING:
    import sqlalchemy.ext.asyncio as sa_asyncio

    from .typing import AsyncCallback
    from .typing import Callback


def current_async_session() -> sa_asyncio.AsyncSession:
    """Return the distinct ``AsyncSession`` of the running on_commit callback or receiver.

    The async counterpart of :func:`~sa_signals.current_session`, for async installs.
    """
    slot = current_slot("current_async_session")
    if slot.aio is None:
        msg = (
            "current_async_session() was called for a synchronous Session's commit; use"
            " sa_signals.current_session() there."
        )
        raise OutsideCallbackError(msg)
    session: sa_asyncio.AsyncSession = slot.get_made()
    return session


async def on_commit_async(
    callback: Callback | AsyncCallback,
    target: sa_asyncio.AsyncSession | sa_asyncio.async_scoped_session[t.Any],
    /,
    robust: bool = True,
) -> None:
    """Register ``callback`` like :func:`~sa_signals.on_commit`; with no transaction, run it now.

    The awaitable form for an ``AsyncSession``: inside a transaction it only queues
    ``callback`` (nothing to await); outside one it runs ``callback`` at once in a distinct
    ``AsyncSession``, awaiting it if it is a coroutine function, and returns when it is done.
    """
    api = async_api()
    if api is None or not isinstance(target, (api.AsyncSession, api.async_scoped_session)):
        msg = f"on_commit_async() needs an AsyncSession or an async_scoped_session, got {target!r}"
        raise TypeError(msg)
    await sa_concurrency.greenlet_spawn(on_commit, callback, target, robust=robust)
