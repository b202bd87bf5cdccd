"""Random session histories checked against a reference model of on_commit and the signals.

A hypothesis state machine drives a real installed session through begin, savepoints, flushes,
callbacks, receivers, commit, rollback, close and reset, and after every step compares what ran
with what a plain model of the documented semantics says must run. A failure prints the
shortest sequence of steps found that reproduces it.

The same machine runs in the ``async`` flavour: an ``AsyncSession`` from an
``async_scoped_session``, awaited where the async API returns awaitables, with callbacks and
receivers drawn as coroutine functions or plain ones.

``SA_SIGNALS_MODEL_EXAMPLES`` raises the number of histories tried (default 150; two thirds of
that in the async flavour).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import typing as t

import hypothesis.stateful as hs
import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st

import sa_signals
from sa_signals import signals
from sa_signals._core import bridge as _bridge
from sa_signals._core import commit as _commit
from sa_signals._core import queue as _queue
from sa_signals._core import runner as _runner
from sa_signals._core.state import STATE_ATTR
from tests.conftest import async_engine
from tests.conftest import Flavour
from tests.models import Audit
from tests.models import Base
from tests.models import Item

on_commit_module = importlib.import_module("sa_signals.on_commit")
"""The module: ``sa_signals.on_commit`` is the function the package re-exports."""

EXAMPLES = int(os.environ.get("SA_SIGNALS_MODEL_EXAMPLES", "150"))

MODEL_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
"""Bounded so the default suite stays fast; the variable above lengthens the search."""

ASYNC_SETTINGS = settings(MODEL_SETTINGS, max_examples=max(EXAMPLES * 2 // 3, 1))
"""A step costs more in the async flavour (a greenlet switch and a loop turn per await)."""

Event = tuple[t.Any, ...]

RECEIVERS = ("before_commit", "after_commit", "after_rollback", "post_save")
"""The signals whose sends the model predicts."""

Callback = tuple[int, bool, "int | None"]
"""A callback's number, whether it fails, and the number of the callback it registers, if any."""

AsyncScoped = sa_asyncio.async_scoped_session[sa_asyncio.AsyncSession]

Scoped = sa_orm.scoped_session[sa_orm.Session] | AsyncScoped


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
                return  # only a savepoint of the test's transaction was released: all waits
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
    """One installed session, its receivers and callbacks, and the model beside it.

    In the async flavour ``aengine`` is set, the session is an ``AsyncSession`` and ``aw()``
    awaits what its API returns (the machine runs inside SQLAlchemy's greenlet, in one task).
    """

    engine: t.ClassVar[sa.Engine]
    flavour: t.ClassVar[Flavour]
    aengine: t.ClassVar[sa_asyncio.AsyncEngine | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []
        self.counter = 0
        self.savepoints: list[t.Any] = []
        self.connected: dict[str, t.Callable[..., t.Any]] = {}
        self.connection: t.Any = None
        self.outer: t.Any = None
        self.Session: Scoped | None = None
        self.model = Model(joined=False)
        with self.engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(table.delete())

    def aw(self, value: t.Any) -> t.Any:
        return self.flavour.aw(value)

    @hs.initialize(bind=st.sampled_from(["engine", "connection", "joined"]))
    def install(self, bind: str) -> None:
        """A session on the engine, on a connection, or joined into a test's transaction."""
        self.model = Model(joined=bind == "joined")
        engine: t.Any = self.engine if self.aengine is None else self.aengine
        if bind != "engine":
            self.connection = self.aw(engine.connect())
            if bind == "joined":
                self.outer = self.aw(self.connection.begin())
        options: dict[str, t.Any] = {"bind": engine}
        if self.connection is not None:
            options = {"bind": self.connection, "join_transaction_mode": "create_savepoint"}
        if self.aengine is None:
            self.Session = sa_orm.scoped_session(sa_orm.sessionmaker(**options))
        else:
            self.Session = sa_asyncio.async_scoped_session(
                sa_asyncio.async_sessionmaker(**options), scopefunc=asyncio.current_task
            )
        sa_signals.install(self.Session)

    @property
    def session(self) -> t.Any:
        assert self.Session is not None
        return self.Session()

    def teardown(self) -> None:
        for signal_name, receiver in self.connected.items():
            getattr(signals, signal_name).disconnect(receiver)
        if self.Session is not None:
            self.aw(self.Session.remove())
            sa_signals.uninstall(self.Session)
        if self.outer is not None:
            assert self.connection is not None
            self.aw(self.outer.rollback())
            # Nothing of the test's transaction reached the database.
            assert self.read(self.engine) == ({}, set())
        if self.connection is not None:
            self.aw(self.connection.close())

    # Transactions.

    @hs.precondition(lambda self: not self.model.frames)
    @hs.rule()
    def begin(self) -> None:
        self.aw(self.session.begin())
        self.model.autobegin()

    @hs.rule(
        registers=st.lists(st.none() | st.booleans(), min_size=1, max_size=3),
        coroutine=st.booleans(),
    )
    def begin_nested(self, registers: list[bool | None], coroutine: bool) -> None:
        """Open savepoints one inside the other, each with a callback unless its entry is None."""
        for register in registers:
            self.savepoints.append(self.aw(self.session.begin_nested()))
            self.model.autobegin()
            self.model.frames.append(Frame())
            if register is not None:
                self.register(register, coroutine=coroutine)

    @hs.precondition(lambda self: self.savepoints)
    @hs.rule(releases=st.lists(st.booleans(), min_size=1, max_size=3))
    def end_savepoints(self, releases: list[bool]) -> None:
        """End innermost savepoints one after the other: release (True) or roll back."""
        for release in releases[: len(self.savepoints)]:
            savepoint = self.savepoints.pop()
            assert savepoint is self.session.get_nested_transaction()
            frame = self.model.frames.pop()
            if release:
                self.aw(savepoint.commit())
                self.model.frames[-1].callbacks.extend(frame.callbacks)
                self.model.frames[-1].writes.extend(frame.writes)
            else:
                self.aw(savepoint.rollback())

    @hs.precondition(lambda self: len(self.savepoints) > 1)
    @hs.rule(data=st.data())
    def rollback_enclosing_savepoint(self, data: st.DataObject) -> None:
        """Roll back a savepoint that has savepoints open inside it: they all go."""
        level = data.draw(st.integers(0, len(self.savepoints) - 2))
        self.aw(self.savepoints[level].rollback())
        del self.savepoints[level:]
        del self.model.frames[level + 1 :]

    @hs.rule()
    def commit(self) -> None:
        self.aw(self.session.commit())
        self.model.autobegin()  # commit() with no transaction begins one and commits it
        self.model.before_commit()
        self.model.end_outermost(committed=True)
        self.savepoints.clear()
        self.check_database()

    @hs.rule(how=st.sampled_from(["rollback", "close", "reset"]))
    def end_without_commit(self, how: str) -> None:
        self.aw(getattr(self.session, how)())
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
        self.aw(self.session.flush())
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
        item: Item = self.aw(self.session.scalars(sa.select(Item).filter_by(name=name))).one()
        assert item.value == expected
        return item

    @hs.rule(data=st.data(), value=st.integers(0, 2))
    def flush_change(self, data: st.DataObject, value: int) -> None:
        picked = self.pick(data)
        if picked is None:
            return
        name, old = picked
        self.load(name, old).value = value
        self.aw(self.session.flush())
        self.write(name, value)
        if "post_save" in self.model.receivers and value != old:
            self.model.events.append(("post_save", name, False))

    @hs.rule(data=st.data())
    def flush_delete(self, data: st.DataObject) -> None:
        picked = self.pick(data)
        if picked is None:
            return
        name, old = picked
        self.aw(self.session.delete(self.load(name, old)))
        self.aw(self.session.flush())
        self.write(name, None)

    @hs.rule(data=st.data(), register=st.booleans(), coroutine=st.booleans())
    def integrity_error_in_savepoint(
        self, data: st.DataObject, register: bool, coroutine: bool
    ) -> None:
        """A duplicate row fails its flush; rolling back the savepoint recovers."""
        picked = self.pick(data)
        if picked is None:
            return
        savepoint = self.aw(self.session.begin_nested())
        self.model.autobegin()
        if register:
            self.counter += 1
            callback = self.callback(self.counter, False, None, coroutine)
            sa_signals.on_commit(callback, self.session)
        self.session.add(Item(name=picked[0]))
        with pytest.raises(sa_exc.IntegrityError):
            self.aw(self.session.flush())
        self.aw(savepoint.rollback())

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
                self.aw(self.session.commit())
            else:
                self.aw(self.session.flush())
        self.aw(self.session.rollback())
        self.model.end_outermost(committed=False)
        self.savepoints.clear()

    # Callbacks and receivers.

    def callback(
        self, number: int, fails: bool, child: int | None, coroutine: bool
    ) -> t.Callable[[], t.Any]:
        """A callback writing its number through its distinct session.

        In the async flavour a coroutine one awaits its flush; a plain one flushes through the
        sync API of the same session (it runs inside SQLAlchemy's greenlet).
        """
        scoped = self.Session
        assert scoped is not None

        def callback() -> None:
            self.events.append(("callback", number))
            scoped.add(Audit(message=str(number)))
            if child is not None:
                sa_signals.on_commit(self.callback(child, False, None, coroutine), scoped)
            if fails:
                sa_signals.current_session().flush()
                raise RuntimeError(f"callback {number} failed")

        async def acallback() -> None:
            await asyncio.sleep(0)
            self.events.append(("callback", number))
            session = t.cast("sa_asyncio.AsyncSession", scoped())
            session.add(Audit(message=str(number)))
            if child is not None:
                sa_signals.on_commit(self.callback(child, False, None, coroutine), scoped)
            if fails:
                await session.flush()
                raise RuntimeError(f"callback {number} failed")

        return acallback if coroutine and self.aengine is not None else callback

    @hs.rule(fails=st.booleans(), nests=st.booleans(), coroutine=st.booleans())
    def register(self, fails: bool, nests: bool = False, coroutine: bool = False) -> None:
        """Register a callback that writes its number, may register another, then may raise."""
        self.counter += 1
        number = self.counter
        child = None
        if nests:
            self.counter += 1
            child = self.counter
        callback = self.callback(number, fails, child, coroutine)
        if self.model.frames:
            sa_signals.on_commit(callback, self.session)
            self.model.frames[-1].callbacks.append((number, fails, child))
        else:
            # No transaction: runs at once (awaited through the awaitable form when async);
            # joined into the test's transaction, it waits for that one, which rolls back.
            if self.aengine is None:
                sa_signals.on_commit(callback, self.session)
            else:
                self.aw(sa_signals.on_commit_async(callback, self.session))
            if not self.model.joined:
                self.model.run_callback(number, fails, child)

    @hs.rule(name=st.sampled_from(RECEIVERS), coroutine=st.booleans())
    def toggle_receiver(self, name: str, coroutine: bool) -> None:
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

        async def areceiver(sender: object, **kwargs: t.Any) -> None:
            await asyncio.sleep(0)
            receiver(sender, **kwargs)

        chosen = areceiver if coroutine and self.aengine is not None else receiver
        if name == "post_save":
            signal.connect(chosen, sender=Item, weak=False)
        else:
            signal.connect(chosen, weak=False)
        self.connected[name] = chosen
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
        if self.outer is None:
            source: sa.Engine | sa.Connection = self.engine
        elif self.aengine is None:
            source = self.connection
        else:
            source = self.connection.sync_connection  # queried through the async driver
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
            sync_session = session if self.aengine is None else session.sync_session
            state = sync_session.__dict__.get(STATE_ATTR)
            assert state is None or (not state.queue and not state.connections)
            if self.connection is None:
                pooled = self.engine if self.aengine is None else self.aengine.sync_engine
                assert pooled.pool.checkedout() == 0  # type: ignore[attr-defined]
            elif self.outer is None:
                assert not self.connection.in_transaction()
        if self.aengine is not None:
            # One task drives the machine: its key is the only one, callbacks' keys are gone.
            assert list(self.Session.registry.registry.values()) == [session]  # type: ignore[union-attr]


def run_machine(
    engine: sa.Engine, flavour: Flavour, aengine: sa_asyncio.AsyncEngine | None
) -> None:
    attributes = {"engine": engine, "flavour": flavour, "aengine": aengine}
    machine = type("History", (SessionHistory,), attributes)
    hs.run_state_machine_as_test(
        machine, settings=MODEL_SETTINGS if aengine is None else ASYNC_SETTINGS
    )


@pytest.mark.flavours("sync")
@pytest.mark.backends("sqlite", "postgresql", "mariadb")
def test_random_histories_match_the_model(engine: sa.Engine, flavour: Flavour) -> None:
    """Callbacks, after_commit, after_rollback and post_save follow the model in any history."""
    run_machine(engine, flavour, None)


@pytest.mark.flavours("sync")
@pytest.mark.backends("sqlite")
def test_portable_paths_match_the_model(
    engine: sa.Engine, flavour: Flavour, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same holds on the paths taken where SQLAlchemy's private layout is not known: no
    reads of ``Session._transaction`` and the like, and the connections recorded by an
    ``after_begin`` listener instead of read from ``SessionTransaction.connections``."""
    for module in (_queue, _bridge, _runner):
        monkeypatch.setattr(module, "_FIELDS_KNOWN", False)
    monkeypatch.setattr(_bridge, "_CONNECTIONS_KNOWN", False)
    monkeypatch.setattr(_commit, "_CONNECTIONS_KNOWN", False)
    run_machine(engine, flavour, None)


@pytest.mark.flavours("async")
@pytest.mark.backends("sqlite", "postgresql")
def test_random_async_histories_match_the_model(
    engine: sa.Engine, backend: str, flavour: Flavour
) -> None:
    """The same holds for an AsyncSession with coroutine and plain callbacks and receivers."""
    aengine = async_engine(backend, engine)
    try:
        run_machine(engine, flavour, aengine)
    finally:
        flavour.aw(aengine.dispose())
