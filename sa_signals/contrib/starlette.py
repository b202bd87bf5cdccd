"""``SaSignals`` for Starlette and FastAPI: one ``AsyncSession`` per request, by middleware or
dependency, committed on success and always removed.
"""

from __future__ import annotations

import collections.abc as c
import typing as t

import sqlalchemy.ext.asyncio as sa_asyncio

from .._core.install import install
from .asgi import _before_response
from .asgi import SessionMiddleware
from .scopes import Scope

if t.TYPE_CHECKING:
    import starlette.applications

__all__ = ["SaSignals", "SessionMiddleware"]


class SaSignals:
    """Scope an ``AsyncSession`` per request of a Starlette or FastAPI application.

    ``factory`` is an ``async_sessionmaker``, from which :attr:`session` is built as an
    ``async_scoped_session`` keyed by :attr:`scope` (one key per request, not per thread or
    task), or an ``async_scoped_session`` built with ``scopefunc=`` a :class:`Scope`. It is passed
    to :func:`sa_signals.install` with ``robust``.

    :meth:`init_app` adds :class:`~sa_signals.contrib.asgi.SessionMiddleware` (``commit`` and
    ``before_response`` are passed on); :meth:`dependency` is a FastAPI dependency that yields the
    request's session, and scopes one itself where the middleware is not installed.

    A successful request (status below 400) is committed when its response starts, before the
    client gets it: a commit that fails is answered 500, never with the handler's success status.
    ``before_response=False`` commits after the response was sent instead, so the client does
    not wait for the commit and its on_commit callbacks, at the price of a success status already
    sent when the commit fails. ``commit=False`` commits nothing.
    """

    def __init__(
        self,
        factory: sa_asyncio.async_sessionmaker[t.Any] | sa_asyncio.async_scoped_session[t.Any],
        app: starlette.applications.Starlette | None = None,
        /,
        *,
        commit: bool = True,
        before_response: bool | None = None,
        robust: bool = True,
    ) -> None:
        resolved = _before_response(commit, before_response)
        if isinstance(factory, sa_asyncio.async_scoped_session):
            scope = getattr(factory.registry, "scopefunc", None)
            if not isinstance(scope, Scope):
                msg = (
                    f"{factory!r} is not keyed by a Scope: pass its async_sessionmaker, or build"
                    " it with async_scoped_session(factory, scopefunc=Scope())."
                )
                raise TypeError(msg)
            scope.track(factory)
            self.scope = scope
            self.session: sa_asyncio.async_scoped_session[t.Any] = factory
        elif isinstance(factory, sa_asyncio.async_sessionmaker):
            self.scope = Scope("sa_signals_request")
            self.session = self.scope.async_scoped_session(factory)
        else:
            msg = (
                "SaSignals() takes an async_sessionmaker or an async_scoped_session, got"
                f" {factory!r}"
            )
            raise TypeError(msg)
        self.commit = commit
        self.before_response = resolved
        install(self.session, robust=robust)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: starlette.applications.Starlette, /) -> None:
        """Add the middleware that runs each request of ``app`` as a unit of :attr:`scope`."""
        app.add_middleware(
            SessionMiddleware,
            self.scope,
            commit=self.commit,
            before_response=self.before_response,
        )

    async def dependency(self) -> c.AsyncIterator[sa_asyncio.AsyncSession]:
        """Yield the request's ``AsyncSession``: ``Depends(db.dependency)`` in FastAPI.

        Under the middleware this is the middleware's session, committed by it. Without the
        middleware, the dependency runs the request as a unit of its own: when the handler
        returns, the open transaction is committed (if ``commit``); when it raises (an
        ``HTTPException`` too), nothing is; either way the session is closed and its key removed.
        FastAPI runs that exit after the response is sent, whatever ``before_response`` says, so a
        commit that fails there cannot change the response; declare
        ``Depends(db.dependency, scope="function")`` (FastAPI 0.121 and later) to commit before
        the response, or add the middleware.
        """
        if self.scope.active:
            yield self.session()
            return
        async with self.scope.enter_async():
            session: sa_asyncio.AsyncSession = self.session()
            yield session
            if self.commit and session.in_transaction():
                await session.commit()
