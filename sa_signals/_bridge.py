"""SQLAlchemy event listeners that become signal sends; ``install()`` and ``uninstall()``."""

from __future__ import annotations

import collections.abc as c
import threading
import types
import typing as t

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

from . import _bulk
from . import changes
from . import signals
from ._dispatch import Signal
from ._failures import report_receiver
from ._failures import returned_coroutine_error
from ._runner import is_layer_session
from ._runner import Item
from ._runner import run
from ._runner import Work
from ._state import COMMITTED_ATTR
from ._state import current_transaction
from ._state import Installation
from ._state import INSTALLATION_ATTR
from ._state import installation_for
from ._state import is_async_factory
from ._state import SessionState
from ._state import STATE_ATTR
from ._state import state_of
from ._state import TRANSACTION_FIELDS_KNOWN
from ._state import TRANSACTIONAL_ATTR
from .exceptions import CoroutineMisuseError
from .exceptions import InstallError
from .on_commit import end_savepoint
from .on_commit import take_queue

if t.TYPE_CHECKING:
    from ._aio import AsyncSupport
    from .typing import InstallTarget

_FIELDS_KNOWN = TRANSACTION_FIELDS_KNOWN
_lock = threading.RLock()
_installed: list[type[sa_orm.Session]] = []


def send(
    signal: Signal,
    sender: object,
    origin: object,
    robust: bool,
    aio: AsyncSupport | None,
    /,
    **kwargs: t.Any,
) -> None:
    """Call the receivers of ``signal`` for ``sender`` in order, inside the transaction.

    A failing receiver is reported with ``origin`` (the session the user holds) and the others
    still run; with ``robust=False`` its exception propagates at once, aborting the flush or
    commit (a veto). Coroutine receivers are awaited for an async install.
    """
    for receiver, is_coroutine in signal.receivers_in_order(sender):
        try:
            if is_coroutine and aio is None:
                raise _coroutine_receiver_error(signal, receiver)
            result = receiver(sender, **kwargs)
            if isinstance(result, types.CoroutineType):  # also a partial of an async function
                if aio is None:
                    result.close()  # never awaited: close it rather than leak a RuntimeWarning
                    raise returned_coroutine_error(receiver)
                aio.await_(result)
        except Exception as exc:
            if not robust:
                raise
            report_receiver(signal, receiver, origin, exc, aio)


def _coroutine_receiver_error(signal: Signal, receiver: object) -> CoroutineMisuseError:
    msg = (
        f"{receiver!r} is a coroutine function connected to {signal.name}, but the event came"
        " from a synchronous Session where nothing can await it."
    )
    return CoroutineMisuseError(msg)


def _send_session(signal: Signal, session: sa_orm.Session, **kwargs: t.Any) -> None:
    installation = installation_for(session)
    if installation is None:  # uninstalled while the session was in use
        return
    aio = installation.aio
    sender = session if aio is None else aio.public(session)
    send(signal, sender, sender, installation.robust, aio, **kwargs)


# Session-level listeners, attached to each installed session class.


def _after_begin(
    session: sa_orm.Session, transaction: sa_orm.SessionTransaction, connection: sa.Connection
) -> None:
    if transaction.parent is None:
        state_of(session).connections.append(connection)


def _before_flush(session: sa_orm.Session, flush_context: object, instances: object) -> None:
    if signals.before_flush.receivers:
        _send_session(signals.before_flush, session)


def _after_flush(session: sa_orm.Session, flush_context: object) -> None:
    if signals.after_flush.receivers:
        _send_session(signals.after_flush, session)


def _before_commit(session: sa_orm.Session) -> None:
    # SQLAlchemy also fires before_commit before a SAVEPOINT release.
    if (
        signals.before_commit.receivers
        and not session.in_nested_transaction()
        and not is_layer_session(session)
    ):
        _send_session(signals.before_commit, session)
    if signals.before_models_committed.receivers and not is_layer_session(session):
        collected = changes.collect_before_commit(session)
        if collected:
            _send_session(signals.before_models_committed, session, changes=collected)


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
        _end_outermost(session, transaction)
    elif transaction.nested:
        state: SessionState | None = session.__dict__.get(STATE_ATTR)
        if state is not None:
            committed = session.__dict__.get(COMMITTED_ATTR) is transaction
            end_savepoint(state, transaction, committed)


def _end_outermost(session: sa_orm.Session, transaction: sa_orm.SessionTransaction) -> None:
    # At this point the COMMIT or ROLLBACK is done and the connection is back in the pool; an
    # exception raised here propagates out of commit() and leaves the session clean.
    committed = session.__dict__.pop(COMMITTED_ATTR, None) is transaction
    state: SessionState | None = session.__dict__.get(STATE_ATTR)
    if state is None:
        # The common case: nothing queued or recorded (no state was made).
        queue: list[Item] = []
        events: list[changes.Event] = []
        connections: list[sa.Connection] = []
    else:
        queue = take_queue(state)
        events = changes.take_changes(state)
        connections = state.connections
        if connections:
            state.connections = []
    has_receivers = bool(
        signals.after_commit.receivers if committed else signals.after_rollback.receivers
    )
    if not (has_receivers or queue or events):
        return  # nothing queued, nobody listening
    installation = installation_for(session)
    if installation is None:  # uninstalled while the transaction was open
        return
    aio = installation.aio
    public = session if aio is None else aio.public(session)
    if committed:
        if not _really_committed(session, transaction, connections):
            return
        items: list[Item] = []
        layer = is_layer_session(session)
        if has_receivers and not layer:
            items.extend(
                Work(receiver, installation.robust, (public,), signals.after_commit, is_coro)
                for receiver, is_coro in signals.after_commit.receivers_in_order(public)
            )
        # Order: after_commit receivers, models_committed, committed, then on_commit callbacks.
        if events and not layer:
            items.extend(changes.commit_work(events, public, installation))
        items.extend(queue)
        if items:
            run(items, session, installation)
    elif has_receivers and not is_layer_session(session):
        send(signals.after_rollback, public, public, installation.robust, aio)


def _really_committed(
    session: sa_orm.Session,
    transaction: sa_orm.SessionTransaction,
    recorded: list[sa.Connection],
) -> bool:
    """Whether the outermost commit of ``transaction`` reached the database.

    A session joined into a Connection's own transaction (the test-suite pattern) only released
    a savepoint, or did nothing: that Connection is still in a transaction afterwards, while a
    real COMMIT leaves it without one. In the transactional test mode the Connection is marked,
    and its outer transaction stands in for the database.
    """
    # SessionTransaction.connections is new in SQLAlchemy 2.1.7.
    connections: c.Collection[sa.Connection] = (
        transaction.connections  # type: ignore[attr-defined,unused-ignore]
        if _CONNECTIONS_KNOWN
        else recorded
    )
    if connections:
        return not any(
            connection.in_transaction() and not connection.__dict__.get(TRANSACTIONAL_ATTR)
            for connection in connections
        )
    bind = session.bind
    return not (
        isinstance(bind, sa.Connection)
        and bind.in_transaction()
        and not bind.__dict__.get(TRANSACTIONAL_ATTR)
    )


_BULK_SIGNALS = {
    "insert": signals.bulk_insert,
    "update": signals.bulk_update,
    "delete": signals.bulk_delete,
}


def _do_orm_execute(orm_state: sa_orm.ORMExecuteState) -> t.Any:
    # Attached until uninstall once wanted (see _sync_listeners): nothing to do when unwanted.
    if not (changes.wanted() or any(signal.receivers for signal in _BULK_SIGNALS.values())):
        return None
    executed = _bulk.execute(orm_state)
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


_CONNECTIONS_KNOWN = isinstance(getattr(sa_orm.SessionTransaction, "connections", None), property)
"""Whether ``SessionTransaction.connections`` (SQLAlchemy 2.1.7) tells which connections the
outermost transaction used, after it ended; before that, an ``after_begin`` listener records
them."""


def _session_listeners() -> list[tuple[str, t.Callable[..., None]]]:
    """The listeners every installed session class gets."""
    listeners: list[tuple[str, t.Callable[..., None]]] = [
        ("after_commit", _after_commit),
        ("after_transaction_end", _after_transaction_end),
    ]
    if not _CONNECTIONS_KNOWN:
        listeners.append(("after_begin", _after_begin))
    return listeners


_WANTED_SESSION_LISTENERS: tuple[tuple[str, t.Callable[..., None], tuple[Signal, ...]], ...] = (
    ("before_flush", _before_flush, (signals.before_flush,)),
    ("after_flush", _after_flush, (signals.after_flush,)),
    ("before_commit", _before_commit, (signals.before_commit, signals.before_models_committed)),
)
"""The listeners attached once one of their signals has a receiver (see _sync_listeners)."""

_EVERY_SESSION_LISTENER: tuple[tuple[str, t.Callable[..., t.Any]], ...] = (
    ("after_begin", _after_begin),
    ("after_commit", _after_commit),
    ("after_transaction_end", _after_transaction_end),
    ("do_orm_execute", _do_orm_execute),
    *((name, listener) for name, listener, _ in _WANTED_SESSION_LISTENERS),
)
"""Every session listener install() may have attached, for uninstall()."""


def _sync_listeners(*args: object, **kwargs: object) -> None:
    """Attach or remove the optional listeners to match what is wanted.

    The ``before_flush``, ``after_flush`` and ``before_commit`` listeners only send signals, so
    each is attached once one of its signals has a receiver (a ``before_flush`` listener also
    makes SQLAlchemy look for dirty objects twice per flush). Any ``do_orm_execute`` listener
    makes SQLAlchemy prepare every ORM execute twice (lazy loads and refreshes included), so it
    is attached only once a bulk or change signal has a receiver, or an installation tracks
    changes. The mapper listeners cost two calls per flushed row, so they are attached only
    once a model signal has a receiver or changes are tracked. All of them stay until
    uninstall: SQLAlchemy iterates listeners in place, so removing one while another thread's
    (or task's) flush or execute runs them would break it. Called on install, uninstall, and
    whenever one of those signals gains or loses a receiver.
    """
    with _lock:
        tracking = changes.wanted()
        wanted = tracking or any(signal.receivers for signal in _BULK_SIGNALS.values())
        for session_class in _installed:
            listening = sa_event.contains(session_class, "do_orm_execute", _do_orm_execute)
            if wanted and not listening:
                sa_event.listen(session_class, "do_orm_execute", _do_orm_execute)
            for name, listener, wanted_by in _WANTED_SESSION_LISTENERS:
                if any(signal.receivers for signal in wanted_by) and not sa_event.contains(
                    session_class, name, listener
                ):
                    sa_event.listen(session_class, name, listener)
        global _mapper_listening  # changed under _lock
        if not _installed:
            if _mapper_listening:
                for name, listener in _MAPPER_LISTENERS:
                    sa_event.remove(sa_orm.Mapper, name, listener)
                _mapper_listening = False
        elif not _mapper_listening and (
            tracking or any(signal.receivers for signal in _MODEL_SIGNALS)
        ):
            for name, listener in _MAPPER_LISTENERS:
                sa_event.listen(sa_orm.Mapper, name, listener)
            _mapper_listening = True


# Mapper-level listeners, attached to every mapper once a model signal has a receiver or changes
# are tracked, until the last uninstall (see _sync_listeners).


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


def _before_delete(mapper: sa_orm.Mapper[t.Any], connection: object, target: object) -> None:
    if signals.pre_delete.receivers:
        _model_send(signals.pre_delete, mapper, target)


def _after_delete(mapper: sa_orm.Mapper[t.Any], connection: object, target: object) -> None:
    if signals.post_delete.receivers:
        _model_send(signals.post_delete, mapper, target)
    if changes.wanted():
        changes.record_row("delete", mapper, target)


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
    signals.before_flush,
    signals.after_flush,
    signals.before_commit,
    signals.before_models_committed,
    signals.models_committed,
    signals.committed,
):
    _signal.receiver_connected.connect(_sync_listeners, weak=False)
    _signal.receiver_disconnected.connect(_sync_listeners, weak=False)


def install(target: InstallTarget, /, *, robust: bool = True, track_changes: bool = False) -> None:
    """Send sa_signals signals and run on_commit callbacks for sessions made by ``target``.

    ``target`` is a ``scoped_session``, a ``sessionmaker`` or a ``Session`` subclass, or an
    ``async_scoped_session`` or ``async_sessionmaker`` (see ``docs/asyncio.md``). Installing
    the same target again does nothing. Give the ``scoped_session`` when there is one: its
    registry is where callbacks find their distinct session.

    With ``robust=False``, receivers are not shielded: an exception from a receiver sent inside
    the transaction propagates at once (vetoing the flush or commit), and one from an
    ``after_commit`` receiver propagates out of ``commit()`` after the others ran.

    With ``track_changes=True``, the writes of every transaction are recorded for the change
    signals (``models_committed`` ...) even while they have no receivers; otherwise recording
    happens only while one of them has a receiver.
    """
    with _lock:
        aio = None
        if is_async_factory(target):
            from ._aio import async_support  # needs greenlet: only for async users

            aio = async_support(target, create=True)
            assert aio is not None
            session_class, maker, scoped = aio.session_class, None, None
        else:
            session_class, maker, scoped = _resolve(target)
        existing: Installation | None = session_class.__dict__.get(INSTALLATION_ATTR)
        if existing is not None:
            if existing.aio is not None and aio is not None:
                _check_same_async(existing, target, robust)
                return
            _check_same(existing, scoped, robust, target)
            if track_changes and not existing.track_changes:
                existing.track_changes = True
                changes.force_tracking(1)
                _sync_listeners()
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
        for name, listener in _session_listeners():
            sa_event.listen(session_class, name, listener)
        installation = Installation(session_class, maker, scoped, robust, track_changes, aio)
        setattr(session_class, INSTALLATION_ATTR, installation)
        # A class default, so that on_commit()'s hot path finds None, not an AttributeError,
        # on a session that has no state yet.
        setattr(session_class, STATE_ATTR, None)
        if track_changes:
            changes.force_tracking(1)
        _installed.append(session_class)
        _sync_listeners()
        if aio is not None:
            aio.apply()


def uninstall(target: InstallTarget, /) -> None:
    """Remove every listener ``install(target)`` added. Does nothing if it was not installed.

    Callbacks still queued on open transactions of its sessions will not run.
    """
    with _lock:
        aio = None
        if is_async_factory(target):
            from ._aio import async_support

            aio = async_support(target, create=False)
            if aio is None:
                return
            session_class = aio.session_class
        else:
            session_class, _, _ = _resolve(target)
        if session_class not in _installed:
            return
        if aio is not None:
            aio.restore()
        for name, listener in _EVERY_SESSION_LISTENER:
            if sa_event.contains(session_class, name, listener):
                sa_event.remove(session_class, name, listener)
        if session_class.__dict__[INSTALLATION_ATTR].track_changes:
            changes.force_tracking(-1)
        session_class.__dict__[INSTALLATION_ATTR].active = False
        delattr(session_class, INSTALLATION_ATTR)
        delattr(session_class, STATE_ATTR)
        _installed.remove(session_class)
        _sync_listeners()


def _check_same_async(existing: Installation, target: t.Any, robust: bool) -> None:
    assert existing.aio is not None
    if existing.robust != robust:
        msg = f"{target!r} is already installed with robust={existing.robust}; uninstall it first."
        raise InstallError(msg)
    scoped = None if target is existing.aio.maker else target
    if (
        scoped is not None
        and existing.aio.scoped is not None
        and existing.aio.scoped is not scoped
    ):
        msg = (
            f"{target!r} shares its async_sessionmaker with an async_scoped_session that is"
            " already installed; give each async_scoped_session its own async_sessionmaker."
        )
        raise InstallError(msg)
    if scoped is not None:
        existing.aio.scoped = scoped


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
        "install() takes a scoped_session, a sessionmaker, a Session subclass, an"
        " async_scoped_session or an async_sessionmaker,"
        f" got {target!r}.{hint}"
    )
    raise InstallError(msg)
