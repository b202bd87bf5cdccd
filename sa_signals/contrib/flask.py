"""``SaSignals``: a Flask extension giving each request and application context its own installed
session."""

from __future__ import annotations

import typing as t

import sqlalchemy.orm as sa_orm

try:
    import flask
    import flask.globals
except ImportError as exc:
    msg = 'sa_signals.contrib.flask needs Flask: pip install "sa-signals[flask]"'
    raise ImportError(msg) from exc

from .._core.install import install
from .scopes import remove_session

if t.TYPE_CHECKING:
    import collections.abc as c


class SaSignals:
    """Scope a session per Flask request and application context, removed at its teardown.

    ``factory`` is a ``sessionmaker``, from which a ``scoped_session`` keyed by the current
    request context, else the current application context, is built (:func:`context_key`), or
    an existing ``scoped_session`` used as it is, such as Flask-SQLAlchemy's ``db.session``.
    Either way it is passed to :func:`sa_signals.install`, so ``on_commit()`` and the signals
    work on :attr:`session`.

    Each request has its own session, also when it runs in an application context pushed before
    (a test's); so does an application context outside a request (a CLI command). At the
    teardown of each the session is removed (closed, so an uncommitted transaction rolls back)
    and its registry key deleted, also when the request failed.

    Nothing is committed for you unless ``commit=True``: then, after each request whose response
    has a status below 400, the open transaction is committed before the response is sent. A
    commit that fails turns the response into a 500 error, rolled back at teardown.
    """

    session: sa_orm.scoped_session[t.Any]
    """The ``scoped_session`` to use in views: ``ext.session.add(...)``, ``ext.session()``."""

    def __init__(
        self,
        factory: sa_orm.sessionmaker[t.Any] | sa_orm.scoped_session[t.Any],
        app: flask.Flask | None = None,
        /,
        *,
        commit: bool = False,
        robust: bool = True,
    ) -> None:
        if isinstance(factory, sa_orm.scoped_session):
            self.session = factory
        elif isinstance(factory, sa_orm.sessionmaker):
            self.session = sa_orm.scoped_session(factory, scopefunc=context_key)
        else:
            msg = f"SaSignals() needs a sessionmaker or a scoped_session, got {factory!r}"
            raise TypeError(msg)
        self.commit = commit
        install(self.session, robust=robust)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask, /) -> None:
        """Register the commit (if asked for) and the teardown on ``app``."""
        if "sa_signals" in app.extensions:
            msg = f"SaSignals is already registered on {app!r}; call init_app() once per app."
            raise RuntimeError(msg)
        app.extensions["sa_signals"] = self
        if self.commit:
            app.after_request(self._commit)
        if getattr(self.session.registry, "scopefunc", None) is context_key:
            app.teardown_request(self._teardown)
        app.teardown_appcontext(self._teardown)

    def _commit(self, response: flask.Response) -> flask.Response:
        registry = self.session.registry
        if response.status_code < 400 and registry.has():
            session: sa_orm.Session = registry()
            if session.in_transaction():
                session.commit()
        return response

    def _teardown(self, exc: BaseException | None) -> None:
        remove_session(self.session)


def context_key() -> c.Hashable:
    """Return the current Flask request context, else the current application context: the
    scope of :attr:`SaSignals.session`.

    Raises ``RuntimeError`` outside an application context.
    """
    if flask.has_request_context():
        # LocalProxy is typed as the proxied object, which has no _get_current_object().
        key: c.Hashable = flask.globals.request_ctx._get_current_object()  # type: ignore[attr-defined]
        return key
    return app_context_key()


def app_context_key() -> c.Hashable:
    """Return the current Flask application context: the scope of a session per application
    context, such as Flask-SQLAlchemy's.

    Raises ``RuntimeError`` outside an application context.
    """
    # LocalProxy is typed as the proxied AppContext, which has no _get_current_object().
    key: c.Hashable = flask.globals.app_ctx._get_current_object()  # type: ignore[attr-defined]
    return key
