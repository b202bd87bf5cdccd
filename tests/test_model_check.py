"""Random session histories checked against a reference model of on_commit and the signals.

A hypothesis state machine drives a real installed session through begin, savepoints, flushes,
callbacks, receivers, commit, rollback, close and reset, and after every step compares what ran
with what a plain model of the documented semantics says must run. A failure prints the
shortest sequence of steps found that reproduces it.

``SA_SIGNALS_MODEL_EXAMPLES`` raises the number of histories tried (default 150).
"""

from __future__ import annotations

import os
import typing as t

import hypothesis.stateful as hs
import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st

import sa_signals
from sa_signals import signals
from sa_signals._state import STATE_ATTR
from tests.models import Audit
from tests.models import Base
from tests.models import Item

MODEL_SETTINGS = settings(
    max_examples=int(os.environ.get("SA_SIGNALS_MODEL_EXAMPLES", "150")),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
"""Bounded so the default suite stays fast; the variable above lengthens the search."""

Event = tuple[t.Any, ...]

RECEIVERS = ("before_commit", "after_commit", "after_rollback", "post_save")
"""The signals whose sends the model predicts."""

Callback = tuple[int, bool, "int | None"]
"""A callback's number, whether it fails, and the number of the callback it registers, if any."""


class Frame:
    """The model of one open transaction level: the outermost one or a savepoint."""

    def __init__(self) -> None:
        self.callbacks: list[Callback] = []
        self.writes: list[tuple[str, int | None]] = []


class Model:
    """What the documentation promises, written as plainly as possible.

    ``rows`` is the committed table (name -> value), ``audits`` the committed callback effects.
    A callback runs once iff its outermost transaction really commits and no savepoint it was
    registered in rolled back; ``after_commit`` receivers run first. A callback registered by a
    callback in its distinct session runs right after it, if that session really commits.
    """

    def __init__(self, joined: bool) -> None:
        self.joined = joined
        self.frames: list[Frame] = []
        self.rows: dict[str, int] = {}
        self.audits: set[int] = set()
        self.events: list[Event] = []
        self.receivers: set[str] = set()

    def visible(self) -> dict[str, int]:
        """The rows as the open transaction sees them."""
        rows = dict(self.rows)
        for frame in self.frames:
            apply(rows, frame.writes)
        return rows

    def autobegin(self) -> None:
        if not self.frames:
            self.frames.append(Frame())

    def run_callback(self, number: int, fails: bool, child: int | None) -> None:
        self.events.append(("callback", number))
        if fails:
            return
        self.audits.add(number)
        if child is not None and not self.joined:
            self.run_callback(child, False, None)

    def before_commit(self) -> None:
        """Once per outermost commit() (savepoint releases and callbacks' sessions send none)."""
        if "before_commit" in self.receivers:
            self.events.append(("before_commit",))

    def end_outermost(self, committed: bool) -> None:
        frames, self.frames = self.frames, []
        if committed:
            for frame in frames:
                apply(self.rows, frame.writes)
            if self.joined:
                return  # only a savepoint of the test's transaction was released
            if "after_commit" in self.receivers:
                self.events.append(("after_commit",))
            for frame in frames:
                for callback in frame.callbacks:
                    self.run_callback(*callback)
        elif frames and "after_rollback" in self.receivers:
            self.events.append(("after_rollback",))


def apply(rows: dict[str, int], writes: list[tuple[str, int | None]]) -> None:
    for name, value in writes:
        if value is None:
            del rows[name]
        else:
            rows[name] = value


class SessionHistory(hs.RuleBasedStateMachine):
    """One installed session, its receivers and callbacks, and the model beside it."""

    engine: t.ClassVar[sa.Engine]

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []
        self.counter = 0
        self.savepoints: list[sa_orm.SessionTransaction] = []
        self.connected: dict[str, t.Callable[..., None]] = {}
        self.connection: sa.Connection | None = None
        self.outer: sa.Transaction | None = None
        self.Session: sa_orm.scoped_session[sa_orm.Session] | None = None
        self.model = Model(joined=False)
        with self.engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(table.delete())

    @hs.initialize(bind=st.sampled_from(["engine", "connection", "joined"]))
    def install(self, bind: str) -> None:
        """A session on the engine, on a connection, or joined into a test's transaction."""
        self.model = Model(joined=bind == "joined")
        if bind == "engine":
            maker = sa_orm.sessionmaker(self.engine)
        else:
            self.connection = self.engine.connect()
            if bind == "joined":
                self.outer = self.connection.begin()
            maker = sa_orm.sessionmaker(
                bind=self.connection, join_transaction_mode="create_savepoint"
            )
        self.Session = sa_orm.scoped_session(maker)
        sa_signals.install(self.Session)

    @property
    def session(self) -> sa_orm.Session:
        assert self.Session is not None
        return self.Session()

    def teardown(self) -> None:
        for signal_name, receiver in self.connected.items():
            getattr(signals, signal_name).disconnect(receiver)
        if self.Session is not None:
            self.Session.remove()
            sa_signals.uninstall(self.Session)
        if self.outer is not None:
            assert self.connection is not None
            self.outer.rollback()
            # Nothing of the test's transaction reached the database.
            assert self.read(self.engine) == ({}, set())
        if self.connection is not None:
            self.connection.close()

    # Transactions.

    @hs.precondition(lambda self: not self.model.frames)
    @hs.rule()
    def begin(self) -> None:
        self.session.begin()
        self.model.autobegin()

    @hs.rule(registers=st.lists(st.none() | st.booleans(), min_size=1, max_size=3))
    def begin_nested(self, registers: list[bool | None]) -> None:
        """Open savepoints one inside the other, each with a callback unless its entry is None."""
        for register in registers:
            self.savepoints.append(self.session.begin_nested())
            self.model.autobegin()
            self.model.frames.append(Frame())
            if register is not None:
                self.register(register)

    @hs.precondition(lambda self: self.savepoints)
    @hs.rule(releases=st.lists(st.booleans(), min_size=1, max_size=3))
    def end_savepoints(self, releases: list[bool]) -> None:
        """End innermost savepoints one after the other: release (True) or roll back."""
        for release in releases[: len(self.savepoints)]:
            savepoint = self.savepoints.pop()
            assert savepoint is self.session.get_nested_transaction()
            frame = self.model.frames.pop()
            if release:
                savepoint.commit()
                self.model.frames[-1].callbacks.extend(frame.callbacks)
                self.model.frames[-1].writes.extend(frame.writes)
            else:
                savepoint.rollback()

    @hs.precondition(lambda self: len(self.savepoints) > 1)
    @hs.rule(data=st.data())
    def rollback_enclosing_savepoint(self, data: st.DataObject) -> None:
        """Roll back a savepoint that has savepoints open inside it: they all go."""
        level = data.draw(st.integers(0, len(self.savepoints) - 2))
        self.savepoints[level].rollback()
        del self.savepoints[level:]
        del self.model.frames[level + 1 :]

    @hs.rule()
    def commit(self) -> None:
        self.session.commit()
        self.model.autobegin()  # commit() with no transaction begins one and commits it
        self.model.before_commit()
        self.model.end_outermost(committed=True)
        self.savepoints.clear()
        self.check_database()

    @hs.rule(how=st.sampled_from(["rollback", "close", "reset"]))
    def end_without_commit(self, how: str) -> None:
        getattr(self.session, how)()
        self.model.end_outermost(committed=False)
        self.savepoints.clear()

    # Writes.

    def write(self, name: str, value: int | None) -> None:
        self.model.autobegin()
        self.model.frames[-1].writes.append((name, value))

    @hs.rule(value=st.integers(0, 2))
    def flush_new(self, value: int) -> None:
        self.counter += 1
        name = f"n{self.counter}"
        self.session.add(Item(name=name, value=value))
        self.session.flush()
        self.write(name, value)
        if "post_save" in self.model.receivers:
            self.model.events.append(("post_save", name, True))

    def pick(self, data: st.DataObject) -> tuple[str, int] | None:
        visible = self.model.visible()
        if not visible:
            return None
        name = data.draw(st.sampled_from(sorted(visible)))
        return name, visible[name]

    def load(self, name: str, expected: int) -> Item:
        item = self.session.scalars(sa.select(Item).filter_by(name=name)).one()
        assert item.value == expected
        return item

    @hs.rule(data=st.data(), value=st.integers(0, 2))
    def flush_change(self, data: st.DataObject, value: int) -> None:
        picked = self.pick(data)
        if picked is None:
            return
        name, old = picked
        self.load(name, old).value = value
        self.session.flush()
        self.write(name, value)
        if "post_save" in self.model.receivers and value != old:
            self.model.events.append(("post_save", name, False))

    @hs.rule(data=st.data())
    def flush_delete(self, data: st.DataObject) -> None:
        picked = self.pick(data)
        if picked is None:
            return
        name, old = picked
        self.session.delete(self.load(name, old))
        self.session.flush()
        self.write(name, None)

    @hs.rule(data=st.data(), register=st.booleans())
    def integrity_error_in_savepoint(self, data: st.DataObject, register: bool) -> None:
        """A duplicate row fails its flush; rolling back the savepoint recovers."""
        picked = self.pick(data)
        if picked is None:
            return
        savepoint = self.session.begin_nested()
        self.model.autobegin()
        if register:
            self.counter += 1
            sa_signals.on_commit(self.callback(self.counter, False, None), self.session)
        self.session.add(Item(name=picked[0]))
        with pytest.raises(sa_exc.IntegrityError):
            self.session.flush()
        savepoint.rollback()

    @hs.rule(data=st.data(), at_commit=st.booleans())
    def integrity_error_then_rollback(self, data: st.DataObject, at_commit: bool) -> None:
        """A duplicate row fails a flush or the commit's flush; only rollback() is left."""
        picked = self.pick(data)
        if picked is None:
            return
        self.session.add(Item(name=picked[0]))
        self.model.autobegin()
        with pytest.raises(sa_exc.IntegrityError):
            if at_commit:
                # The commit's flush runs in the innermost savepoint first: with one open, the
                # flush fails before the outermost transaction's before_commit.
                if len(self.model.frames) == 1:
                    self.model.before_commit()
                self.session.commit()
            else:
                self.session.flush()
        self.session.rollback()
        self.model.end_outermost(committed=False)
        self.savepoints.clear()

    # Callbacks and receivers.

    def callback(self, number: int, fails: bool, child: int | None) -> t.Callable[[], None]:
        scoped = self.Session

        def callback() -> None:
            assert scoped is not None
            self.events.append(("callback", number))
            scoped.add(Audit(message=str(number)))
            if child is not None:
                sa_signals.on_commit(self.callback(child, False, None), scoped)
            if fails:
                scoped.flush()
                raise RuntimeError(f"callback {number} failed")

        return callback

    @hs.rule(fails=st.booleans(), nests=st.booleans())
    def register(self, fails: bool, nests: bool = False) -> None:
        """Register a callback that writes its number, may register another, then may raise."""
        self.counter += 1
        number = self.counter
        child = None
        if nests:
            self.counter += 1
            child = self.counter
        sa_signals.on_commit(self.callback(number, fails, child), self.session)
        if self.model.frames:
            self.model.frames[-1].callbacks.append((number, fails, child))
        else:
            self.model.run_callback(number, fails, child)  # no transaction: runs at once

    @hs.rule(name=st.sampled_from(RECEIVERS))
    def toggle_receiver(self, name: str) -> None:
        signal = getattr(signals, name)
        if name in self.connected:
            signal.disconnect(self.connected.pop(name))
            self.model.receivers.discard(name)
            return

        def receiver(sender: object, **kwargs: t.Any) -> None:
            if name == "post_save":
                self.events.append((name, kwargs["instance"].name, kwargs["created"]))
            else:
                self.events.append((name,))

        if name == "post_save":
            signal.connect(receiver, sender=Item, weak=False)
        else:
            signal.connect(receiver, weak=False)
        self.connected[name] = receiver
        self.model.receivers.add(name)

    # Checks.

    def read(self, source: sa.Engine | sa.Connection) -> tuple[dict[str, int], set[int]]:
        def query(connection: sa.Connection) -> tuple[dict[str, int], set[int]]:
            result = connection.execute(sa.select(Item.name, Item.value))
            rows = {name: value for name, value in result}
            audits = {int(m) for m in connection.scalars(sa.select(Audit.message))}
            return rows, audits

        if isinstance(source, sa.Connection):
            return query(source)
        with source.connect() as connection:
            return query(connection)

    def check_database(self) -> None:
        source = self.connection if self.outer is not None else self.engine
        assert self.read(source) == (self.model.rows, self.model.audits)

    @hs.invariant()
    def ran_what_the_model_ran(self) -> None:
        assert self.events == self.model.events

    @hs.invariant()
    def transaction_state_matches(self) -> None:
        if self.Session is None:
            return
        session = self.session
        assert self.Session() is session  # the registry is back to the original session
        assert session.in_transaction() == bool(self.model.frames)
        assert session.in_nested_transaction() == (len(self.model.frames) > 1)
        assert len(self.savepoints) == max(len(self.model.frames) - 1, 0)
        if not self.model.frames:
            state = session.__dict__.get(STATE_ATTR)
            assert state is None or (not state.queue and not state.connections)
            if self.connection is None:
                assert self.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            elif self.outer is None:
                assert not self.connection.in_transaction()


@pytest.mark.backends("sqlite", "postgresql", "mariadb")
def test_random_histories_match_the_model(engine: sa.Engine) -> None:
    """Callbacks, after_commit, after_rollback and post_save follow the model in any history."""
    machine = type("History", (SessionHistory,), {"engine": engine})
    hs.run_state_machine_as_test(machine, settings=MODEL_SETTINGS)
