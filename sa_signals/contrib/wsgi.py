"""``SessionMiddleware``: one scoped session per WSGI request, removed when the response ends."""

from __future__ import annotations

import collections.abc as c
import contextlib
import typing as t

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

    from .scopes import Scope


class SessionMiddleware:
    """Wrap a WSGI application so each request runs as a unit of work of ``scope``.

    The unit begins when the server calls the application and ends when the server closes the
    response (PEP 3333 ``close()``), so a streamed body still has its session; if the application
    raises before returning a response, it ends at once. At the end every ``scoped_session``
    tracked by ``scope`` is removed: an uncommitted transaction rolls back, nothing is committed
    for you (commit in the application), and no registry key is left behind.
    """

    def __init__(self, app: WSGIApplication, scope: Scope, /) -> None:
        self.app = app
        self.scope = scope

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> c.Iterable[bytes]:
        unit = contextlib.ExitStack()
        unit.enter_context(self.scope.enter())
        try:
            body = self.app(environ, start_response)
        except BaseException:
            unit.close()
            raise
        return _ClosingBody(body, unit)


class _ClosingBody:
    """A response body that ends the unit of work when the server closes it."""

    __slots__ = ("_body", "_unit")

    def __init__(self, body: c.Iterable[bytes], unit: contextlib.ExitStack) -> None:
        self._body = body
        self._unit = unit

    def __iter__(self) -> c.Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._unit.close()
