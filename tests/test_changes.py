"""Commit-time change sets: net effects, savepoints, signals, run on every configured backend."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import typing as t

import hypothesis
import hypothesis.strategies as st
import pytest
import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import Change
from sa_signals import NOT_LOADED
from sa_signals import signals
from sa_signals._core import changes as changes_module
from sa_signals._core import state as _state
from sa_signals._core.state import STATE_ATTR
from tests.models import Animal
from tests.models import Audit
from tests.models import Author
from tests.models import Book
from tests.models import Cat
from tests.models import Dog
from tests.models import Item
from tests.models import Tag

if t.TYPE_CHECKING:
    from tests.conftest import Connector
    from tests.conftest import Flavour

Scoped = sa_orm.scoped_session[sa_orm.Session]
Calls = list[tuple[t.Any, dict[str, t.Any]]]


@pytest.fixture
def committed(connect: Connector) -> Calls:
    """Every send of models_committed."""
    return connect.record(signals.models_committed)


def changes_of(calls: Calls) -> list[Change]:
    """The changes of the only models_committed send."""
    assert len(calls) == 1, calls
    changes: list[Change] = calls[0][1]["changes"]
    return changes


def summary(
    changes: list[Change],
) -> list[tuple[str, str, tuple[t.Any, ...] | None, dict[str, t.Any]]]:
    return [(c.operation, c.model.__name__, c.identity, dict(c.changes)) for c in changes]


def load(session: sa_orm.Session, *objects: object) -> None:
    """Load ``objects`` again after a commit expired them."""
    for obj in objects:
        session.refresh(obj)


def add_item(session: sa_orm.Session, name: str = "a", value: int = 1) -> Item:
    item = Item(name=name, value=value)
    session.add(item)
    session.commit()
    session.refresh(item)  # commit expired it: load it in the next transaction
    return item


class TestChangeRecord:
    def test_insert_reports_inserted_values(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """An insert carries every column with old None, and the object."""
        item = Item(name="a", value=3)
        session.add(item)
        session.commit()
        [change] = changes_of(committed)
        assert change.operation == "insert"
        assert change.model is Item
        assert change.identity == (item.id,)
        assert change.instance is item
        assert dict(change.changes) == {
            "id": (None, item.id),
            "name": (None, "a"),
            "value": (None, 3),
        }
        assert change.statement is None

    def test_update_reports_old_and_new(self, session: sa_orm.Session, committed: Calls) -> None:
        """An update carries only the changed attributes, as (old, new)."""
        item = add_item(session, value=1)
        committed.clear()
        item.value = 2
        session.commit()
        assert summary(changes_of(committed)) == [
            ("update", "Item", (item.id,), {"value": (1, 2)})
        ]

    def test_delete_reports_last_values(self, session: sa_orm.Session, committed: Calls) -> None:
        """A delete carries each column's value as old, None as new."""
        item = add_item(session, value=4)
        ident = item.id
        committed.clear()
        session.delete(item)
        session.commit()
        assert summary(changes_of(committed)) == [
            (
                "delete",
                "Item",
                (ident,),
                {"id": (ident, None), "name": ("a", None), "value": (4, None)},
            )
        ]

    def test_change_is_immutable(self, session: sa_orm.Session, committed: Calls) -> None:
        """Neither a Change nor its changes mapping can be altered."""
        add_item(session)
        [change] = changes_of(committed)
        with pytest.raises(dataclasses.FrozenInstanceError):
            change.operation = "delete"  # type: ignore[misc]
        with pytest.raises(TypeError):
            change.changes["name"] = (None, "b")  # type: ignore[index]

    def test_usable_after_session_closed_without_sql(
        self, Session: Scoped, engine: sa.Engine, committed: Calls
    ) -> None:
        """Records are plain values: reading them after close() emits no SQL."""
        session = Session()
        item = add_item(session, value=5)
        ident = item.id
        item.value = 6
        session.commit()
        session.close()
        Session.remove()
        statements: list[str] = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        sa_event.listen(engine, "before_cursor_execute", listener)
        try:
            records = [change for _, kwargs in committed for change in kwargs["changes"]]
            seen = [(c.operation, c.identity, dict(c.changes), repr(c)) for c in records]
        finally:
            sa_event.remove(engine, "before_cursor_execute", listener)
        assert statements == []
        assert [s[:3] for s in seen] == [
            (
                "insert",
                (ident,),
                {"id": (None, ident), "name": (None, "a"), "value": (None, 5)},
            ),
            ("update", (ident,), {"value": (5, 6)}),
        ]


class TestNetEffect:
    def test_insert_then_update_is_one_insert(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """Inserted then updated over two flushes: one insert with the final values."""
        item = Item(name="a", value=1)
        session.add(item)
        session.flush()
        item.value = 2
        session.flush()
        item.name = "b"
        session.commit()
        assert summary(changes_of(committed)) == [
            (
                "insert",
                "Item",
                (item.id,),
                {"id": (None, item.id), "name": (None, "b"), "value": (None, 2)},
            )
        ]

    def test_insert_then_delete_is_nothing(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """Inserted then deleted: no change, and no send at all."""
        item = Item(name="a")
        session.add(item)
        session.flush()
        session.delete(item)
        session.commit()
        assert committed == []

    def test_update_then_delete_is_one_delete(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """Updated then deleted: one delete whose old values are those at transaction start."""
        item = add_item(session, value=1)
        ident = item.id
        committed.clear()
        item.value = 2
        session.flush()
        session.delete(item)
        session.commit()
        assert summary(changes_of(committed)) == [
            (
                "delete",
                "Item",
                (ident,),
                {"id": (ident, None), "name": ("a", None), "value": (1, None)},
            )
        ]

    def test_accumulates_over_flushes(self, session: sa_orm.Session, committed: Calls) -> None:
        """Several flushes: old is the value at transaction start, new the final one."""
        item = add_item(session, value=1)
        committed.clear()
        for value in (2, 3, 4):
            item.value = value
            session.flush()
        session.commit()
        assert summary(changes_of(committed)) == [
            ("update", "Item", (item.id,), {"value": (1, 4)})
        ]

    def test_changed_back_is_no_update(self, session: sa_orm.Session, committed: Calls) -> None:
        """A column changed and changed back disappears; with nothing left, so does the record."""
        item = add_item(session, value=1)
        other = add_item(session, name="b", value=1)
        load(session, item)
        committed.clear()
        item.value = 2
        other.value = 2
        other.name = "c"
        session.flush()
        item.value = 1
        other.value = 1
        session.commit()
        assert summary(changes_of(committed)) == [
            ("update", "Item", (other.id,), {"name": ("b", "c")})
        ]

    def test_set_to_equal_value_is_no_change(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """Assigning the current value changes nothing."""
        item = add_item(session, value=1)
        committed.clear()
        item.value = 1
        session.commit()
        assert committed == []

    def test_ordered_by_first_flush(self, session: sa_orm.Session, committed: Calls) -> None:
        """Records come in the order of the flush in which each row first appeared."""
        first = add_item(session, name="first", value=1)
        committed.clear()
        first.value = 2
        session.flush()
        second = Item(name="second")
        session.add(second)
        session.flush()
        first.value = 3
        session.commit()
        assert [c.instance for c in changes_of(committed)] == [first, second]

    def test_unloaded_old_value_is_not_loaded(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """An expired attribute set without being read reports NOT_LOADED, never a guess."""
        item = add_item(session, value=1)
        committed.clear()
        session.expire(item, ["value"])
        item.value = 2
        session.commit()
        [change] = changes_of(committed)
        assert change.changes == {"value": (NOT_LOADED, 2)}
        assert repr(NOT_LOADED) == "sa_signals.NOT_LOADED"

    def test_fully_expired_object_updated_without_select(
        self, session: sa_orm.Session, engine: sa.Engine, committed: Calls
    ) -> None:
        """Recording never loads: an expired object set blindly costs no extra SELECT."""
        item = add_item(session, value=1)
        ident = item.id
        committed.clear()
        session.expire(item)
        item.value = 2
        statements: list[str] = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        sa_event.listen(engine, "before_cursor_execute", listener)
        try:
            session.commit()
        finally:
            sa_event.remove(engine, "before_cursor_execute", listener)
        # SQLAlchemy itself loads the expired primary key for the UPDATE; nothing more.
        assert [s.split()[0] for s in statements] == ["SELECT", "UPDATE"]
        assert summary(changes_of(committed)) == [
            ("update", "Item", (ident,), {"value": (NOT_LOADED, 2)})
        ]

    def test_primary_key_change_reports_new_identity(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """An update of the primary key itself is reported under the new key."""
        tag = Tag(namespace="a", name="x")
        session.add(tag)
        session.commit()
        load(session, tag)
        committed.clear()
        tag.name = "y"
        session.commit()
        assert summary(changes_of(committed)) == [
            ("update", "Tag", ("a", "y"), {"name": ("x", "y")})
        ]

    def test_insert_reports_null_for_unset_columns(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """A column left unset was inserted as NULL: reported as None, not NOT_LOADED."""
        book = Book(title="T")
        session.add(book)
        session.commit()
        assert changes_of(committed)[0].changes["author_id"] == (None, None)

    def test_sql_expression_new_value_is_not_loaded(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """A value computed by the database is NOT_LOADED, not the expression."""
        item = add_item(session, value=1)
        committed.clear()
        item.value = Item.value + 1  # type: ignore[assignment]
        session.commit()
        assert changes_of(committed)[0].changes == {"value": (1, NOT_LOADED)}

    def test_outer_rollback_drops_everything(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """A rolled-back transaction reports nothing, not even at the next commit."""
        item = add_item(session, value=1)
        committed.clear()
        item.value = 5
        session.add(Item(name="gone"))
        session.flush()
        session.rollback()
        assert committed == []
        session.add(Item(name="kept"))
        session.commit()
        assert [c.changes["name"][1] for c in changes_of(committed)] == ["kept"]

    def test_modified_then_deleted_in_one_flush(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """A delete of an object with unflushed changes reports its values in the database."""
        item = add_item(session, value=1)
        ident = item.id
        committed.clear()
        item.value = 2
        session.delete(item)
        session.commit()
        assert changes_of(committed)[0].changes["value"] == (1, None)
        assert changes_of(committed)[0].identity == (ident,)

    def test_delete_of_expired_object(self, session: sa_orm.Session, committed: Calls) -> None:
        """Deleting an object without loading it reports its unloaded columns as NOT_LOADED."""
        item = add_item(session, value=1)
        ident = item.id
        committed.clear()
        session.expire(item, ["value", "name"])
        session.delete(item)
        session.commit()
        assert dict(changes_of(committed)[0].changes) == {
            "id": (ident, None),
            "name": (NOT_LOADED, None),
            "value": (NOT_LOADED, None),
        }

    def test_deleted_then_inserted_again_is_an_update(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """The same object deleted and added back: the row's net effect is an update."""
        item = add_item(session, value=1)
        committed.clear()
        session.delete(item)
        session.flush()
        sa_orm.make_transient(item)
        item.value = 3
        session.add(item)
        session.commit()
        assert summary(changes_of(committed)) == [
            ("update", "Item", (item.id,), {"value": (1, 3)})
        ]

    def test_row_deleted_and_inserted_by_another_object_is_an_update(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """Another object inserted with a deleted row's primary key: one update of that row."""
        old = Tag(namespace="a", name="x", label="old")
        session.add(old)
        session.commit()
        load(session, old)
        committed.clear()
        session.delete(old)
        session.flush()
        new = Tag(namespace="a", name="x", label="new")
        session.add(new)
        session.commit()
        [change] = changes_of(committed)
        assert (change.operation, change.identity, dict(change.changes)) == (
            "update",
            ("a", "x"),
            {"label": ("old", "new")},
        )
        assert change.instance is new


class TestSavepoints:
    def test_rolled_back_savepoint_changes_disappear(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """Only writes outside the rolled-back savepoint are reported."""
        session.add(Item(name="outer"))
        savepoint = session.begin_nested()
        session.add(Item(name="inner"))
        session.flush()
        savepoint.rollback()
        session.commit()
        assert [c.changes["name"][1] for c in changes_of(committed)] == ["outer"]

    def test_rolled_back_savepoint_keeps_outer_update(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """An update of an object inside a rolled-back savepoint leaves the outer update intact."""
        item = add_item(session, value=1)
        committed.clear()
        item.value = 2
        session.flush()
        with pytest.raises(ZeroDivisionError), session.begin_nested():
            item.value = 3
            item.name = "x"
            session.flush()
            _ = 1 / 0
        session.commit()
        assert summary(changes_of(committed)) == [
            ("update", "Item", (item.id,), {"value": (1, 2)})
        ]

    def test_released_savepoint_merges_into_parent(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """A released savepoint's changes fold into the outer transaction's."""
        item = add_item(session, value=1)
        committed.clear()
        item.value = 2
        session.flush()
        with session.begin_nested():
            item.value = 3
            session.add(Item(name="inner"))
        assert committed == []
        session.commit()
        assert [(c.operation, dict(c.changes).get("value")) for c in changes_of(committed)] == [
            ("update", (1, 3)),
            ("insert", (None, 0)),
        ]

    def test_released_inner_dropped_with_rolled_back_outer_savepoint(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """An inner savepoint released into a savepoint that rolls back is dropped too."""
        session.add(Item(name="top"))
        outer = session.begin_nested()
        with session.begin_nested():
            session.add(Item(name="inner"))
        outer.rollback()
        session.commit()
        assert [c.changes["name"][1] for c in changes_of(committed)] == ["top"]

    def test_several_depths(self, session: sa_orm.Session, committed: Calls) -> None:
        """Surviving levels are reported, rolled-back levels are not, at any depth."""
        savepoints = []
        for depth in range(5):
            savepoints.append(session.begin_nested())
            session.add(Item(name=f"d{depth}"))
            session.flush()
        for savepoint in reversed(savepoints[3:]):
            savepoint.rollback()
        for savepoint in reversed(savepoints[:3]):
            savepoint.commit()
        session.commit()
        assert [c.changes["name"][1] for c in changes_of(committed)] == ["d0", "d1", "d2"]

    def test_delete_in_rolled_back_savepoint_is_not_reported(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """A delete undone by a savepoint rollback leaves the outer update."""
        item = add_item(session, value=1)
        committed.clear()
        item.value = 2
        savepoint = session.begin_nested()
        session.delete(item)
        session.flush()
        savepoint.rollback()
        session.commit()
        assert summary(changes_of(committed)) == [
            ("update", "Item", (item.id,), {"value": (1, 2)})
        ]


class TestSignals:
    def test_sent_once_after_commit_not_at_release(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """models_committed waits for the outermost COMMIT; a release sends nothing."""
        with session.begin_nested():
            session.add(Item(name="a"))
        assert committed == []
        session.commit()
        assert len(committed) == 1
        assert committed[0][0] is session

    def test_nothing_sent_without_changes(self, session: sa_orm.Session, committed: Calls) -> None:
        """A commit that wrote nothing sends nothing."""
        session.execute(sa.select(Item)).all()
        session.commit()
        assert committed == []

    def test_committed_per_change_with_model_sender(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """committed is sent once per change; receivers pick a model, subclasses included."""
        animals = connect.record(signals.committed, Animal)
        dogs = connect.record(signals.committed, Dog)
        items = connect.record(signals.committed, Item)
        dog, cat = Dog(name="rex", tricks=2), Cat(name="tom")
        session.add_all([dog, cat, Item(name="a")])
        session.commit()
        assert [(sender, kw["change"].instance) for sender, kw in animals] == [
            (Dog, dog),
            (Cat, cat),
        ]
        assert [(sender, kw["change"].instance) for sender, kw in dogs] == [(Dog, dog)]
        assert [sender for sender, _ in items] == [Item]

    def test_joined_inheritance_one_record_per_object(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """A joined-table object gives one record with the columns of both tables."""
        dog = Dog(name="rex", tricks=1)
        session.add(dog)
        session.commit()
        load(session, dog)
        committed.clear()
        dog.name = "max"
        dog.tricks = 2
        session.commit()
        assert summary(changes_of(committed)) == [
            ("update", "Dog", (dog.id,), {"name": ("rex", "max"), "tricks": (1, 2)})
        ]

    def test_order_after_commit_models_committed_committed_callbacks(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """after_commit receivers, then models_committed, committed, then on_commit callbacks."""
        order: list[str] = []
        connect(signals.after_commit, lambda sender, **kw: order.append("after_commit"))
        connect(signals.models_committed, lambda sender, **kw: order.append("models_committed"))
        connect(signals.committed, lambda sender, **kw: order.append("committed"))
        session.add_all([Item(name="a"), Item(name="b")])
        sa_signals.on_commit(lambda: order.append("on_commit"), session)
        session.commit()
        assert order == ["after_commit", "models_committed", "committed", "committed", "on_commit"]

    def test_receivers_run_in_distinct_session(
        self, Session: Scoped, connect: Connector, engine: sa.Engine
    ) -> None:
        """Receivers may run SQL: in a distinct session, committed when they return."""
        original = Session()
        seen: list[sa_orm.Session] = []

        def on_models(sender: sa_orm.Session, changes: list[Change], **kw: object) -> None:
            if all(change.model is Item for change in changes):  # not for its own Audit rows
                seen.append(Session())
                Session.add(Audit(message=f"{len(changes)} changed"))

        def on_committed(sender: type, change: Change, **kw: object) -> None:
            Session.add(Audit(message=f"{change.operation} {change.identity}"))

        connect(signals.models_committed, on_models)
        connect(signals.committed, on_committed, Item)
        item = Item(name="a")
        original.add(item)
        original.commit()
        assert seen[0] is not original
        with engine.connect() as connection:
            messages = connection.scalars(sa.select(Audit.message).order_by(Audit.id)).all()
        assert messages == ["1 changed", f"insert ({item.id},)"]
        assert Session() is original

    def test_failing_receiver_does_not_stop_others(
        self, session: sa_orm.Session, connect: Connector, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A receiver that raises is reported; the other receivers still run."""
        failures = connect.record(signals.receiver_failed)
        ran: list[str] = []

        def boom(sender: object, **kw: object) -> None:
            raise RuntimeError("boom")

        connect(signals.models_committed, boom)
        connect(signals.models_committed, lambda sender, **kw: ran.append("models"))
        connect(signals.committed, boom)
        connect(signals.committed, lambda sender, **kw: ran.append("committed"))
        session.add(Item(name="a"))
        with caplog.at_level(logging.ERROR, logger="sa_signals"):
            session.commit()
        assert ran == ["models", "committed"]
        assert [kw["signal"] for _, kw in failures] == [
            signals.models_committed,
            signals.committed,
        ]
        assert "boom" in caplog.text

    @pytest.mark.parametrize(
        "mode", ["create_savepoint", "rollback_only", "conditional_savepoint"]
    )
    def test_not_sent_in_test_savepoint_pattern(
        self, engine: sa.Engine, connect: Connector, mode: str
    ) -> None:
        """A session joined into an outer transaction commits nothing: nothing is sent."""
        before = connect.record(signals.before_models_committed)
        after = connect.record(signals.models_committed)
        maker = sa_orm.sessionmaker(join_transaction_mode=mode)  # type: ignore[call-overload]
        sa_signals.install(maker)
        try:
            with engine.connect() as connection:
                outer = connection.begin()
                session = maker(bind=connection)
                session.add(Item(name="a"))
                session.commit()
                session.close()
                outer.rollback()
        finally:
            sa_signals.uninstall(maker)
        assert before == []
        assert after == []


def end_transaction(session: sa_orm.Session) -> None:
    """Commit without expiring: the objects stay loaded, as objects of a past transaction."""
    session.expire_on_commit = False
    session.commit()
    session.expire_on_commit = True


class TestWhatReallyChanged:
    def test_delete_that_matched_no_row_is_not_reported(
        self, flavour: Flavour, any_session: t.Any, engine: sa.Engine, committed: Calls
    ) -> None:
        """Deleting through a stale object a row already gone reports no delete."""
        item = Item(name="a")
        any_session.add(item)
        own = any_session.sync_session if flavour.is_async else any_session
        own.expire_on_commit = False  # the object stays loaded, as one of a past transaction
        flavour.aw(any_session.commit())
        with engine.begin() as connection:
            connection.execute(sa.delete(Item).where(Item.id == item.id))
        committed.clear()
        flavour.aw(any_session.delete(item))
        with pytest.warns(sa_exc.SAWarning, match="0 were matched"):
            flavour.aw(any_session.flush())
        flavour.aw(any_session.commit())
        assert committed == []

    def test_a_row_deleted_twice_is_reported_once(self, Session: Scoped, committed: Calls) -> None:
        """Two sessions delete the same row: only the DELETE that matched it is reported."""
        item = add_item(Session())
        end_transaction(Session())
        other = Session.session_factory()
        stale = other.get(Item, item.id)
        end_transaction(other)
        committed.clear()
        Session.delete(item)
        Session.commit()
        other.delete(stale)
        with pytest.warns(sa_exc.SAWarning, match="0 were matched"):
            other.commit()
        other.close()
        assert [(change.operation, change.identity) for change in changes_of(committed)] == [
            ("delete", (item.id,))
        ]

    def test_a_flush_after_one_that_matched_nothing_is_reported(
        self, session: sa_orm.Session, engine: sa.Engine, committed: Calls
    ) -> None:
        """Flushed one at a time, only the row that existed is reported."""
        first, second = add_item(session, "a"), add_item(session, "b")
        end_transaction(session)
        with engine.begin() as connection:
            connection.execute(sa.delete(Item).where(Item.id == second.id))
        committed.clear()
        session.delete(second)
        with pytest.warns(sa_exc.SAWarning, match="0 were matched"):
            session.flush()
        session.delete(first)
        session.flush()
        session.commit()
        assert [change.identity for change in changes_of(committed)] == [(first.id,)]


class TestCommitTimeWrites:
    def test_a_callbacks_write_sends_its_change_set_after_the_round(
        self, flavour: Flavour, AnySession: t.Any, committed: Calls
    ) -> None:
        """A callback updating a row in its distinct session: that commit's change set is sent
        once, after the round that caused it (the callback's own run)."""
        order: list[str] = []
        session = AnySession()
        session.add(Item(name="a", value=1))

        def callback() -> None:
            order.append("callback")
            AnySession.scalars(sa.select(Item)).one().value = 2

        def async_callback() -> t.Any:
            async def go() -> None:
                order.append("callback")
                (await AnySession.scalars(sa.select(Item))).one().value = 2

            return go()

        sa_signals.on_commit(async_callback if flavour.is_async else callback, session)
        flavour.aw(session.commit())
        assert order == ["callback"]
        assert len(committed) == 2
        [first] = committed[0][1]["changes"]
        [second] = committed[1][1]["changes"]
        assert first.operation == "insert"
        assert (second.operation, second.identity) == ("update", first.identity)
        assert committed[1][0] is not session  # sent by the callback's distinct session

    def test_a_committed_receiver_writing_sends_the_update(
        self, Session: Scoped, connect: Connector
    ) -> None:
        """Rails' after_update_commit for a save inside after_create_commit: a receiver of
        the insert updates the row, and the update is sent too, once."""
        seen: list[tuple[str, dict[str, t.Any]]] = []

        def on_committed(sender: type, *, change: Change, **kwargs: object) -> None:
            seen.append((change.operation, dict(change.changes)))
            if change.operation == "insert":
                Session.get(Item, change.identity).value = 10

        connect(signals.committed, on_committed, Item)
        session = Session()
        session.add(Item(name="a", value=1))
        session.commit()
        assert [operation for operation, _ in seen] == ["insert", "update"]
        assert seen[1][1] == {"value": (1, 10)}

    def test_endless_writes_are_bounded_and_reported(
        self,
        Session: Scoped,
        connect: Connector,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A receiver whose write causes its own send again stops after a bounded number of
        rounds; the dropped send is reported on receiver_failed and logged."""
        calls: list[int] = []
        failures = connect.record(signals.receiver_failed)

        def on_models(sender: t.Any, **kwargs: object) -> None:
            calls.append(1)
            Session.add(Audit(message=str(len(calls))))

        connect(signals.models_committed, on_models)
        session = Session()
        session.add(Item(name="a"))
        session.commit()  # returns: nothing raised
        assert len(calls) == 11  # the commit's own send, then ten rounds
        [(_, failure)] = failures
        assert isinstance(failure["exception"], sa_signals.ChangeLoopError)
        assert failure["receiver"] is on_models
        assert "10 rounds in a row" in caplog.text


class TestBeforeModelsCommitted:
    def test_sent_before_commit_with_changes(
        self, session: sa_orm.Session, connect: Connector, engine: sa.Engine
    ) -> None:
        """Sent inside the transaction, after flushing, with the net changes so far."""
        seen: list[tuple[list[str], bool]] = []

        def receiver(sender: sa_orm.Session, changes: list[Change], **kw: object) -> None:
            with engine.connect() as connection:
                visible = connection.scalar(sa.select(sa.func.count()).select_from(Item))
            seen.append(
                ([c.changes["name"][1] for c in changes], sender.in_transaction() and visible == 0)
            )

        connect(signals.before_models_committed, receiver)
        session.add(Item(name="a"))
        session.commit()
        assert seen == [(["a"], True)]

    def test_receiver_writes_are_committed_and_reported(
        self, session: sa_orm.Session, connect: Connector, committed: Calls, engine: sa.Engine
    ) -> None:
        """Writes made through the sender are part of the commit and of models_committed."""

        def receiver(sender: sa_orm.Session, changes: list[Change], **kw: object) -> None:
            sender.add(Audit(message=f"{len(changes)} pending"))

        connect(signals.before_models_committed, receiver)
        session.add(Item(name="a"))
        session.commit()
        assert [(c.model, c.operation) for c in changes_of(committed)] == [
            (Item, "insert"),
            (Audit, "insert"),
        ]
        with engine.connect() as connection:
            assert connection.scalars(sa.select(Audit.message)).all() == ["1 pending"]

    def test_failing_receiver_reported_and_commit_goes_on(
        self, session: sa_orm.Session, connect: Connector, committed: Calls
    ) -> None:
        """A raising receiver connected robustly is reported; the others run and the
        transaction commits."""
        failures = connect.record(signals.receiver_failed)
        seen: list[int] = []

        def boom(sender: object, **kw: object) -> None:
            raise RuntimeError("boom")

        def count(sender: object, changes: list[Change], **kw: object) -> None:
            seen.append(len(changes))

        connect(signals.before_models_committed, boom, robust=True)
        connect(signals.before_models_committed, count)
        session.add(Item(name="a"))
        session.commit()
        assert seen == [1]
        assert [kw["signal"] for _, kw in failures] == [signals.before_models_committed]
        assert len(changes_of(committed)) == 1

    def test_raising_receiver_vetoes_the_commit(
        self, engine: sa.Engine, connect: Connector, committed: Calls
    ) -> None:
        """By default a raising receiver stops the COMMIT, as an in-transaction signal does."""
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)

        def veto(sender: object, **kw: object) -> None:
            raise ValueError("veto")

        connect(signals.before_models_committed, veto)
        try:
            with maker() as session:
                session.add(Item(name="a"))
                with pytest.raises(ValueError, match="veto"):
                    session.commit()
                session.rollback()
        finally:
            sa_signals.uninstall(maker)
        with engine.connect() as connection:
            assert connection.scalar(sa.select(sa.func.count()).select_from(Item)) == 0
        assert committed == []

    def test_not_sent_at_savepoint_release(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A SAVEPOINT release is not the commit."""
        calls = connect.record(signals.before_models_committed)
        with session.begin_nested():
            session.add(Item(name="a"))
        assert calls == []
        session.commit()
        assert len(calls) == 1


class TestCompositeKeysAndRelationships:
    def test_composite_primary_key_identity(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """A composite primary key is reported as a tuple in column order."""
        tag = Tag(namespace="color", name="red", label="Red")
        session.add(tag)
        session.commit()
        load(session, tag)
        committed.clear()
        tag.label = "Crimson"
        session.commit()
        assert summary(changes_of(committed)) == [
            ("update", "Tag", ("color", "red"), {"label": ("Red", "Crimson")})
        ]

    def test_relationship_change_reports_foreign_key(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """Moving a book to another author updates only the book's foreign key."""
        first, second = Author(name="A"), Author(name="B")
        book = Book(title="T", author=first)
        session.add_all([first, second, book])
        session.commit()
        assert [c.model for c in changes_of(committed)] == [Author, Author, Book]
        assert changes_of(committed)[2].changes["author_id"] == (None, first.id)
        load(session, book)
        committed.clear()
        book.author = second
        session.commit()
        assert summary(changes_of(committed)) == [
            ("update", "Book", (book.id,), {"author_id": (first.id, second.id)})
        ]

    def test_collection_append_reports_child_only(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """Appending an existing book to an author's collection reports the book."""
        author = Author(name="A")
        book = Book(title="T")
        session.add_all([author, book])
        session.commit()
        load(session, author, book)
        committed.clear()
        author.books.append(book)
        session.commit()
        assert summary(changes_of(committed)) == [
            ("update", "Book", (book.id,), {"author_id": (None, author.id)})
        ]


class TestOptIn:
    def test_sessions_not_installed_are_ignored(
        self, engine: sa.Engine, session: sa_orm.Session, committed: Calls
    ) -> None:
        """A session whose factory was not installed reports nothing."""
        with sa_orm.Session(engine) as plain:
            plain.add(Item(name="plain"))
            plain.execute(sa.delete(Item).where(Item.name == "none"))
            plain.commit()
        assert committed == []

    def test_empty_transaction_sends_nothing_before_commit(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A transaction that never touched the database has nothing to report."""
        calls = connect.record(signals.before_models_committed)
        session.begin()
        session.commit()
        assert calls == []

    def test_nothing_recorded_without_receivers(self, session: sa_orm.Session) -> None:
        """With no receiver and no track_changes, flushes record nothing."""
        session.add(Item(name="a"))
        session.flush()
        if _state.CONNECTIONS_KNOWN:
            assert STATE_ATTR not in session.__dict__  # nothing is made at all
        else:  # SQLAlchemy < 2.1.7: only the transaction's connections are recorded
            assert session.__dict__[STATE_ATTR].changes == []
        session.commit()

    def test_track_changes_records_without_receivers(
        self, engine: sa.Engine, connect: Connector
    ) -> None:
        """install(track_changes=True) records from the start, for a receiver connected later."""
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker, track_changes=True)
        sa_signals.install(maker, track_changes=True)  # installing again changes nothing
        try:
            with maker() as session:
                session.add(Item(name="early"))
                session.flush()
                calls = connect.record(signals.models_committed)
                session.add(Item(name="late"))
                session.commit()
        finally:
            sa_signals.uninstall(maker)
        assert [c.changes["name"][1] for c in changes_of(calls)] == ["early", "late"]

    def test_track_changes_added_to_existing_install(self, engine: sa.Engine) -> None:
        """Installing again with track_changes=True turns recording on; uninstall turns it off."""
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)
        sa_signals.install(maker, track_changes=True)
        try:
            with maker() as session:
                session.add(Item(name="a"))
                session.flush()
                assert len(session.__dict__[STATE_ATTR].changes) == 1
                session.rollback()
        finally:
            sa_signals.uninstall(maker)
        assert not changes_module.wanted()


OPERATIONS = ["insert", "update", "rename", "delete", "flush", "savepoint", "release", "rollback"]


# A plain function: Hypothesis wants one executor, and the test is parametrised by backend.
@hypothesis.settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(data=st.data())
def test_change_set_is_the_database_difference(
    session: sa_orm.Session, engine: sa.Engine, committed: Calls, data: t.Any
) -> None:
    """Any mix of writes, flushes and savepoints reports exactly what the COMMIT changed."""

    def snapshot() -> dict[tuple[int], dict[str, t.Any]]:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(Item.id, Item.name, Item.value)).all()
        return {(row.id,): {"id": row.id, "name": row.name, "value": row.value} for row in rows}

    session.execute(sa.delete(Item))
    # The session serves every example: forget the last one's objects, whose ids come back.
    session.expunge_all()
    session.add_all([Item(name=f"seed{i}", value=i) for i in range(3)])
    session.commit()
    objects = list(session.scalars(sa.select(Item)))
    before = snapshot()
    committed.clear()
    savepoints: list[sa_orm.SessionTransaction] = []
    counter = 0
    for operation in data.draw(st.lists(st.sampled_from(OPERATIONS), max_size=25)):
        alive = [
            o
            for o in objects
            if (sa.inspect(o).persistent or sa.inspect(o).pending) and o not in session.deleted
        ]
        if operation == "insert":
            counter += 1
            item = Item(name=f"new{counter}", value=counter)
            session.add(item)
            objects.append(item)
        elif operation in ("update", "rename", "delete") and alive:
            item = data.draw(st.sampled_from(alive))
            if operation == "update":
                item.value = item.value + data.draw(st.sampled_from([-1, 0, 1]))
            elif operation == "rename":
                counter += 1
                item.name = data.draw(st.sampled_from([item.name, f"renamed{counter}"]))
            elif sa.inspect(item).pending:
                session.expunge(item)
            else:
                session.delete(item)
        elif operation == "flush":
            session.flush()
        elif operation == "savepoint":
            savepoints.append(session.begin_nested())
        elif operation in ("release", "rollback") and savepoints:
            savepoint = savepoints.pop()
            if operation == "release":
                savepoint.commit()
            else:
                savepoint.rollback()
    session.commit()
    after = snapshot()
    expected = {}
    for identity in before.keys() | after.keys():
        old, new = before.get(identity), after.get(identity)
        if old is None:
            expected[identity] = ("insert", {k: (None, v) for k, v in new.items()})
        elif new is None:
            expected[identity] = ("delete", {k: (v, None) for k, v in old.items()})
        elif old != new:
            diff = {k: (old[k], new[k]) for k in old if old[k] != new[k]}
            expected[identity] = ("update", diff)
    reported = {
        c.identity: (c.operation, dict(c.changes))
        for _, kwargs in committed
        for c in kwargs["changes"]
    }
    assert reported == expected
    assert len(committed) == (1 if expected else 0)


@pytest.fixture
def rolled_back(connect: Connector) -> Calls:
    """Every send of models_rolled_back."""
    return connect.record(signals.models_rolled_back)


def operations_of(calls: Calls) -> list[tuple[bool, list[str]]]:
    """Per send of models_rolled_back: its savepoint keyword, and its changes' operations."""
    return [(kw["savepoint"], [c.operation for c in kw["changes"]]) for _, kw in calls]


class TestRolledBack:
    def test_rollback_sends_what_the_transaction_had_flushed(
        self, flavour: Flavour, AnySession: t.Any, connect: Connector, rolled_back: Calls
    ) -> None:
        """A rolled-back transaction sends its flushed writes, net per row, on
        models_rolled_back and, per change and mapped class, on rolled_back (a coroutine
        receiver awaited for an AsyncSession)."""
        session = AnySession()
        kept, gone = Item(name="kept", value=1), Item(name="gone")
        session.add_all([kept, gone])
        flavour.aw(session.commit())
        each: list[tuple[type, str, bool]] = []

        def record(sender: type, *, change: Change, savepoint: bool, **kw: object) -> None:
            each.append((sender, change.operation, savepoint))

        async def arecord(sender: type, **kwargs: t.Any) -> None:
            await asyncio.sleep(0)
            record(sender, **kwargs)

        connect(signals.rolled_back, arecord if flavour.is_async else record)
        flavour.aw(session.refresh(kept))  # loaded, so that the old value is known
        kept.value = 2
        flavour.aw(session.delete(gone))
        session.add(Item(name="new"))
        flavour.aw(session.flush())
        kept.value = 3
        flavour.aw(session.flush())
        session.add(Item(name="never flushed"))
        flavour.aw(session.rollback())
        [(savepoint, operations)] = operations_of(rolled_back)
        assert savepoint is False
        assert sorted(operations) == ["delete", "insert", "update"]
        [update] = [c for c in rolled_back[0][1]["changes"] if c.operation == "update"]
        assert dict(update.changes) == {"value": (1, 3)}
        assert rolled_back[0][0] is session
        assert sorted(each) == sorted([(Item, op, False) for op in ("delete", "insert", "update")])

    def test_savepoint_rollback_sends_its_own_rows(
        self, flavour: Flavour, AnySession: t.Any, rolled_back: Calls, committed: Calls
    ) -> None:
        """A rolled-back savepoint sends the rows flushed inside it, at once, with
        savepoint=True; the outer transaction's rows commit and are not sent again."""
        session = AnySession()
        session.add(Item(name="outer"))
        flavour.aw(session.flush())
        with flavour.nested(session) as savepoint:
            session.add(Item(name="inner"))
            flavour.aw(session.flush())
            flavour.aw(savepoint.rollback())
        assert operations_of(rolled_back) == [(True, ["insert"])]
        assert rolled_back[0][1]["changes"][0].changes["name"] == (None, "inner")
        flavour.aw(session.commit())
        assert len(rolled_back) == 1
        assert [c.changes["name"][1] for c in changes_of(committed)] == ["outer"]

    def test_released_savepoint_rows_go_with_the_outer_rollback(
        self, session: sa_orm.Session, rolled_back: Calls
    ) -> None:
        """Rows of a released savepoint are the outer transaction's: its rollback sends them."""
        session.add(Item(name="outer"))
        with session.begin_nested():
            session.add(Item(name="inner"))
        assert rolled_back == []
        session.rollback()
        [(_, kwargs)] = rolled_back
        assert [c.changes["name"][1] for c in kwargs["changes"]] == ["outer", "inner"]

    def test_nothing_flushed_nothing_sent(
        self, session: sa_orm.Session, connect: Connector, rolled_back: Calls
    ) -> None:
        """A rollback of writes never flushed, or of none, sends nothing."""
        each = connect.record(signals.rolled_back)
        session.add(Item(name="a"))
        session.rollback()
        session.begin()
        session.rollback()
        assert (rolled_back, each) == ([], [])

    def test_failed_commit_sends_what_it_had_flushed(
        self, session: sa_orm.Session, connect: Connector, rolled_back: Calls
    ) -> None:
        """A commit that fails (vetoed by a before_commit receiver) rolls back what the
        transaction had flushed, and sends it."""
        connect(signals.before_commit, lambda sender, **kw: 1 / 0)
        session.add(Item(name="a"))
        session.flush()
        with pytest.raises(ZeroDivisionError):
            session.commit()
        assert rolled_back == []
        session.rollback()
        assert operations_of(rolled_back) == [(False, ["insert"])]

    def test_failed_flush_sends_the_rows_it_was_writing(
        self, session: sa_orm.Session, rolled_back: Calls
    ) -> None:
        """A flush that fails on an UPDATE: the rollback sends the rows written before, and the
        row of the failing UPDATE, whose object was touched."""
        first, second = add_item(session, "a"), add_item(session, "b")
        first.value = 5
        session.flush()
        second.name = "a"  # the unique name of the first row
        with pytest.raises(sa_exc.IntegrityError):
            session.flush()
        session.rollback()
        [(_, kwargs)] = rolled_back
        assert sorted((c.identity, c.operation) for c in kwargs["changes"]) == [
            ((first.id,), "update"),
            ((second.id,), "update"),
        ]

    def test_failing_receiver_isolated_unless_strict(
        self, session: sa_orm.Session, connect: Connector, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A raising receiver is reported and the rollback completes; connected with
        robust=False it is raised out of rollback(), the session rolled back all the same."""
        reported = connect.record(signals.receiver_failed)

        def boom(sender: object, **kwargs: object) -> None:
            raise LookupError("boom")

        connect(signals.rolled_back, boom)
        session.add(Item(name="a"))
        session.flush()
        with caplog.at_level(logging.ERROR, logger="sa_signals"):
            session.rollback()
        assert [kw["receiver"] for _, kw in reported] == [boom]
        connect.disconnect_all()
        connect(signals.models_rolled_back, boom, robust=False)
        with session.begin_nested() as savepoint:
            session.add(Item(name="b"))
            session.flush()
            with pytest.raises(LookupError, match="boom"):
                savepoint.rollback()
        assert session.in_transaction()
        assert not session.in_nested_transaction()
        session.rollback()

    def test_not_sent_for_a_failed_callbacks_session(
        self, Session: Scoped, connect: Connector, rolled_back: Calls
    ) -> None:
        """The distinct session of a callback that raised is rolled back without a send, as
        it sends no after_rollback."""

        def callback() -> None:
            Session.add(Audit(message="written, then failed"))
            Session.flush()
            raise LookupError("callback failed")

        session = Session()
        session.add(Item(name="a"))
        sa_signals.on_commit(callback, session)
        session.commit()
        assert rolled_back == []

    def test_recorded_only_while_wanted(self, session: sa_orm.Session, connect: Connector) -> None:
        """A rolled_back receiver makes the layer record writes, and only while connected."""
        assert not changes_module.wanted()
        calls = connect.record(signals.rolled_back)
        assert changes_module.wanted()
        connect.disconnect_all()
        assert not changes_module.wanted()
        session.add(Item(name="a"))
        session.flush()
        session.rollback()
        assert calls == []


class TestOnFilters:
    def test_committed_receivers_get_their_operations(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """on= limits a receiver to some operations; the others get everything."""
        received: dict[str, list[str]] = {"saves": [], "deletes": [], "all": []}
        for key, on in [("saves", ("insert", "update")), ("deletes", "delete"), ("all", None)]:
            connect(
                signals.committed,
                lambda sender, *, change, _key=key, **kw: received[_key].append(change.operation),
                on=on,
            )
        item = add_item(session)
        item.value = 5
        session.commit()
        session.delete(item)
        session.commit()
        assert received == {
            "saves": ["insert", "update"],
            "deletes": ["delete"],
            "all": ["insert", "update", "delete"],
        }

    @pytest.mark.flavours("async")
    def test_coroutine_receivers_get_their_operations(
        self, flavour: Flavour, any_session: t.Any, connect: Connector
    ) -> None:
        """For an AsyncSession, coroutine receivers of committed and rolled_back are awaited
        for their on= operations only."""
        received: list[tuple[str, str]] = []

        def receiver(kind: str) -> t.Any:
            async def receive(sender: type, *, change: Change, **kwargs: object) -> None:
                await asyncio.sleep(0)
                received.append((kind, change.operation))

            return receive

        connect(signals.committed, receiver("committed"), on="insert")
        connect(signals.rolled_back, receiver("rolled back"), Item, on=("update", "delete"))
        item = Item(name="a")
        any_session.add(item)
        flavour.aw(any_session.commit())
        item.value = 5
        any_session.add(Item(name="b"))
        flavour.aw(any_session.flush())
        flavour.aw(any_session.rollback())
        assert received == [("committed", "insert"), ("rolled back", "update")]

    @pytest.mark.parametrize(
        "name", ["before_models_committed", "models_committed", "models_rolled_back"]
    )
    def test_list_receivers_get_their_changes_or_no_call(
        self, session: sa_orm.Session, connect: Connector, name: str
    ) -> None:
        """A list signal gives each receiver the changes of its operations, and does not call
        it when there are none."""
        signal = getattr(signals, name)
        inserts = connect.record(signal, on="insert")
        deletes = connect.record(signal, on="delete")
        other = add_item(session, "other")
        session.add(Item(name="a"))
        other.value = 5
        session.flush()
        if name == "models_rolled_back":
            session.rollback()
        else:
            session.commit()
        assert [c.changes["name"][1] for c in inserts[-1][1]["changes"]] == ["a"]
        assert deletes == []

    def test_rolled_back_receivers_get_their_operations(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """Rails' after_rollback(on: :update): only the rolled-back updates."""
        updates = connect.record(signals.rolled_back, Item, on="update")
        item = add_item(session)
        item.value = 7
        session.add(Item(name="b"))
        session.flush()
        session.rollback()
        assert [kwargs["change"].identity for _, kwargs in updates] == [(item.id,)]


# Rails' activerecord/test/cases/transaction_callbacks_test.rb, test by test where it applies:
# after_commit is `committed`, after_rollback is `rolled_back`, `on: :create` is on="insert".

RAILS = {"insert": "create", "update": "update", "delete": "destroy"}


@pytest.fixture
def history(connect: Connector) -> list[str]:
    """What Rails' add_transaction_execution_blocks records: commit_on_* and rollback_on_*."""
    seen: list[str] = []
    for operation, action in RAILS.items():
        for signal, event in ((signals.committed, "commit"), (signals.rolled_back, "rollback")):
            connect(
                signal,
                lambda sender, *, _name=f"{event}_on_{action}", **kw: seen.append(_name),
                Item,
                on=operation,
            )
    return seen


def write(session: sa_orm.Session, history: list[str], operation: str) -> None:
    """Make one write of ``operation`` in a transaction of its own (the history of what
    committed before it cleared)."""
    if operation == "insert":
        session.add(Item(name="new"))
        return
    item = committed_item(session, history)
    if operation == "update":
        item.value = 5
    else:
        session.delete(item)


def committed_item(
    session: t.Any, history: list[str], name: str = "a", flavour: Flavour | None = None
) -> Item:
    """An item committed, and loaded again, before the test's transaction (in ``flavour``);
    the history of that commit cleared."""
    aw = flavour.aw if flavour is not None else lambda value: value
    item = Item(name=name, value=1)
    session.add(item)
    aw(session.commit())
    aw(session.refresh(item))
    history.clear()
    return item


def veto_updates(sender: type, *, created: bool, **kwargs: object) -> None:
    """A pre_save receiver that refuses updates, as a failed validation does."""
    if not created:
        raise ValueError("invalid record")


class TestRailsTransactionCallbacks:
    def test_call_after_commit_after_transaction_commits(
        self, flavour: Flavour, any_session: t.Any, history: list[str]
    ) -> None:
        """A committed update is sent on committed, not on rolled_back."""
        item = committed_item(any_session, history, flavour=flavour)
        item.value = 2
        flavour.aw(any_session.commit())
        assert history == ["commit_on_update"]

    def test_dont_call_any_callbacks_after_transaction_commits_for_invalid_record(
        self, session: sa_orm.Session, history: list[str], connect: Connector
    ) -> None:
        """A save a pre_save receiver refused wrote nothing: nothing is sent either way."""
        item = committed_item(session, history)
        connect(signals.pre_save, veto_updates)
        item.value = 2
        with pytest.raises(ValueError, match="invalid record"):
            session.commit()
        session.rollback()
        assert history == []

    def test_dont_call_after_commit_on_update_based_on_previous_transaction(
        self, session: sa_orm.Session, history: list[str], connect: Connector
    ) -> None:
        """A transaction whose update was refused sends nothing of an earlier transaction."""
        item = add_item(session)
        item.value = 2
        session.commit()
        history.clear()
        connect(signals.pre_save, veto_updates)
        session.refresh(item)
        item.value = 3
        with pytest.raises(ValueError, match="invalid record"):
            session.flush()
        session.rollback()
        assert history == []

    @pytest.mark.parametrize("end", ["commit", "rollback"])
    @pytest.mark.parametrize("operation", ["insert", "update", "delete"])
    def test_only_call_after_commit_or_rollback_on_its_action(
        self, session: sa_orm.Session, history: list[str], operation: str, end: str
    ) -> None:
        """A commit, or a rollback, sends the committed, or rolled_back, receivers connected on
        its operation only."""
        write(session, history, operation)
        session.flush()
        getattr(session, end)()
        assert history == [f"{end}_on_{RAILS[operation]}"]

    def test_no_after_commit_on_destroy_after_transaction_commits_for_destroyed_new_record(
        self, session: sa_orm.Session, history: list[str]
    ) -> None:
        """A row inserted and deleted in one transaction sends nothing."""
        item = Item(name="new")
        session.add(item)
        session.flush()
        session.delete(item)
        session.commit()
        assert history == []

    def test_save_in_after_create_commit_wont_invoke_extra_after_create_commit(
        self, Session: Scoped, history: list[str], connect: Connector
    ) -> None:
        """A create receiver that saves the row again sends an update, not another create."""

        def save_again(sender: type, *, change: Change, **kwargs: object) -> None:
            Session.get(Item, change.identity).value = 10

        connect(signals.committed, save_again, Item, on="insert")
        session = Session()
        session.add(Item(name="new"))
        session.commit()
        assert history == ["commit_on_create", "commit_on_update"]

    def test_only_call_after_commit_on_top_level_transactions(
        self, flavour: Flavour, any_session: t.Any, history: list[str]
    ) -> None:
        """A released savepoint sends nothing; the outermost commit does."""
        item = committed_item(any_session, history, flavour=flavour)
        with flavour.nested(any_session):
            item.value = 2
        assert history == []
        flavour.aw(any_session.commit())
        assert history == ["commit_on_update"]

    def test_call_after_rollback_when_commit_fails(
        self, session: sa_orm.Session, history: list[str], connect: Connector
    ) -> None:
        """A commit that fails after its flush sends the flushed update as rolled back."""
        item = committed_item(session, history)
        connect(signals.before_models_committed, lambda sender, **kw: 1 / 0)
        item.value = 5
        with pytest.raises(ZeroDivisionError):
            session.commit()
        session.rollback()
        assert history == ["rollback_on_update"]

    def test_only_call_after_rollback_on_records_rolled_back_to_a_savepoint(
        self, flavour: Flavour, any_session: t.Any, connect: Connector
    ) -> None:
        """The row saved in the rolled-back savepoint is rolled back; the other one commits."""
        first, second = Item(name="first"), Item(name="second")
        any_session.add_all([first, second])
        flavour.aw(any_session.commit())
        commits = connect.record(signals.committed, Item)
        rollbacks = connect.record(signals.rolled_back, Item)
        first.value = 1
        flavour.aw(any_session.flush())
        with flavour.nested(any_session) as savepoint:
            second.value = 1
            flavour.aw(any_session.flush())
            flavour.aw(savepoint.rollback())
        flavour.aw(any_session.commit())
        assert [kw["change"].identity for _, kw in commits] == [(first.id,)]
        assert [(kw["change"].identity, kw["savepoint"]) for _, kw in rollbacks] == [
            ((second.id,), True)
        ]

    def test_only_call_after_rollback_on_records_rolled_back_to_a_savepoint_when_release_savepoint_fails(  # noqa: E501
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """Saved in the transaction and in two savepoints rolled back: rolled back twice,
        committed once."""
        item = add_item(session)
        commits = connect.record(signals.committed, Item)
        rollbacks = connect.record(signals.rolled_back, Item)
        item.value = 5
        session.flush()
        for value in (6, 7):
            with session.begin_nested() as savepoint:
                item.value = value
                session.flush()
                savepoint.rollback()
        session.commit()
        assert (len(commits), len(rollbacks)) == (1, 2)

    def test_after_commit_callback_should_not_swallow_errors(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A committed receiver connected with robust=False raises out of commit(); the data
        stays committed."""
        connect(signals.committed, lambda sender, **kw: 1 / 0, robust=False)
        item = Item(name="a")
        session.add(item)
        with pytest.raises(ZeroDivisionError):
            session.commit()
        assert item.id is not None
        session.refresh(item)

    def test_after_rollback_callback_should_not_swallow_errors_when_set_to_raise(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A rolled_back receiver connected with robust=False raises out of rollback()."""
        connect(signals.rolled_back, lambda sender, **kw: 1 / 0, robust=False)
        session.add(Item(name="a"))
        session.flush()
        with pytest.raises(ZeroDivisionError):
            session.rollback()
        assert not session.in_transaction()

    @pytest.mark.parametrize("signal", [signals.committed, signals.rolled_back])
    @pytest.mark.parametrize("on", ["save", ("create",)])
    def test_callbacks_should_validate_on_condition(self, signal: t.Any, on: t.Any) -> None:
        """An operation that is not one is refused at connect, naming the valid ones."""
        with pytest.raises(ValueError, match=r"on=\.\.\.\) takes operations among insert, update"):
            signal.connect(veto_updates, weak=False, on=on)

    def test_after_commit_chain_goes_on_after_an_error(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """Unlike Rails, where a raising after_commit stops the chain: committed receivers are
        isolated, so the others still run (robust=False raises once they ran)."""
        ran: list[str] = []
        connect(signals.committed, lambda sender, **kw: 1 / 0)
        connect(signals.committed, lambda sender, **kw: ran.append("second"))
        session.add(Item(name="a"))
        session.commit()
        assert ran == ["second"]

    def test_after_commit_on_multiple_actions(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """on= takes several operations (CallbacksOnMultipleActionsTest)."""
        seen: list[str] = []
        for name, on in [
            ("create_and_update", ("insert", "update")),
            ("create_and_destroy", ("insert", "delete")),
            ("update_and_destroy", ("update", "delete")),
        ]:
            connect(signals.committed, lambda sender, _name=name, **kw: seen.append(_name), on=on)
        item = add_item(session)
        assert seen == ["create_and_update", "create_and_destroy"]
        seen.clear()
        item.value = 2
        session.commit()
        assert seen == ["create_and_update", "update_and_destroy"]
        seen.clear()
        session.delete(item)
        session.commit()
        assert seen == ["create_and_destroy", "update_and_destroy"]

    def test_callbacks_run_in_order_defined(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """Receivers run in connection order, after a commit and after a rollback
        (CallbackOrderTest, run_after_transaction_callbacks_in_order_defined)."""
        seen: list[str] = []
        for name in ("1", "2", "3"):
            connect(signals.committed, lambda sender, _name=name, **kw: seen.append(_name))
            connect(signals.rolled_back, lambda sender, _n=name, **kw: seen.append(f"rb{_n}"))
        item = add_item(session)
        item.value = 2
        session.flush()
        session.rollback()
        assert seen == ["1", "2", "3", "rb1", "rb2", "rb3"]

    def test_trigger_once_on_multiple_deletions_in_a_transaction(
        self, session: sa_orm.Session, history: list[str]
    ) -> None:
        """An object deleted twice in one transaction is one delete."""
        item = committed_item(session, history)
        session.delete(item)
        session.delete(item)
        session.commit()
        assert history == ["commit_on_destroy"]

    def test_rollback_on_multiple_deletions(
        self, session: sa_orm.Session, history: list[str]
    ) -> None:
        """Updated then deleted, then rolled back: one destroy is rolled back."""
        item = committed_item(session, history)
        item.value = 2
        session.flush()
        session.delete(item)
        session.flush()
        session.rollback()
        assert history == ["rollback_on_destroy"]

    def test_created_callback_called_on_last_to_save_in_a_transaction(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """Created then updated in one transaction: one create, with the last values
        (CallbacksOnMultipleInstancesInATransactionTest)."""
        seen = connect.record(signals.committed, Item, on="insert")
        item = Item(name="A")
        session.add(item)
        session.flush()
        item.name = "B"
        session.commit()
        assert [kw["change"].changes["name"] for _, kw in seen] == [(None, "B")]

    def test_destroyed_callback_when_preceded_in_transaction_by_save(
        self, session: sa_orm.Session, history: list[str]
    ) -> None:
        """Updated then destroyed in one transaction: one destroy, no update."""
        item = committed_item(session, history, name="one")
        item.name = "two"
        session.flush()
        session.delete(item)
        session.commit()
        assert history == ["commit_on_destroy"]

    def test_after_commit_callbacks_with_optimistic_locking(
        self, session: sa_orm.Session, history: list[str]
    ) -> None:
        """Created, updated and destroyed in three transactions: three sends, in order."""
        item = add_item(session)
        item.name = "another name"
        session.commit()
        session.delete(item)
        session.commit()
        assert history == ["commit_on_create", "commit_on_update", "commit_on_destroy"]


# A plain function, as test_change_set_is_the_database_difference.
@hypothesis.settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(data=st.data())
def test_rolled_back_is_what_each_rollback_undid(
    session: sa_orm.Session, rolled_back: Calls, data: t.Any
) -> None:
    """Any mix of writes, flushes and savepoints: each rollback, of a savepoint or of the
    transaction, reports exactly the rows it undid, by the operation it undid."""

    def snapshot() -> dict[tuple[int], tuple[str, int]]:
        with session.no_autoflush:  # what the database holds, flushed writes only
            rows = session.execute(sa.select(Item.id, Item.name, Item.value)).all()
        return {(row.id,): (row.name, row.value) for row in rows}

    def undone(before: dict[t.Any, t.Any], after: dict[t.Any, t.Any]) -> dict[t.Any, str]:
        changed = {key for key in before.keys() & after.keys() if before[key] != after[key]}
        return (
            dict.fromkeys(after.keys() - before.keys(), "insert")
            | dict.fromkeys(before.keys() - after.keys(), "delete")
            | dict.fromkeys(changed, "update")
        )

    session.execute(sa.delete(Item))
    session.expunge_all()
    session.add_all([Item(name=f"seed{i}", value=i) for i in range(3)])
    session.commit()
    rolled_back.clear()  # the session and the fixture serve every example
    objects = list(session.scalars(sa.select(Item)))
    starts: list[tuple[sa_orm.SessionTransaction, dict[t.Any, t.Any]]] = []
    expected: list[dict[t.Any, str]] = []
    transaction_start = snapshot()
    counter = 0
    for operation in data.draw(st.lists(st.sampled_from(OPERATIONS), max_size=20)):
        alive = [o for o in objects if sa.inspect(o).persistent and o not in session.deleted]
        if operation == "insert":
            counter += 1
            objects.append(Item(name=f"new{counter}", value=counter))
            session.add(objects[-1])
        elif operation in ("update", "rename", "delete") and alive:
            item = data.draw(st.sampled_from(alive))
            if operation == "update":
                item.value = item.value + data.draw(st.sampled_from([-1, 0, 1]))
            elif operation == "rename":
                counter += 1
                item.name = f"renamed{counter}"
            else:
                session.delete(item)
        elif operation == "flush":
            session.flush()
        elif operation == "savepoint":
            session.flush()  # begin_nested() flushes first: the savepoint starts after that
            starts.append((session.begin_nested(), snapshot()))
        elif operation in ("release", "rollback") and starts:
            savepoint, start = starts.pop()
            if operation == "rollback":
                expected.append(undone(start, snapshot()))
                savepoint.rollback()
            else:
                savepoint.commit()
    # rollback() rolls back the savepoints still open first, innermost first, each on its own.
    current = snapshot()
    for _, start in reversed(starts):
        expected.append(undone(start, current))
        current = start
    expected.append(undone(transaction_start, current))
    session.rollback()
    reported = [{c.identity: c.operation for c in kw["changes"]} for _, kw in rolled_back]
    assert reported == [changes for changes in expected if changes]
