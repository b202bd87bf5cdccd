"""The SQLAlchemy systems: bare SQLAlchemy, a hand-rolled listener, and sa_signals.

Each system owns its engine, its ``scoped_session`` and its mapped classes (own tables), and
runs one transaction of a workload per call of :meth:`SqlAlchemySystem.transaction`.
"""

from __future__ import annotations

import collections.abc as c
import functools
import typing as t

import blinker
import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals

ROWS = 10
"""Rows inserted or updated by each transaction."""


def noop() -> None:
    """An on_commit callback that does nothing."""


def make_receiver() -> c.Callable[..., None]:
    """Return a fresh receiver that does nothing (each one is a distinct receiver)."""

    def receiver(sender: object, **kwargs: object) -> None:
        pass

    return receiver


def read_changes(sender: object, *, changes: t.Any, **kwargs: object) -> None:
    """A models_committed receiver that reads every field diff of every record."""
    for change in changes:
        diff = change.changes if hasattr(change, "changes") else change[1]
        for _key, (_old, _new) in diff.items():
            pass


def sqlite_engine(url: str, wal: bool) -> sa.Engine:
    """A SQLite engine with working SAVEPOINTs (SQLAlchemy emits BEGIN itself)."""
    return emit_begin(sa.create_engine(url), wal)


def emit_begin(engine: sa.Engine, wal: bool = False) -> sa.Engine:
    """Make SQLAlchemy emit BEGIN on ``engine``'s SQLite connections, so that SAVEPOINT works."""

    @sa_event.listens_for(engine, "connect")
    def _connect(dbapi_connection: t.Any, record: object) -> None:
        dbapi_connection.isolation_level = None
        if wal:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @sa_event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


def make_models(prefix: str) -> tuple[type[sa_orm.DeclarativeBase], type[t.Any]]:
    """Return a fresh declarative base and its ``Item`` class, on table ``<prefix>_items``."""

    class Base(sa_orm.DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = f"{prefix}_items"

        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))
        value: sa_orm.Mapped[int] = sa_orm.mapped_column(default=0)

    Item.__qualname__ = Item.__name__ = f"Item_{prefix}"
    return Base, Item


class SqlAlchemySystem:
    """One transaction of each workload, written the way this system's users write it."""

    label = ""
    prefix = ""

    def __init__(self, engine: sa.Engine, amplification: int) -> None:
        self.engine = engine
        self.amplification = amplification
        self.Base, self.Item = make_models(f"bench_{self.prefix}")
        self.session_class = self.open()
        self.receivers: list[c.Callable[..., None]] = []
        self.ids: list[int] = []
        self.query = sa.select(self.Item.id).limit(1)

    def open(self) -> type[sa_orm.Session]:
        """Create the tables and the session factories; return the class listeners go on."""
        self.Base.metadata.drop_all(self.engine)
        self.Base.metadata.create_all(self.engine)
        self.maker = sa_orm.sessionmaker(self.engine)
        self.Session = sa_orm.scoped_session(self.maker)
        return self.maker.class_

    # Hooks each system implements.

    def on_commit(self, callback: c.Callable[[], None], session: sa_orm.Session) -> None:
        raise NotImplementedError

    def connect_receivers(self, receivers: list[c.Callable[..., None]]) -> None:
        raise NotImplementedError

    def disconnect_receivers(self) -> None:
        raise NotImplementedError

    def connect_diffs(self) -> bool:
        """Start field-diff delivery for W6; False if this system cannot do it."""
        raise NotImplementedError

    def disconnect_diffs(self) -> None:
        raise NotImplementedError

    def after_commit(self, session: sa_orm.Session, objects: list[t.Any]) -> None:
        """Work the system does by hand after ``commit()`` (only bare SQLAlchemy has some)."""

    def after_rollback(self) -> None:
        """Work the system does by hand after ``rollback()``."""

    def enter(self) -> None:
        """Prepare a batch of transactions."""

    def exit(self) -> None:
        """End a batch of transactions."""

    # Setup and teardown of one workload, outside the timings.

    def setup(self, workload: str) -> bool:
        """Prepare ``workload``; False if this system does not run it."""
        self.ids = self.reset(ROWS if workload == "W6" else 0)
        if workload == "W3":
            self.connect_receivers([make_receiver() for _ in range(ROWS)])
        if workload == "W6":
            return self.connect_diffs()
        return True

    def reset(self, rows: int) -> list[int]:
        """Empty the table, then insert ``rows`` rows; return their ids."""
        with self.engine.begin() as connection:
            connection.execute(self.Item.__table__.delete())
        with self.maker.begin() as session:
            items = [self.Item(name=f"r{i}", value=0) for i in range(rows)]
            session.add_all(items)
            session.flush()
            return [item.id for item in items]

    def before_batch(self, workload: str) -> None:
        """Connect the receivers of an A-recv batch (its W1 batches run without them)."""
        if workload == "A-recv":
            self.connect_receivers([make_receiver() for _ in range(self.amplification // ROWS)])

    def after_batch(self, workload: str) -> None:
        if workload == "A-recv":
            self.disconnect_receivers()

    def teardown(self, workload: str) -> None:
        if workload == "W3":
            self.disconnect_receivers()
        if workload == "W6":
            self.disconnect_diffs()

    def close(self) -> None:
        self.Session.remove()
        self.Base.metadata.drop_all(self.engine)
        self.engine.dispose()

    # The workloads.

    def transaction(self, workload: str) -> c.Callable[[], None]:
        """Return a function that runs one transaction of ``workload``."""
        if workload == "W6":
            return self._update_with_diffs
        callbacks, callback = 0, noop
        if workload in ("W2", "W4"):
            callbacks = ROWS
        elif workload == "A-cb":
            callbacks = self.amplification
        elif workload in ("A-query", "A-qc"):
            callbacks = self.amplification // 10
            callback = self.query_callback(commit=workload == "A-qc")
        savepoints = workload == "W5"
        rollback = workload == "W4"
        return functools.partial(self._insert, callbacks, callback, savepoints, rollback)

    def query_callback(self, commit: bool = False) -> c.Callable[[], None]:
        """A callback that runs one query in a session of its own, and commits it if
        ``commit`` (as a callback that writes must)."""
        maker, query = self.maker, self.query

        def callback() -> None:
            with maker() as session:
                session.scalar(query)

        def committing() -> None:
            with maker() as session:
                session.scalar(query)
                session.commit()

        return committing if commit else callback

    def _insert(
        self, callbacks: int, callback: c.Callable[[], None], savepoints: bool, rollback: bool
    ) -> None:
        Item = self.Item
        session = self.Session()
        objects = [Item(name="row", value=i) for i in range(ROWS)]
        session.add_all(objects)
        for _ in range(callbacks):
            self.on_commit(callback, session)
        if savepoints:
            with session.begin_nested():
                session.add(Item(name="released", value=0))
            savepoint = session.begin_nested()
            session.add(Item(name="rolled back", value=0))
            session.flush()
            savepoint.rollback()
        if rollback:
            session.flush()
            session.rollback()
            self.after_rollback()
        else:
            session.commit()
            self.after_commit(session, objects)
        self.Session.remove()

    def _update_with_diffs(self) -> None:
        Item = self.Item
        session = self.Session()
        objects = session.scalars(sa.select(Item).where(Item.id.in_(self.ids))).all()
        for item in objects:
            item.value += 1
        session.commit()
        self.after_commit(session, list(objects))
        self.Session.remove()


class Bare(SqlAlchemySystem):
    """No listeners at all: callbacks and receivers are called by hand after ``commit()``."""

    label = "bare SQLAlchemy"
    prefix = "bare"

    def __init__(self, engine: sa.Engine, amplification: int) -> None:
        super().__init__(engine, amplification)
        self.pending: list[c.Callable[[], None]] = []
        self.diffs = False

    def on_commit(self, callback: c.Callable[[], None], session: sa_orm.Session) -> None:
        self.pending.append(callback)

    def connect_receivers(self, receivers: list[c.Callable[..., None]]) -> None:
        self.receivers = receivers

    def disconnect_receivers(self) -> None:
        self.receivers = []

    def connect_diffs(self) -> bool:
        self.diffs = True
        return True

    def disconnect_diffs(self) -> None:
        self.diffs = False

    def after_commit(self, session: sa_orm.Session, objects: list[t.Any]) -> None:
        pending, self.pending = self.pending, []
        for callback in pending:
            callback()
        Item = self.Item
        for receiver in self.receivers:
            for item in objects:
                receiver(Item, instance=item, session=session, created=True)
        if self.diffs:  # no diffs without tracking: the floor is the call itself
            read_changes(session, changes=[(item, {}) for item in objects])

    def after_rollback(self) -> None:
        self.pending = []


hand_post_save = blinker.Signal()
hand_models_committed = blinker.Signal()


class HandRolled(SqlAlchemySystem):
    """What users write today: ``after_commit`` + a ``session.info`` list, blinker from mapper
    events, and ``before_flush`` attribute history for field diffs."""

    label = "hand-rolled"
    prefix = "hand"

    def __init__(self, engine: sa.Engine, amplification: int) -> None:
        super().__init__(engine, amplification)
        session_class = self.session_class
        sa_event.listen(session_class, "after_commit", _hand_after_commit)
        sa_event.listen(session_class, "after_rollback", _hand_after_rollback)
        sa_event.listen(self.Item, "after_insert", _hand_after_insert)
        sa_event.listen(self.Item, "after_update", _hand_after_update)

    def on_commit(self, callback: c.Callable[[], None], session: sa_orm.Session) -> None:
        session.info.setdefault("on_commit", []).append(callback)

    def connect_receivers(self, receivers: list[c.Callable[..., None]]) -> None:
        self.receivers = receivers
        for receiver in receivers:
            hand_post_save.connect(receiver, sender=self.Item)

    def disconnect_receivers(self) -> None:
        for receiver in self.receivers:
            hand_post_save.disconnect(receiver)
        self.receivers = []

    def connect_diffs(self) -> bool:
        sa_event.listen(self.session_class, "before_flush", _hand_collect_diffs)
        hand_models_committed.connect(read_changes)
        return True

    def disconnect_diffs(self) -> None:
        sa_event.remove(self.session_class, "before_flush", _hand_collect_diffs)
        hand_models_committed.disconnect(read_changes)


def _hand_after_commit(session: sa_orm.Session) -> None:
    for callback in session.info.pop("on_commit", ()):
        callback()
    changes = session.info.pop("changes", None)
    if changes:
        hand_models_committed.send(session, changes=changes)


def _hand_after_rollback(session: sa_orm.Session) -> None:
    session.info.pop("on_commit", None)
    session.info.pop("changes", None)


def _hand_after_insert(mapper: sa_orm.Mapper[t.Any], connection: object, target: object) -> None:
    hand_post_save.send(
        mapper.class_, instance=target, session=sa_orm.object_session(target), created=True
    )


def _hand_after_update(mapper: sa_orm.Mapper[t.Any], connection: object, target: object) -> None:
    hand_post_save.send(
        mapper.class_, instance=target, session=sa_orm.object_session(target), created=False
    )


def _hand_collect_diffs(session: sa_orm.Session, context: object, instances: object) -> None:
    changes = session.info.setdefault("changes", [])
    for obj in session.dirty:
        state = sa.inspect(obj)
        diff = {}
        for attr in state.mapper.column_attrs:
            history = state.attrs[attr.key].history
            if history.has_changes():
                old = history.deleted[0] if history.deleted else None
                diff[attr.key] = (old, history.added[0] if history.added else None)
        if diff:
            changes.append((obj, diff))


class Layer(SqlAlchemySystem):
    """sa_signals, installed on the ``scoped_session`` for each batch and uninstalled after it,
    so that its mapper listeners never run for the other systems' classes."""

    label = "sa_signals"
    prefix = "layer"

    def on_commit(self, callback: c.Callable[[], None], session: sa_orm.Session) -> None:
        sa_signals.on_commit(callback, session)

    def enter(self) -> None:
        sa_signals.install(self.Session)

    def exit(self) -> None:
        sa_signals.uninstall(self.Session)

    def connect_receivers(self, receivers: list[c.Callable[..., None]]) -> None:
        self.receivers = receivers
        for receiver in receivers:
            signals.post_save.connect(receiver, sender=self.Item)

    def disconnect_receivers(self) -> None:
        for receiver in self.receivers:
            signals.post_save.disconnect(receiver)
        self.receivers = []

    def connect_diffs(self) -> bool:
        signal = getattr(signals, "models_committed", None)
        if signal is None:
            return False
        signal.connect(read_changes)
        return True

    def disconnect_diffs(self) -> None:
        signal = getattr(signals, "models_committed", None)
        if signal is not None:
            signal.disconnect(read_changes)

    def query_callback(self, commit: bool = False) -> c.Callable[[], None]:
        """A callback that runs one query in its distinct session (the scoped session), which
        the layer commits whether or not ``commit`` is asked."""
        Session, query = self.Session, self.query

        def callback() -> None:
            Session().scalar(query)

        return callback


SYSTEMS: tuple[type[SqlAlchemySystem], ...] = (Bare, HandRolled, Layer)
