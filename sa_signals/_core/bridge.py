"""SQLAlchemy's session and mapper listeners, turned into signal sends and commit-time work.

Two session listeners are attached to every installed session class (``after_commit``, which
notes what committed, and ``after_transaction_end``); the others only once something wants
them (see :func:`sync_listeners`), and then until ``uninstall()``. The instance listeners behind
``pre_init`` and ``post_init`` are in :mod:`.instances`.
"""

from __future__ import annotations

import threading
import typing as t

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

from .. import signals
from .._dispatch import names_pending
from .._dispatch import resolve_names
from .._log import logger
from . import bulk
from . import changes
from . import deletes
from . import instances
from .commit import end_outermost
from .runner import is_layer_session
from .savepoints import end_savepoint
from .send import send
from .send import send_changes
from .send import send_session
from .state import COMMITTED_ATTR
from .state import CONNECTIONS_KNOWN
from .state import current_transaction
from .state import installation_for
from .state import SessionState
from .state import STATE_ATTR
from .state import state_of
from .state import TRANSACTION_FIELDS_KNOWN

if t.TYPE_CHECKING:
    from .._dispatch import Signal

_FIELDS_KNOWN = TRANSACTION_FIELDS_KNOWN
_CONNECTIONS_KNOWN = CONNECTIONS_KNOWN
_lock = threading.RLock()
_installed: list[type[sa_orm.Session]] = []


# Session-level listeners, attached to each installed session class.


def _after_begin(
    session: sa_orm.Session, transaction: sa_orm.SessionTransaction, connection: sa.Connection
) -> None:
    if transaction.parent is None:
        state_of(session).connections.append(connection)


def _before_flush(session: sa_orm.Session, flush_context: object, objects: object) -> None:
    if names_pending():
        resolve_names()  # a string sender naming no mapped class fails the first flush after
    if signals.before_flush.receivers:
        send_session(signals.before_flush, session)
    if signals.pre_delete.receivers or signals.post_delete.receivers:
        # After the before_flush receivers, which may delete more; a flush with no deletes
        # forgets those of the last one.
        found = deletes.origins(session)
        if found is not None or session.__dict__.get(STATE_ATTR) is not None:
            state_of(session).origins = found


def _after_flush(session: sa_orm.Session, flush_context: object) -> None:
    if signals.after_flush.receivers:
        send_session(signals.after_flush, session)


def _before_commit(session: sa_orm.Session) -> None:
    # SQLAlchemy also fires before_commit before a SAVEPOINT release.
    if (
        signals.before_commit.receivers
        and not session.in_nested_transaction()
        and not is_layer_session(session)
    ):
        send_session(signals.before_commit, session)
    if signals.before_models_committed.receivers and not is_layer_session(session):
        collected = changes.collect_before_commit(session)
        installation = installation_for(session)
        if collected and installation is not None:
            aio = installation.aio
            public = session if aio is None else aio.public(session)
            send_changes(
                signals.before_models_committed, public, installation.robust, aio, collected
            )


def _after_commit(session: sa_orm.Session) -> None:
    # Fires for a SAVEPOINT release too, while the committing transaction is still current.
    if _FIELDS_KNOWN:  # current_transaction(), inlined: this runs on every commit
        committing = session._nested_transaction or session._transaction
    else:
        committing = current_transaction(session)
    # Tells a commit from a rollback when the transaction ends (SQLAlchemy says no more there).
    session.__dict__[COMMITTED_ATTR] = committing


def _after_transaction_end(
    session: sa_orm.Session, transaction: sa_orm.SessionTransaction
) -> None:
    # Fires for every flush's subtransaction too: the cheap checks first.
    if (transaction._parent if _FIELDS_KNOWN else transaction.parent) is None:
        try:
            error = end_outermost(session, transaction)
        except Exception:
            # The COMMIT or ROLLBACK is done: a bug of the layer must not make it look failed.
            logger.exception("sa_signals failed at the end of a transaction of %r", session)
            return
        if error is not None:
            raise error  # a strict callback or receiver failed (install(robust=False))
    elif transaction.nested:
        state: SessionState | None = session.__dict__.get(STATE_ATTR)
        if state is not None:
            committed = session.__dict__.get(COMMITTED_ATTR) is transaction
            error = end_savepoint(state, session, transaction, committed)
            if error is not None:
                raise error  # a strict rollback receiver failed


_BULK_SIGNALS = {
    "insert": signals.bulk_insert,
    "update": signals.bulk_update,
    "delete": signals.bulk_delete,
}


def _do_orm_execute(orm_state: sa_orm.ORMExecuteState) -> t.Any:
    # Attached until uninstall once wanted (see sync_listeners): nothing to do when unwanted,
    # nor for a query (every lazy load and refresh included), decided before any receiver is
    # looked at.
    if orm_state.is_select or not (
        changes.tracking() or any(signal.receivers for signal in _BULK_SIGNALS.values())
    ):
        return None
    executed = bulk.execute(orm_state)
    if executed is None:
        return None
    session = orm_state.session
    changes.record_bulk(
        session,
        executed.operation,
        executed.model,
        executed.statement,
        executed.identities,
        executed.rows,
        executed.rowcount,
    )
    signal = _BULK_SIGNALS[executed.operation]
    installation = installation_for(session)
    if signal.receivers and installation is not None:
        aio = installation.aio
        public = session if aio is None else aio.public(session)
        send(
            signal,
            executed.model,
            public,
            installation.robust,
            aio,
            statement=executed.statement,
            rowcount=executed.rowcount,
            identities=executed.identities,
            session=public,
        )
    return executed.result


def _session_listeners() -> list[tuple[str, t.Callable[..., None]]]:
    """The listeners every installed session class gets."""
    listeners: list[tuple[str, t.Callable[..., None]]] = [
        ("after_commit", _after_commit),
        ("after_transaction_end", _after_transaction_end),
    ]
    if not _CONNECTIONS_KNOWN:
        listeners.append(("after_begin", _after_begin))
    return listeners


def _flush_checks() -> bool:
    """Whether a flush must be looked at first: a string sender to resolve, deletes' origins."""
    return names_pending() or bool(signals.pre_delete.receivers or signals.post_delete.receivers)


_WANTED_SESSION_LISTENERS: tuple[
    tuple[str, t.Callable[..., None], tuple[Signal, ...], t.Callable[[], bool] | None], ...
] = (
    ("before_flush", _before_flush, (signals.before_flush,), _flush_checks),
    ("after_flush", _after_flush, (signals.after_flush,), None),
    (
        "before_commit",
        _before_commit,
        (signals.before_commit, signals.before_models_committed),
        None,
    ),
)
"""The listeners attached once one of their signals has a receiver, or their check says so
(see sync_listeners)."""

_EVERY_SESSION_LISTENER: tuple[tuple[str, t.Callable[..., t.Any]], ...] = (
    ("after_begin", _after_begin),
    ("after_commit", _after_commit),
    ("after_transaction_end", _after_transaction_end),
    ("do_orm_execute", _do_orm_execute),
    *((name, listener) for name, listener, _, _ in _WANTED_SESSION_LISTENERS),
)
"""Every session listener install() may have attached, for uninstall()."""


def sync_listeners(*args: object, **kwargs: object) -> None:
    """Attach or remove the optional listeners to match what is wanted.

    The ``before_flush``, ``after_flush`` and ``before_commit`` listeners only send signals, so
    each is attached once one of its signals has a receiver (a ``before_flush`` listener also
    makes SQLAlchemy look for dirty objects twice per flush); ``before_flush`` also once a
    string sender waits to be resolved or a delete signal has a receiver (deletes' origins).
    Any ``do_orm_execute`` listener makes SQLAlchemy prepare every ORM execute twice (lazy loads
    and refreshes included), so it is attached only once a bulk or change signal has a
    receiver, or an installation tracks changes. The mapper listeners cost two calls per
    flushed row, so they are attached only once a model signal has a receiver or changes are
    tracked; the instance listeners (``init``, ``load``) once ``pre_init`` or ``post_init`` has
    one. All of them stay until uninstall (the mapper and instance listeners until the last
    one): SQLAlchemy iterates listeners in place, so removing one while another thread's (or
    task's) flush or execute runs them would break it. Called on install, uninstall, and
    whenever one of those signals gains or loses a receiver.
    """
    with _lock:
        changes.refresh()
        tracking = changes.wanted()
        wanted = tracking or any(signal.receivers for signal in _BULK_SIGNALS.values())
        for session_class in _installed:
            listening = sa_event.contains(session_class, "do_orm_execute", _do_orm_execute)
            if wanted and not listening:
                sa_event.listen(session_class, "do_orm_execute", _do_orm_execute)
            for name, listener, wanted_by, check in _WANTED_SESSION_LISTENERS:
                if (
                    any(signal.receivers for signal in wanted_by)
                    or (check is not None and check())
                ) and not sa_event.contains(session_class, name, listener):
                    sa_event.listen(session_class, name, listener)
        global _mapper_listening  # changed under _lock
        if not _installed:
            if _mapper_listening:
                for name, listener in _MAPPER_LISTENERS:
                    sa_event.remove(sa_orm.Mapper, name, listener)
                _mapper_listening = False
            for name, listener, _ in instances.LISTENERS:
                if sa_event.contains(sa_orm.Mapper, name, listener):
                    sa_event.remove(sa_orm.Mapper, name, listener)
            instances.unwrap()
            return
        if not _mapper_listening and (
            tracking or any(signal.receivers for signal in _MODEL_SIGNALS)
        ):
            for name, listener in _MAPPER_LISTENERS:
                sa_event.listen(sa_orm.Mapper, name, listener)
            _mapper_listening = True
        for name, listener, wanted_by in instances.LISTENERS:
            if any(signal.receivers for signal in wanted_by) and not sa_event.contains(
                sa_orm.Mapper, name, listener
            ):
                sa_event.listen(sa_orm.Mapper, name, listener)


# Mapper-level listeners, attached to every mapper once a model signal has a receiver or changes
# are tracked, until the last uninstall (see sync_listeners).


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
    aio = installation.aio
    public = session if aio is None else aio.public(session)
    send(
        signal,
        mapper.class_,
        public,
        installation.robust,
        aio,
        instance=target,
        session=public,
        **kwargs,
    )


def _before_insert(mapper: sa_orm.Mapper[t.Any], connection: object, target: object) -> None:
    if signals.pre_save.receivers:
        _model_send(signals.pre_save, mapper, target, created=True)


def _after_insert(mapper: sa_orm.Mapper[t.Any], connection: object, target: object) -> None:
    if signals.post_save.receivers:
        _model_send(signals.post_save, mapper, target, created=True)
    if changes.wanted():
        changes.record_row("insert", mapper, target)


def _before_update(mapper: sa_orm.Mapper[t.Any], connection: object, target: object) -> None:
    if signals.pre_save.receivers:
        _model_send(signals.pre_save, mapper, target, created=False)
    if changes.wanted():
        changes.record_row("update", mapper, target)


def _after_update(mapper: sa_orm.Mapper[t.Any], connection: object, target: object) -> None:
    if signals.post_save.receivers:
        _model_send(signals.post_save, mapper, target, created=False)


def _before_delete(
    mapper: sa_orm.Mapper[t.Any], connection: sa.Connection, target: object
) -> None:
    if signals.pre_delete.receivers:
        origin = deletes.origin_of(target, sa_orm.object_session(target))
        _model_send(signals.pre_delete, mapper, target, origin=origin)
    if changes.wanted():
        changes.expect_deletes(connection, mapper)


def _after_delete(mapper: sa_orm.Mapper[t.Any], connection: sa.Connection, target: object) -> None:
    if signals.post_delete.receivers:
        origin = deletes.origin_of(target, sa_orm.object_session(target))
        _model_send(signals.post_delete, mapper, target, origin=origin)
    if changes.wanted():
        changes.record_row("delete", mapper, target, connection)


_MAPPER_LISTENERS: tuple[tuple[str, t.Callable[..., None]], ...] = (
    ("before_insert", _before_insert),
    ("after_insert", _after_insert),
    ("before_update", _before_update),
    ("after_update", _after_update),
    ("before_delete", _before_delete),
    ("after_delete", _after_delete),
)
_MODEL_SIGNALS = (signals.pre_save, signals.post_save, signals.pre_delete, signals.post_delete)
_mapper_listening = False

for _signal in (
    *_BULK_SIGNALS.values(),
    *_MODEL_SIGNALS,
    *changes.SIGNALS,
    signals.pre_init,
    signals.post_init,
    signals.before_flush,
    signals.after_flush,
    signals.before_commit,
):
    _signal.receiver_connected.connect(sync_listeners, weak=False)
    _signal.receiver_disconnected.connect(sync_listeners, weak=False)


def lock() -> threading.RLock:
    """Return the lock that install(), uninstall() and connecting receivers take."""
    return _lock


def attach(session_class: type[sa_orm.Session]) -> None:
    """Attach the listeners of an installed session class (those wanted now among them)."""
    with _lock:
        for name, listener in _session_listeners():
            sa_event.listen(session_class, name, listener)
        _installed.append(session_class)
        sync_listeners()


def detach(session_class: type[sa_orm.Session]) -> None:
    """Remove every listener :func:`attach` and :func:`sync_listeners` gave ``session_class``."""
    with _lock:
        for name, listener in _EVERY_SESSION_LISTENER:
            if sa_event.contains(session_class, name, listener):
                sa_event.remove(session_class, name, listener)
        _installed.remove(session_class)
        sync_listeners()


def installed() -> list[type[sa_orm.Session]]:
    """Return the installed session classes."""
    return list(_installed)
