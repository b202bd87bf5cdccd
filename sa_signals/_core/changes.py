"""Change sets: the writes of a transaction recorded, folded into one net change per row, and
sent after the COMMIT.

Flushes are recorded by the mapper listeners, ORM bulk statements by :mod:`.bulk`; a
savepoint's end hands its records to the enclosing transaction or drops them (:func:`settle`).
A flush DELETE that matched no row (the row was gone already) records nothing.
"""

from __future__ import annotations

import collections.abc as c
import types
import typing as t

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

from .. import signals
from .records import Change
from .records import NOT_LOADED
from .records import Record
from .state import current_transaction
from .state import installation_for
from .state import state_of
from .work import Work

if t.TYPE_CHECKING:
    from ..typing import Operation
    from .state import Installation
    from .state import SessionState

SIGNALS = (
    signals.before_models_committed,
    signals.models_committed,
    signals.committed,
    signals.models_rolled_back,
    signals.rolled_back,
)
"""The change signals: a receiver of any of them makes the layer record writes."""

_forced = 0
_wanted = False
_receiving = False


def force_tracking(delta: int) -> None:
    """Count installations made with ``track_changes=True``."""
    global _forced  # changed under install()'s lock
    _forced += delta
    refresh()


def refresh() -> None:
    """Recompute :func:`wanted`: called on install, uninstall, and whenever a change signal
    gains or loses a receiver (see ``bridge.sync_listeners()``)."""
    global _wanted, _receiving  # changed under install()'s lock
    _receiving = any(signal.receivers for signal in SIGNALS)
    _wanted = bool(_forced) or _receiving


def wanted() -> bool:
    """Whether anything may need change sets, as of the last :func:`refresh`.

    The cheap check made before anything else, on every flushed row. A weak receiver collected
    since leaves it True until the next refresh (records are then made for nobody):
    :func:`tracking` is the exact answer.
    """
    return _wanted


def tracking() -> bool:
    """Whether a change signal has a receiver, or an installation tracks changes."""
    return bool(_forced) or any(signal.receivers for signal in SIGNALS)


def _tracked(session: sa_orm.Session) -> Installation | None:
    installation = installation_for(session)
    if installation is None:
        return None
    if installation.track_changes or _receiving:
        return installation
    return None


def _plain(value: t.Any) -> t.Any:
    return NOT_LOADED if isinstance(value, sa.ClauseElement) else value


class _Columns:
    """What recording needs of one mapper, looked up once: its column attributes' keys and
    implementations, and its primary key's attribute keys."""

    __slots__ = ("impls", "keys", "pk_keys")

    def __init__(self, mapper: sa_orm.Mapper[t.Any]) -> None:
        self.keys = tuple(prop.key for prop in mapper.column_attrs)
        manager = mapper.class_manager
        self.impls = {key: manager[key].impl for key in self.keys}
        self.pk_keys = tuple(
            mapper.get_property_by_column(column).key for column in mapper.primary_key
        )


_columns: dict[sa_orm.Mapper[t.Any], _Columns] = {}


def _columns_of(mapper: sa_orm.Mapper[t.Any]) -> _Columns:
    columns = _columns.get(mapper)
    if columns is None:
        columns = _columns[mapper] = _Columns(mapper)
    return columns


def pk_keys(mapper: sa_orm.Mapper[t.Any]) -> tuple[str, ...]:
    """Return the attribute keys of ``mapper``'s primary key, in its order."""
    return _columns_of(mapper).pk_keys


_NO_INITIALIZE = sa_orm.PassiveFlag.PASSIVE_NO_INITIALIZE
"""Attribute histories are read as the flush has them, never loading anything."""


def record_row(
    operation: Operation,
    mapper: sa_orm.Mapper[t.Any],
    target: object,
    connection: sa.Connection | None = None,
) -> None:
    """Record that a flush is writing ``target``'s row (mapper before_update, after_insert/delete).

    Updates are read in ``before_update``, while the attribute history still holds SQL
    expressions and values the flush will expire; inserts after the INSERT, once the primary
    key is known; deletes after the DELETE, on ``connection``, unless it matched no row.
    """
    state: sa_orm.InstanceState[t.Any] = sa_orm.attributes.instance_state(target)
    session = state.session
    if session is None or _tracked(session) is None:
        return
    columns = _columns_of(mapper)
    impls = columns.impls
    dict_ = state.dict
    values: dict[str, tuple[t.Any, t.Any]] = {}
    if operation == "update":
        for key in list(state.committed_state):
            impl = impls.get(key)
            if impl is None:
                continue  # a relationship
            added, _, deleted = impl.get_history(state, dict_, _NO_INITIALIZE)
            if not added:
                continue  # set to an equal value
            values[key] = (deleted[0] if deleted else NOT_LOADED, _plain(added[0]))
        if not values:
            return
        # The identity the row had; a primary key the update changes is reported new.
        identity = tuple(
            values[key][1] if key in values else value
            for key, value in zip(columns.pk_keys, state.identity or (), strict=False)
        )
    elif operation == "insert":
        expired = state.expired_attributes
        for key in columns.keys:
            # Not in the dict: expired after the INSERT (fetched later), or never set (NULL).
            if key in dict_:
                values[key] = (None, _plain(dict_[key]))
            else:
                values[key] = (None, NOT_LOADED if key in expired else None)
        identity = tuple(mapper.primary_key_from_instance(target))
    else:
        identity = tuple(state.identity or ())
        if connection is not None and _matched_none(connection, mapper, identity):
            return
        for key, impl in impls.items():
            added, unchanged, deleted = impl.get_history(state, dict_, _NO_INITIALIZE)
            if deleted:
                old = deleted[0]
            elif unchanged:
                old = unchanged[0]
            else:
                old = NOT_LOADED
            values[key] = (old, None)
    state_of(session).changes.append(
        Record(current_transaction(session), operation, mapper.class_, identity, target, values)
    )


def record_bulk(
    session: sa_orm.Session,
    operation: Operation,
    model: type[t.Any],
    statement: sa.Executable,
    identities: list[tuple[t.Any, ...]] | None,
    rows: list[dict[str, tuple[t.Any, t.Any]]] | None,
    rowcount: int | None = None,
) -> None:
    """Record an executed ORM bulk statement: one record per known row, else one for all."""
    if _tracked(session) is None or rowcount == 0:
        return  # a statement that matched no row changed nothing
    transaction = current_transaction(session)
    events = state_of(session).changes
    if identities is None:
        values = rows[0] if rows is not None and len(rows) == 1 else {}
        events.append(Record(transaction, operation, model, None, None, values, statement))
        return
    shared = rows[0] if rows is not None and len(rows) == 1 else None
    for index, identity in enumerate(identities):
        if shared is not None:
            values = shared
        else:
            values = rows[index] if rows is not None and index < len(rows) else {}
        events.append(Record(transaction, operation, model, identity, None, values, statement))


def settle(
    state: SessionState,
    savepoint: sa_orm.SessionTransaction,
    parent: sa_orm.SessionTransaction | None,
) -> list[Record]:
    """Hand the records of ``savepoint`` to ``parent``, or drop them when ``parent`` is None
    and return them.

    Records are appended in time order and a savepoint's are all recorded after it began, so
    they are the tail of the list.
    """
    events = state.changes
    index = len(events)
    while index and events[index - 1].transaction is savepoint:
        index -= 1
    if parent is None:
        dropped = events[index:]
        del events[index:]
        return dropped
    for event in events[index:]:
        event.transaction = parent
    return []


def take(state: SessionState) -> list[Record]:
    """Empty the records of the ending transaction and return them."""
    events = state.changes
    if events:
        state.changes = []
    return events


class _Net:
    __slots__ = ("identity", "instance", "model", "new", "old", "operation")

    def __init__(self, record: Record) -> None:
        self.operation: Operation = record.operation
        self.model = record.model
        self.identity = record.identity
        self.instance = record.instance
        self.old: dict[str, t.Any] = {}
        self.new: dict[str, t.Any] = {}
        self.add(record)

    def add(self, record: Record) -> None:
        self.model = record.model
        self.identity = record.identity
        self.instance = record.instance
        for key, (old, new) in record.values.items():
            self.old.setdefault(key, old)
            self.new[key] = new

    def change(self) -> Change | None:
        if self.operation == "insert":
            values = {key: (None, new) for key, new in self.new.items()}
        elif self.operation == "delete":
            values = {key: (old, None) for key, old in self.old.items()}
        else:
            values = {
                key: (old, self.new[key])
                for key, old in self.old.items()
                if not _same(old, self.new[key])
            }
            if not values:
                return None
        return Change(
            self.operation,
            self.model,
            self.identity,
            self.instance,
            types.MappingProxyType(values),
        )


def _same(old: t.Any, new: t.Any) -> bool:
    if old is NOT_LOADED or new is NOT_LOADED:
        return False
    try:
        return bool(old == new)
    except Exception:  # an exotic type that cannot compare: report it as changed
        return False


_bases: dict[type[t.Any], sa_orm.Mapper[t.Any]] = {}


def _base_of(model: type[t.Any]) -> sa_orm.Mapper[t.Any]:
    """Return the base mapper of ``model``: rows of one table hierarchy share identities."""
    base = _bases.get(model)
    if base is None:
        base = _bases[model] = sa_orm.class_mapper(model).base_mapper
    return base


def net_changes(records: c.Iterable[Record]) -> list[Change]:
    """Fold ``records`` into one net change per row, in order of first appearance.

    A row is followed through the object that wrote it, and through its primary key: an object
    deleted and another one inserted with the same primary key are one row, updated. A row
    written once keeps its record's values as they are (a flush records only what changed).
    """
    nets: dict[t.Hashable, Record | _Net | Change] = {}
    rows: dict[int, t.Hashable] = {}  # id(instance) -> its row's key in nets
    for position, record in enumerate(records):
        if record.statement is not None:
            nets[-1 - position] = Change(
                record.operation,
                record.model,
                record.identity,
                None,
                types.MappingProxyType(record.values),
                record.statement,
            )
            continue
        # Every instance is held by its records, so its id is not reused meanwhile.
        key = rows.get(id(record.instance))
        if key is None:
            key = rows[id(record.instance)] = (_base_of(record.model), record.identity)
        found = nets.get(key)
        if found is None:
            nets[key] = record  # folded only if the row is written again
            continue
        net = found if type(found) is _Net else _Net(t.cast("Record", found))
        nets[key] = net
        if record.operation == "update":
            net.add(record)
        elif record.operation == "delete":
            if net.operation == "insert":
                del nets[key]  # inserted then deleted: nothing happened
            else:
                net.operation = "delete"
                net.add(record)
        elif net.operation == "delete":  # deleted, then the row inserted again
            net.operation = "update"
            net.add(record)
        else:
            net.add(record)
    result: list[Change] = []
    for folded in nets.values():
        if type(folded) is Record:
            change: Change | None = Change(
                folded.operation,
                folded.model,
                folded.identity,
                folded.instance,
                types.MappingProxyType(folded.values),
            )
        elif type(folded) is _Net:
            change = folded.change()
        else:
            change = t.cast("Change", folded)
        if change is not None:
            result.append(change)
    return result


def collect_before_commit(session: sa_orm.Session) -> list[Change] | None:
    """Flush ``session`` and return its net changes so far, before the outermost COMMIT.

    None when nothing is tracked, or when the commit will not reach the database: a savepoint
    release, or a session joined into a Connection's own transaction.
    """
    if session.in_nested_transaction() or _tracked(session) is None:
        return None
    session.flush()  # SQLAlchemy flushes only after before_commit: the set must be complete
    if not _will_commit(session):
        return None
    return net_changes(state_of(session).changes)


def _will_commit(session: sa_orm.Session) -> bool:
    # SessionTransaction keeps (connection, transaction, should_commit, autoclose) per bind:
    # a session joined into a Connection's transaction has a savepoint there, or should_commit
    # False ("rollback_only"), and its COMMIT does not reach the database.
    transaction = session.get_transaction()
    entries = getattr(transaction, "_connections", None)
    if not entries:
        return False
    return all(
        should_commit and not isinstance(trans, sa.NestedTransaction)
        for _, trans, should_commit, _ in entries.values()
    )


def commit_work(records: list[Record], session: object, installation: Installation) -> list[Work]:
    """Return the commit-time sends of ``models_committed`` and ``committed`` for ``records``.

    ``session`` is the sender: the session the user holds (an ``AsyncSession`` for async).
    """
    changes = net_changes(records)
    if not changes:
        return []
    robust = installation.robust
    sync = installation.aio is None
    listed = signals.models_committed
    items = []
    for receiver, is_coro in listed.receivers_in_order(session):
        own = listed.changes_for(receiver, changes)
        if own:
            items.append(
                Work(receiver, robust, (session,), listed, is_coro and sync, {"changes": own})
            )
    each = signals.committed
    if each.receivers:
        for change in changes:
            items.extend(
                Work(receiver, robust, (change.model,), each, is_coro and sync, {"change": change})
                for receiver, is_coro in each.receivers_in_order(change.model)
                if each.wants(receiver, change.operation)
            )
    return items


_UNMATCHED_ATTR = "_sa_signals_unmatched"
"""Connection attribute: base table -> ``(identities, rowcount)`` of each flush DELETE there that
matched fewer rows than it named, since the flush's last ``before_delete``."""

_watched_engines: set[int] = set()


def expect_deletes(connection: sa.Connection, mapper: sa_orm.Mapper[t.Any]) -> None:
    """Get ready to see what the flush's DELETE on ``mapper``'s table matches (before_delete).

    The first time, an ``after_execute`` listener is attached to the connection's Engine; it
    stays until the process ends (SQLAlchemy's listeners cannot be removed while another thread
    may run them) and costs one call per statement, returning at once for all but a DELETE.
    """
    engine = connection.engine
    if id(engine) not in _watched_engines:
        _watched_engines.add(id(engine))
        sa_event.listen(engine, "after_execute", _after_execute)
    unmatched: dict[t.Any, list[t.Any]] | None = connection.__dict__.get(_UNMATCHED_ATTR)
    if unmatched:
        unmatched.pop(mapper.base_mapper.local_table, None)


def _after_execute(
    connection: sa.Connection,
    statement: object,
    multiparams: t.Any,
    params: object,
    execution_options: object,
    result: t.Any,
) -> None:
    # The flush runs one DELETE per table for many rows (executemany): SQLAlchemy only warns
    # when fewer rows matched ("expected to delete N row(s); M were matched").
    if not isinstance(statement, sa.Delete):
        return
    # Several rows come as a list, one as a dict.
    rows = multiparams if multiparams else [params] if isinstance(params, dict) else []
    expected = len(rows)
    rowcount = getattr(result, "rowcount", -1)
    if not expected or not isinstance(rowcount, int) or rowcount < 0 or rowcount >= expected:
        return
    table = statement.table
    keys = [column.key for column in table.primary_key]  # type: ignore[attr-defined,unused-ignore]
    identities = {tuple(row.get(key) for key in keys) for row in rows}
    unmatched = connection.__dict__.setdefault(_UNMATCHED_ATTR, {})
    unmatched.setdefault(table, []).append((identities, rowcount))


def _matched_none(
    connection: sa.Connection, mapper: sa_orm.Mapper[t.Any], identity: tuple[t.Any, ...]
) -> bool:
    """Whether the flush DELETE of the row ``identity`` certainly matched no row.

    Certain when its statement matched none of the rows it named; when it matched some of them
    the row is reported, as SQLAlchemy cannot tell which.
    """
    unmatched: dict[t.Any, list[tuple[set[t.Any], int]]] | None = connection.__dict__.get(
        _UNMATCHED_ATTR
    )
    if not unmatched:
        return False
    for identities, rowcount in unmatched.get(mapper.base_mapper.local_table, ()):
        if identity in identities:
            return rowcount == 0
    return False
