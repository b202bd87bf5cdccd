"""SQLAlchemy event listeners that become signal sends; ``install()`` and ``uninstall()``."""

from __future__ import annotations

import inspect
import threading
import typing as t

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

from . import signals
from ._dispatch import Signal
from ._runner import is_layer_session
from ._runner import report_receiver
from ._runner import returned_coroutine_error
from ._runner import run
from ._runner import Work
from ._state import current_transaction
from ._state import Installation
from ._state import INSTALLATION_ATTR
from ._state import installation_for
from ._state import SessionState
from ._state import STATE_ATTR
from ._state import state_of
from .exceptions import CoroutineMisuseError
from .exceptions import InstallError
from .on_commit import end_savepoint
from .on_commit import take_queue

if t.TYPE_CHECKING:
    from .typing import InstallTarget

_lock = threading.RLock()
_installed: list[type[sa_orm.Session]] = []


def send(
    signal: Signal, sender: object, session: sa_orm.Session, robust: bool, /, **kwargs: t.Any
) -> None:
    """Call the receivers of ``signal`` for ``sender`` in order, inside the transaction.

    A failing receiver is reported and the others still run; with ``robust=False`` its
    exception propagates at once, aborting the flush or commit (a veto).
    """
    for receiver, is_coroutine in signal.receivers_in_order(sender):
        try:
            if is_coroutine:
                msg = (
                    f"{receiver!r} is a coroutine function connected to {signal.name}, but the"
                    " event came from a synchronous Session where nothing can await it."
                )
                raise CoroutineMisuseError(msg)
            result = receiver(sender, **kwargs)
            if inspect.iscoroutine(result):
                result.close()  # never awaited: close it rather than leak a RuntimeWarning
                raise returned_coroutine_error(receiver)
        except Exception as exc:
            if not robust:
                raise
            report_receiver(signal, receiver, session, exc)


# Session-level listeners, attached to each installed session class.


def _after_begin(
    session: sa_orm.Session, transaction: sa_orm.SessionTransaction, connection: sa.Connection
) -> None:
    if transaction.parent is None:
        state_of(session).connections.append(connection)


def _before_flush(session: sa_orm.Session, flush_context: object, instances: object) -> None:
    if signals.before_flush.receivers:
        send(signals.before_flush, session, session, _robust(session))


def _after_flush(session: sa_orm.Session, flush_context: object) -> None:
    if signals.after_flush.receivers:
        send(signals.after_flush, session, session, _robust(session))


def _before_commit(session: sa_orm.Session) -> None:
    # SQLAlchemy also fires before_commit before a SAVEPOINT release.
    if (
        signals.before_commit.receivers
        and not session.in_nested_transaction()
        and not is_layer_session(session)
    ):
        send(signals.before_commit, session, session, _robust(session))


def _after_commit(session: sa_orm.Session) -> None:
    # Fires for a SAVEPOINT release too, while the committing transaction is still current.
    state_of(session).committed = current_transaction(session)


def _after_transaction_end(
    session: sa_orm.Session, transaction: sa_orm.SessionTransaction
) -> None:
    if transaction.parent is None:
        _end_outermost(session, transaction)
    elif transaction.nested:
        state: SessionState | None = session.__dict__.get(STATE_ATTR)
        if state is not None:
            end_savepoint(state, transaction)


def _end_outermost(session: sa_orm.Session, transaction: sa_orm.SessionTransaction) -> None:
    # At this point the COMMIT or ROLLBACK is done and the connection is back in the pool; an
    # exception raised here propagates out of commit() and leaves the session clean.
    state: SessionState | None = session.__dict__.get(STATE_ATTR)
    if state is None:
        committed = False
        queue: list[t.Any] = []
        connections: list[sa.Connection] = []
    else:
        committed = state.committed is transaction
        state.committed = None
        queue = take_queue(state)
        connections = state.connections
        if connections:
            state.connections = []
    installation = installation_for(session)
    if installation is None:  # uninstalled while the transaction was open
        return
    if committed:
        has_receivers = bool(signals.after_commit.receivers)
        if not (has_receivers or queue) or not _really_committed(session, connections):
            return
        items: list[Work] = []
        if has_receivers and not is_layer_session(session):
            items.extend(
                Work(receiver, installation.robust, (session,), signals.after_commit, is_coro)
                for receiver, is_coro in signals.after_commit.receivers_in_order(session)
            )
        items.extend(queue)
        if items:
            run(items, session, installation)
    elif signals.after_rollback.receivers and not is_layer_session(session):
        send(signals.after_rollback, session, session, installation.robust)


def _really_committed(session: sa_orm.Session, connections: list[sa.Connection]) -> bool:
    """Whether the outermost commit reached the database.

    A session joined into a Connection's own transaction (the test-suite pattern) only released
    a savepoint, or did nothing: that Connection is still in a transaction afterwards, while a
    real COMMIT leaves it without one.
    """
    if connections:
        return not any(connection.in_transaction() for connection in connections)
    bind = session.bind
    return not (isinstance(bind, sa.Connection) and bind.in_transaction())


def _robust(session: sa_orm.Session) -> bool:
    installation = installation_for(session)
    return installation is None or installation.robust


_SESSION_LISTENERS: tuple[tuple[str, t.Callable[..., None]], ...] = (
    ("after_begin", _after_begin),
    ("before_flush", _before_flush),
    ("after_flush", _after_flush),
    ("before_commit", _before_commit),
    ("after_commit", _after_commit),
    ("after_transaction_end", _after_transaction_end),
)


# Mapper-level listeners, attached once to every mapper while anything is installed.


def _model_send(
    signal: Signal, mapper: sa_orm.Mapper[t.Any], target: object, **kwargs: t.Any
) -> None:
    session = sa_orm.object_session(target)
    if session is None:
        return
    installation = installation_for(session)
    if installation is None:
        return
    if kwargs.get("created") is False and not session.is_modified(
        target, include_collections=False
    ):
        return
    send(
        signal,
        mapper.class_,
        session,
        installation.robust,
        instance=target,
        session=session,
        **kwargs,
    )


def _before_insert(mapper: sa_orm.Mapper[t.Any], connection: object, target: object) -> None:
    if signals.pre_save.receivers:
        _model_send(signals.pre_save, mapper, target, created=True)


def _after_insert(mapper: sa_orm.Mapper[t.Any], connection: object, target: object) -> None:
    if signals.post_save.receivers:
        _model_send(signals.post_save, mapper, target, created=True)


def _before_update(mapper: sa_orm.Mapper[t.Any], connection: object, target: object) -> None:
    if signals.pre_save.receivers:
        _model_send(signals.pre_save, mapper, target, created=False)


def _after_update(mapper: sa_orm.Mapper[t.Any], connection: object, target: object) -> None:
    if signals.post_save.receivers:
        _model_send(signals.post_save, mapper, target, created=False)


def _before_delete(mapper: sa_orm.Mapper[t.Any], connection: object, target: object) -> None:
    if signals.pre_delete.receivers:
        _model_send(signals.pre_delete, mapper, target)


def _after_delete(mapper: sa_orm.Mapper[t.Any], connection: object, target: object) -> None:
    if signals.post_delete.receivers:
        _model_send(signals.post_delete, mapper, target)


_MAPPER_LISTENERS: tuple[tuple[str, t.Callable[..., None]], ...] = (
    ("before_insert", _before_insert),
    ("after_insert", _after_insert),
    ("before_update", _before_update),
    ("after_update", _after_update),
    ("before_delete", _before_delete),
    ("after_delete", _after_delete),
)


def install(target: InstallTarget, /, *, robust: bool = True) -> None:
    """Send sa_signals signals and run on_commit callbacks for sessions made by ``target``.

    ``target`` is a ``scoped_session``, a ``sessionmaker`` or a ``Session`` subclass. Installing
    the same target again does nothing. Give the ``scoped_session`` when there is one: its
    registry is where callbacks find their distinct session.

    With ``robust=False``, receivers are not shielded: an exception from a receiver sent inside
    the transaction propagates at once (vetoing the flush or commit), and one from an
    ``after_commit`` receiver propagates out of ``commit()`` after the others ran.
    """
    session_class, maker, scoped = _resolve(target)
    with _lock:
        existing: Installation | None = session_class.__dict__.get(INSTALLATION_ATTR)
        if existing is not None:
            _check_same(existing, scoped, robust, target)
            if scoped is not None:
                existing.scoped = scoped
            return
        for other in _installed:
            if issubclass(session_class, other) or issubclass(other, session_class):
                msg = (
                    f"{target!r} overlaps the installation on {other.__name__}: sessions of"
                    " one class would be handled twice. Install either the base class or its"
                    " factories, not both."
                )
                raise InstallError(msg)
        if not _installed:
            for name, listener in _MAPPER_LISTENERS:
                sa_event.listen(sa_orm.Mapper, name, listener)
        for name, listener in _SESSION_LISTENERS:
            sa_event.listen(session_class, name, listener)
        setattr(
            session_class, INSTALLATION_ATTR, Installation(session_class, maker, scoped, robust)
        )
        _installed.append(session_class)


def uninstall(target: InstallTarget, /) -> None:
    """Remove every listener ``install(target)`` added. Does nothing if it was not installed.

    Callbacks still queued on open transactions of its sessions will not run.
    """
    session_class, _, _ = _resolve(target)
    with _lock:
        if session_class not in _installed:
            return
        for name, listener in _SESSION_LISTENERS:
            sa_event.remove(session_class, name, listener)
        delattr(session_class, INSTALLATION_ATTR)
        _installed.remove(session_class)
        if not _installed:
            for name, listener in _MAPPER_LISTENERS:
                sa_event.remove(sa_orm.Mapper, name, listener)


def _check_same(
    existing: Installation,
    scoped: sa_orm.scoped_session[t.Any] | None,
    robust: bool,
    target: object,
) -> None:
    if existing.robust != robust:
        msg = f"{target!r} is already installed with robust={existing.robust}; uninstall it first."
        raise InstallError(msg)
    if scoped is not None and existing.scoped is not None and existing.scoped is not scoped:
        msg = (
            f"{target!r} shares its sessionmaker with a scoped_session that is already"
            " installed; give each scoped_session its own sessionmaker."
        )
        raise InstallError(msg)


def _resolve(
    target: object,
) -> tuple[
    type[sa_orm.Session], sa_orm.sessionmaker[t.Any] | None, sa_orm.scoped_session[t.Any] | None
]:
    if isinstance(target, sa_orm.scoped_session):
        factory = target.session_factory
        if not isinstance(factory, sa_orm.sessionmaker):
            msg = (
                f"the scoped_session {target!r} was built on {factory!r}; install() needs one"
                " built on a sessionmaker."
            )
            raise InstallError(msg)
        return factory.class_, factory, target
    if isinstance(target, sa_orm.sessionmaker):
        return target.class_, target, None
    if isinstance(target, type) and issubclass(target, sa_orm.Session):
        return target, None, None
    hint = ""
    if isinstance(target, sa_orm.Session):
        hint = " To cover one session, install the sessionmaker or scoped_session it came from."
    msg = (
        "install() takes a scoped_session, a sessionmaker or a Session subclass,"
        f" got {target!r}.{hint}"
    )
    raise InstallError(msg)
