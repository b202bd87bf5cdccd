"""Commit-time change sets: the :class:`Change` record and its per-transaction accumulation.

While a change signal has receivers (or an installation asks with ``track_changes=True``), each
row a flush inserts, updates or deletes, and each ORM bulk statement, is recorded as an event
tagged with the innermost transaction open at the time. A released savepoint hands its events to
its parent and a rolled-back one drops them (see ``on_commit.end_savepoint``); the outermost
transaction's end takes them all. At commit the events are folded into one net :class:`Change`
per object.
"""

from __future__ import annotations

import collections.abc as c
import dataclasses
import enum
import types
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from . import signals
from ._runner import Work
from ._state import current_transaction
from ._state import installation_for
from ._state import state_of

if t.TYPE_CHECKING:
    from ._state import Installation
    from ._state import SessionState

Operation: t.TypeAlias = t.Literal["insert", "update", "delete"]
"""What a :class:`Change` did to its row."""


class _NotLoaded(enum.Enum):
    NOT_LOADED = "NOT_LOADED"

    def __repr__(self) -> str:
        return "sa_signals.NOT_LOADED"


NOT_LOADED: t.Final = _NotLoaded.NOT_LOADED
"""A value SQLAlchemy never held in memory, so the layer cannot report it.

An ``old`` value is ``NOT_LOADED`` when the attribute was expired or deferred and then set
without being read; a ``new`` value is ``NOT_LOADED`` when the database computed it (a SQL
expression, or a server-side default that was not fetched back). Never a guess.
"""


@dataclasses.dataclass(frozen=True)
class Change:
    """The net effect of one committed transaction on one row (or one bulk statement).

    Every attribute holds plain values captured while the session was alive: reading them never
    loads anything, also after the session is closed.
    """

    operation: Operation
    """``"insert"``, ``"update"`` or ``"delete"``."""

    model: type[t.Any]
    """The mapped class of the object (its most specific class under inheritance)."""

    identity: tuple[t.Any, ...] | None
    """The primary key as a tuple; None for a bulk statement whose rows are unknown."""

    instance: t.Any = dataclasses.field(repr=False, hash=False)
    """The object; None for a bulk statement."""

    changes: c.Mapping[str, tuple[t.Any, t.Any]] = dataclasses.field(hash=False)
    """Attribute key to ``(old, new)``: for an update, the value at the start of the transaction
    and the final value, only for attributes that differ; for an insert, ``(None, value)`` for
    every column attribute; for a delete, ``(value, None)`` for every column attribute. A value
    the layer cannot know is :data:`NOT_LOADED`."""

    statement: sa.Executable | None = dataclasses.field(default=None, repr=False, hash=False)
    """The ORM bulk statement this change comes from; None for a change made by a flush."""


class Event:
    """One recorded write, waiting for its transaction to commit or roll back."""

    __slots__ = (
        "identity",
        "instance",
        "model",
        "operation",
        "statement",
        "transaction",
        "values",
    )

    def __init__(
        self,
        transaction: sa_orm.SessionTransaction | None,
        operation: Operation,
        model: type[t.Any],
        identity: tuple[t.Any, ...] | None,
        instance: t.Any,
        values: dict[str, tuple[t.Any, t.Any]],
        statement: sa.Executable | None = None,
    ) -> None:
        self.transaction = transaction
        self.operation = operation
        self.model = model
        self.identity = identity
        self.instance = instance
        self.values = values
        self.statement = statement


_forced = 0


def force_tracking(delta: int) -> None:
    """Count installations made with ``track_changes=True``."""
    global _forced  # changed under install()'s lock
    _forced += delta


def wanted() -> bool:
    """Whether anything may need change sets: a receiver of a change signal, or a forced install.

    The cheap check made before anything else, on every flushed row.
    """
    return bool(
        _forced
        or signals.models_committed.receivers
        or signals.committed.receivers
        or signals.before_models_committed.receivers
    )


def _tracked(session: sa_orm.Session) -> Installation | None:
    installation = installation_for(session)
    if installation is None:
        return None
    if installation.track_changes or (
        signals.models_committed.receivers
        or signals.committed.receivers
        or signals.before_models_committed.receivers
    ):
        return installation
    return None


def _plain(value: t.Any) -> t.Any:
    return NOT_LOADED if isinstance(value, sa.ClauseElement) else value


_pk_cache: dict[sa_orm.Mapper[t.Any], tuple[str, ...]] = {}


def _pk_keys(mapper: sa_orm.Mapper[t.Any]) -> tuple[str, ...]:
    keys = _pk_cache.get(mapper)
    if keys is None:
        keys = _pk_cache[mapper] = tuple(
            mapper.get_property_by_column(column).key for column in mapper.primary_key
        )
    return keys


def record_row(operation: Operation, mapper: sa_orm.Mapper[t.Any], target: object) -> None:
    """Record that a flush is writing ``target``'s row (mapper before_update, after_insert/delete).

    Updates are read in ``before_update``, while the attribute history still holds SQL
    expressions and values the flush will expire; inserts after the INSERT, once the primary
    key is known.
    """
    session = sa_orm.object_session(target)
    if session is None or _tracked(session) is None:
        return
    state: sa_orm.InstanceState[t.Any] = sa.inspect(target)
    values: dict[str, tuple[t.Any, t.Any]] = {}
    if operation == "update":
        keys = mapper.column_attrs.keys()
        for key in list(state.committed_state):
            if key not in keys:
                continue
            history = state.attrs[key].history
            if not history.added:
                continue  # set to an equal value
            old = history.deleted[0] if history.deleted else NOT_LOADED
            values[key] = (old, _plain(history.added[0]))
        if not values:
            return
        # The identity the row had; a primary key the update changes is reported new.
        identity = tuple(
            values[key][1] if key in values else value
            for key, value in zip(_pk_keys(mapper), state.identity or (), strict=False)
        )
    elif operation == "insert":
        dict_ = state.dict
        expired = state.expired_attributes
        for prop in mapper.column_attrs:
            key = prop.key
            # Not in the dict: expired after the INSERT (fetched later), or never set (NULL).
            if key in dict_:
                values[key] = (None, _plain(dict_[key]))
            else:
                values[key] = (None, NOT_LOADED if key in expired else None)
        identity = tuple(mapper.primary_key_from_instance(target))
    else:
        for prop in mapper.column_attrs:
            history = state.attrs[prop.key].history
            if history.deleted:
                old = history.deleted[0]
            elif history.unchanged:
                old = history.unchanged[0]
            else:
                old = NOT_LOADED
            values[prop.key] = (old, None)
        identity = tuple(state.identity or ())
    state_of(session).changes.append(
        Event(current_transaction(session), operation, mapper.class_, identity, target, values)
    )


def record_bulk(
    session: sa_orm.Session,
    operation: Operation,
    model: type[t.Any],
    statement: sa.Executable,
    identities: list[tuple[t.Any, ...]] | None,
    rows: list[dict[str, tuple[t.Any, t.Any]]] | None,
) -> None:
    """Record an executed ORM bulk statement: one event per known row, else one for all."""
    if _tracked(session) is None:
        return
    transaction = current_transaction(session)
    events = state_of(session).changes
    if identities is None:
        values = rows[0] if rows is not None and len(rows) == 1 else {}
        events.append(Event(transaction, operation, model, None, None, values, statement))
        return
    shared = rows[0] if rows is not None and len(rows) == 1 else None
    for index, identity in enumerate(identities):
        if shared is not None:
            values = shared
        else:
            values = rows[index] if rows is not None and index < len(rows) else {}
        events.append(Event(transaction, operation, model, identity, None, values, statement))


def settle_changes(
    state: SessionState,
    savepoint: sa_orm.SessionTransaction,
    parent: sa_orm.SessionTransaction | None,
) -> None:
    """Hand the events of ``savepoint`` to ``parent``, or drop them when ``parent`` is None.

    Events are appended in time order and a savepoint's are all recorded after it began, so
    they are the tail of the list.
    """
    events = state.changes
    index = len(events)
    while index and events[index - 1].transaction is savepoint:
        index -= 1
    if parent is None:
        del events[index:]
    else:
        for event in events[index:]:
            event.transaction = parent


def take_changes(state: SessionState) -> list[Event]:
    """Empty the recorded events of the ending transaction and return them."""
    events = state.changes
    if events:
        state.changes = []
    return events


class _Net:
    __slots__ = ("identity", "instance", "model", "new", "old", "operation")

    def __init__(self, event: Event) -> None:
        self.operation: Operation = event.operation
        self.model = event.model
        self.identity = event.identity
        self.instance = event.instance
        self.old: dict[str, t.Any] = {}
        self.new: dict[str, t.Any] = {}
        self.add(event)

    def add(self, event: Event) -> None:
        self.model = event.model
        self.identity = event.identity
        self.instance = event.instance
        for key, (old, new) in event.values.items():
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


def net_changes(events: c.Iterable[Event]) -> list[Change]:
    """Fold ``events`` into one net change per row, in order of first appearance.

    A row is followed through the object that wrote it, and through its primary key: an object
    deleted and another one inserted with the same primary key are one row, updated.
    """
    nets: dict[t.Hashable, _Net | Change] = {}
    rows: dict[int, t.Hashable] = {}  # id(instance) -> its row's key in nets
    for position, event in enumerate(events):
        if event.statement is not None:
            nets[-1 - position] = Change(
                event.operation,
                event.model,
                event.identity,
                None,
                types.MappingProxyType(event.values),
                event.statement,
            )
            continue
        # Every instance is held by its events, so its id is not reused meanwhile.
        key = rows.get(id(event.instance))
        if key is None:
            key = rows[id(event.instance)] = (
                sa_orm.class_mapper(event.model).base_mapper,
                event.identity,
            )
        net = nets.get(key)
        if net is None:
            nets[key] = _Net(event)
            continue
        assert isinstance(net, _Net)
        if event.operation == "update":
            net.add(event)
        elif event.operation == "delete":
            if net.operation == "insert":
                del nets[key]  # inserted then deleted: nothing happened
            else:
                net.operation = "delete"
                net.add(event)
        elif net.operation == "delete":  # deleted, then the row inserted again
            net.operation = "update"
            net.add(event)
        else:
            net.add(event)
    result: list[Change] = []
    for net in nets.values():
        change = net if isinstance(net, Change) else net.change()
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


def commit_work(events: list[Event], session: object, installation: Installation) -> list[Work]:
    """Return the commit-time sends of ``models_committed`` and ``committed`` for ``events``.

    ``session`` is the sender: the session the user holds (an ``AsyncSession`` for async).
    """
    changes = net_changes(events)
    if not changes:
        return []
    robust = installation.robust
    items = [
        Work(
            receiver,
            robust,
            (session,),
            signals.models_committed,
            is_coro,
            {"changes": list(changes)},
        )
        for receiver, is_coro in signals.models_committed.receivers_in_order(session)
    ]
    if signals.committed.receivers:
        for change in changes:
            items.extend(
                Work(
                    receiver,
                    robust,
                    (change.model,),
                    signals.committed,
                    is_coro,
                    {"change": change},
                )
                for receiver, is_coro in signals.committed.receivers_in_order(change.model)
            )
    return items
