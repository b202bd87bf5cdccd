"""``SessionMiddleware``: one unit of work per ASGI request, committed on success if asked.

Works with any ASGI framework; ``sa_signals.contrib.starlette`` builds on it for Starlette and
FastAPI. Sessions are those of the ``scoped_session`` and ``async_scoped_session`` registries a
:class:`~sa_signals.contrib.scopes.Scope` tracks.
"""

from __future__ import annotations

import collections.abc as c
import typing as t

import sqlalchemy.orm as sa_orm

if t.TYPE_CHECKING:
    from .scopes import Scope

ASGIScope: t.TypeAlias = c.MutableMapping[str, t.Any]
"""The connection scope an ASGI server passes to the application."""

Message: t.TypeAlias = c.MutableMapping[str, t.Any]
"""An ASGI event."""

Receive: t.TypeAlias = c.Callable[[], c.Awaitable[Message]]
"""The ``receive`` callable of an ASGI connection."""

Send: t.TypeAlias = c.Callable[[Message], c.Awaitable[None]]
"""The ``send`` callable of an ASGI connection."""

ASGIApp: t.TypeAlias = c.Callable[[ASGIScope, Receive, Send], c.Awaitable[None]]
"""An ASGI 3 application."""

_FINAL_EVENTS: t.Final = frozenset({"http.response.pathsend", "http.response.zerocopysend"})


class SessionMiddleware:
    """Wrap an ASGI application so each ``http`` or ``websocket`` connection is a unit of work.

    The unit of ``scope`` is entered with ``scope.enter_async()`` in the task that handles the
    connection, and left when the application returns, raises or is cancelled (a client that
    disconnected): every tracked session of the unit is closed (an uncommitted transaction rolls
    back) and its key deleted. ``lifespan`` events pass through.

    With ``commit=False`` (the default) nothing is committed for you. With ``commit=True``, the
    unit's open transactions are committed when the response starts, if its status is below 400,
    before its first byte is passed to the server: on_commit callbacks run before the client gets
    the response, and a failing commit (a deferred constraint) raises out of the application
    before anything was sent, so the server answers 500. Anything written while a streamed body
    is produced is committed again when the application returns, if the response was sent in full
    and the client did not disconnect before that.

    ``before_response=False`` commits only then, after the application returned: the client does
    not wait for the commit and its callbacks, but a commit that fails can no longer change the
    response, which was sent with its success status. ``before_response`` defaults to ``commit``;
    ``before_response=True`` with ``commit=False`` raises ``ValueError``.
    """

    def __init__(
        self,
        app: ASGIApp,
        scope: Scope,
        /,
        *,
        commit: bool = False,
        before_response: bool | None = None,
    ) -> None:
        self.app = app
        self.scope = scope
        self.commit = commit
        self.before_response = _before_response(commit, before_response)

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        async with self.scope.enter_async():
            if not self.commit:
                await self.app(scope, receive, send)
                return
            exchange = _Exchange(self, scope["type"] == "websocket", receive, send)
            await self.app(scope, exchange.receive, exchange.send)
            if exchange.succeeded:
                await commit_all(self.scope)


def _before_response(commit: bool, before_response: bool | None) -> bool:
    """Return whether to commit before the response: by default, whenever committing."""
    if before_response is None:
        return commit
    if before_response and not commit:
        msg = "before_response=True commits before the response: pass commit=True too."
        raise ValueError(msg)
    return before_response


async def commit_all(scope: Scope, /) -> None:
    """Commit the open transaction of every session the current unit of ``scope`` holds."""
    for session in scope.sessions():
        if not session.in_transaction():
            continue
        if isinstance(session, sa_orm.Session):
            session.commit()
        else:
            await session.commit()


class _Exchange:
    """What the middleware sees of one connection: the status, the end, a disconnect."""

    __slots__ = ("_receive", "_send", "complete", "disconnected", "middleware", "status")

    def __init__(
        self, middleware: SessionMiddleware, websocket: bool, receive: Receive, send: Send
    ) -> None:
        self.middleware = middleware
        self._receive = receive
        self._send = send
        # A websocket has no status: it succeeds when the application returns.
        self.status: int | None = 200 if websocket else None
        self.complete = websocket
        self.disconnected = False

    @property
    def succeeded(self) -> bool:
        """Whether the response was sent in full, with a status below 400."""
        return (
            self.status is not None
            and self.status < 400
            and self.complete
            and not self.disconnected
        )

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self.complete:
            self.disconnected = True
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message["status"])
            if self.middleware.before_response and self.status < 400:
                await commit_all(self.middleware.scope)
        elif (kind == "http.response.body" and not message.get("more_body", False)) or (
            kind in _FINAL_EVENTS
        ):
            self.complete = True
        await self._send(message)
