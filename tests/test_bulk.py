"""ORM bulk statements: bulk_insert / bulk_update / bulk_delete, and their place in change sets."""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite

import sa_signals
from sa_signals import Change
from sa_signals import NOT_LOADED
from sa_signals import signals
from sa_signals._core import bridge as _bridge
from tests.models import Animal
from tests.models import Audit
from tests.models import Cat
from tests.models import Dog
from tests.models import Item
from tests.models import Tag

if t.TYPE_CHECKING:
    from tests.conftest import Connector

Calls = list[tuple[t.Any, dict[str, t.Any]]]


def seed(session: sa_orm.Session, count: int = 4) -> list[int]:
    """Insert items n0..n{count-1} with value = index; return their ids."""
    items = [Item(name=f"n{i}", value=i) for i in range(count)]
    session.add_all(items)
    session.commit()
    return [item.id for item in items]


def update_returning(engine: sa.Engine) -> bool:
    return bool(engine.dialect.update_returning)  # MariaDB: DELETE/INSERT RETURNING only


@pytest.fixture
def committed(connect: Connector) -> Calls:
    return connect.record(signals.models_committed)


def changes(calls: Calls) -> list[Change]:
    assert len(calls) == 1, calls
    result: list[Change] = calls[0][1]["changes"]
    return result


class TestBulkUpdate:
    @pytest.mark.parametrize("operation", ["update", "delete"])
    def test_statement_matching_no_row_reports_no_change(
        self, session: sa_orm.Session, connect: Connector, committed: Calls, operation: str
    ) -> None:
        """A bulk UPDATE or DELETE that matched no row changed nothing: no change is sent
        (the bulk signal still says it ran, with rowcount 0)."""
        seed(session)
        committed.clear()
        signal = signals.bulk_update if operation == "update" else signals.bulk_delete
        calls = connect.record(signal, Item)
        if operation == "update":
            statement: t.Any = sa.update(Item).where(Item.name == "nobody").values(value=9)
        else:
            statement = sa.delete(Item).where(Item.name == "nobody")
        session.execute(statement, execution_options={"synchronize_session": False})
        session.commit()
        assert calls[0][1]["rowcount"] == 0
        assert committed == []

    @pytest.mark.parametrize("sync", ["auto", "fetch", "evaluate", False])
    def test_update_with_and_without_synchronize_session(
        self,
        session: sa_orm.Session,
        connect: Connector,
        committed: Calls,
        engine: sa.Engine,
        sync: t.Any,
    ) -> None:
        """The signal reports statement, rowcount and identities; the commit one change per row."""
        ids = seed(session)
        committed.clear()
        calls = connect.record(signals.bulk_update, Item)
        statement = sa.update(Item).where(Item.value >= 2).values(value=7)
        result = session.execute(statement, execution_options={"synchronize_session": sync})
        assert result.rowcount == 2  # type: ignore[attr-defined]
        [(sender, kwargs)] = calls
        assert sender is Item
        assert kwargs["statement"] is statement
        assert kwargs["rowcount"] == 2
        assert kwargs["session"] is session
        session.commit()
        if update_returning(engine):
            assert sorted(kwargs["identities"]) == [(ids[2],), (ids[3],)]
            assert sorted(
                (c.operation, c.identity, dict(c.changes)) for c in changes(committed)
            ) == [
                ("update", (ids[2],), {"value": (NOT_LOADED, 7)}),
                ("update", (ids[3],), {"value": (NOT_LOADED, 7)}),
            ]
        else:
            assert kwargs["identities"] is None
            [change] = changes(committed)
            assert (change.operation, change.identity, change.instance) == ("update", None, None)
        assert all(c.statement is statement and c.model is Item for c in changes(committed))

    def test_update_by_primary_key_rows(
        self, session: sa_orm.Session, connect: Connector, committed: Calls
    ) -> None:
        """update(Model) with a list of rows: identities and values come from the rows."""
        ids = seed(session, 3)
        committed.clear()
        calls = connect.record(signals.bulk_update)
        session.execute(
            sa.update(Item), [{"id": ids[0], "value": 10}, {"id": ids[2], "value": 12}]
        )
        session.commit()
        assert calls[0][1]["identities"] == [(ids[0],), (ids[2],)]
        assert calls[0][1]["rowcount"] == 2
        assert [(c.identity, dict(c.changes)) for c in changes(committed)] == [
            ((ids[0],), {"value": (NOT_LOADED, 10)}),
            ((ids[2],), {"value": (NOT_LOADED, 12)}),
        ]

    def test_legacy_query_update(
        self, session: sa_orm.Session, connect: Connector, engine: sa.Engine
    ) -> None:
        """Query.update() is a bulk update too."""
        ids = seed(session)
        calls = connect.record(signals.bulk_update)
        count = session.query(Item).filter(Item.value < 2).update({"value": 9})
        assert count == 2
        assert calls[0][1]["rowcount"] == 2
        if update_returning(engine):
            assert sorted(calls[0][1]["identities"]) == [(ids[0],), (ids[1],)]

    @pytest.mark.backends("sqlite", "postgresql")
    def test_caller_returning_is_kept(self, session: sa_orm.Session, connect: Connector) -> None:
        """The caller's own RETURNING rows reach the caller; the layer counts them."""
        ids = seed(session)
        calls = connect.record(signals.bulk_update)
        result = session.execute(
            sa.update(Item).where(Item.value >= 1).values(value=0).returning(Item.id, Item.name)
        )
        assert sorted(result.all()) == [(ids[1], "n1"), (ids[2], "n2"), (ids[3], "n3")]
        assert calls[0][1]["rowcount"] == 3
        assert sorted(calls[0][1]["identities"]) == [(ids[1],), (ids[2],), (ids[3],)]

    def test_expression_values_are_not_loaded(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """A SET computed by the database reports NOT_LOADED as its new value."""
        seed(session, 1)
        committed.clear()
        session.execute(sa.update(Item).values(value=Item.value + 1))
        session.commit()
        assert {dict(c.changes)["value"] for c in changes(committed)} == {(NOT_LOADED, NOT_LOADED)}


class TestBulkDelete:
    @pytest.mark.parametrize("sync", ["auto", "fetch", False])
    def test_delete_reports_identities(
        self, session: sa_orm.Session, connect: Connector, committed: Calls, sync: t.Any
    ) -> None:
        """Every backend here can RETURN from a DELETE: the rows are known."""
        ids = seed(session)
        committed.clear()
        calls = connect.record(signals.bulk_delete, Item)
        result = session.execute(
            sa.delete(Item).where(Item.value < 2), execution_options={"synchronize_session": sync}
        )
        assert result.rowcount == 2  # type: ignore[attr-defined]
        session.commit()
        assert sorted(calls[0][1]["identities"]) == [(ids[0],), (ids[1],)]
        assert sorted((c.operation, c.identity) for c in changes(committed)) == [
            ("delete", (ids[0],)),
            ("delete", (ids[1],)),
        ]

    def test_caller_returning_is_kept(self, session: sa_orm.Session, connect: Connector) -> None:
        """The caller's own RETURNING rows reach the caller; the layer counts them."""
        seed(session)
        calls = connect.record(signals.bulk_delete)
        result = session.execute(sa.delete(Item).where(Item.value >= 2).returning(Item.name))
        assert sorted(result.scalars().all()) == ["n2", "n3"]
        assert calls[0][1]["rowcount"] == 2
        assert calls[0][1]["identities"] is None  # the rows do not say which ones

    def test_legacy_query_delete(self, session: sa_orm.Session, connect: Connector) -> None:
        """Query.delete() is a bulk delete too."""
        ids = seed(session)
        calls = connect.record(signals.bulk_delete)
        assert session.query(Item).filter(Item.id == ids[3]).delete() == 1
        assert calls[0][1]["identities"] == [(ids[3],)]

    @pytest.mark.backends("postgresql", "mariadb")  # SQLite has no multi-table DELETE
    def test_multi_table_delete(
        self, session: sa_orm.Session, connect: Connector, engine: sa.Engine
    ) -> None:
        """A DELETE naming another table runs as it would without the layer."""
        ids = seed(session, 2)
        session.add(Audit(id=ids[1], message="gone"))
        session.commit()
        calls = connect.record(signals.bulk_delete)
        result = session.execute(
            sa.delete(Item).where(Item.id == Audit.id),
            execution_options={"synchronize_session": False},
        )
        assert result.rowcount == 1  # type: ignore[attr-defined]
        assert calls[0][1]["rowcount"] == 1
        expected = [(ids[1],)] if engine.dialect.delete_returning_multifrom else None
        assert calls[0][1]["identities"] == expected


class TestBulkInsert:
    def test_insert_rows_returns_identities(
        self, session: sa_orm.Session, connect: Connector, committed: Calls, engine: sa.Engine
    ) -> None:
        """insert(Model) with rows: identities in row order; the caller's result is untouched."""
        calls = connect.record(signals.bulk_insert, Item)
        result = session.execute(
            sa.insert(Item), [{"name": "a", "value": 1}, {"name": "b", "value": 2}]
        )
        assert result.all() == []
        session.commit()
        with engine.connect() as connection:
            stored = connection.execute(sa.select(Item.id, Item.name).order_by(Item.name)).all()
        assert calls[0][1]["identities"] == [(row.id,) for row in stored]
        assert calls[0][1]["rowcount"] == 2
        assert [dict(c.changes) for c in changes(committed)] == [
            {"name": (None, "a"), "value": (None, 1), "id": (None, stored[0].id)},
            {"name": (None, "b"), "value": (None, 2), "id": (None, stored[1].id)},
        ]

    def test_caller_returning_entities(self, session: sa_orm.Session, connect: Connector) -> None:
        """RETURNING the entity gives the caller its objects and the layer their identities."""
        seed(session)
        calls = connect.record(signals.bulk_insert)
        result = session.execute(sa.insert(Item).returning(Item), [{"name": "x"}, {"name": "y"}])
        items = result.scalars().all()
        assert [item.name for item in items] == ["x", "y"]
        assert calls[0][1]["identities"] == [(item.id,) for item in items]

    @pytest.mark.backends("sqlite", "postgresql")
    def test_upsert_that_skips_rows(
        self, session: sa_orm.Session, connect: Connector, committed: Calls, engine: sa.Engine
    ) -> None:
        """ON CONFLICT DO NOTHING: only the rows really inserted are reported."""
        dialect_insert = (
            postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        )
        seed(session, 1)
        committed.clear()
        calls = connect.record(signals.bulk_insert)
        session.execute(
            dialect_insert(Item).on_conflict_do_nothing(), [{"name": "n0"}, {"name": "fresh"}]
        )
        session.commit()
        fresh = session.scalars(sa.select(Item.id).where(Item.name == "fresh")).one()
        assert calls[0][1]["identities"] == [(fresh,)]
        assert calls[0][1]["rowcount"] == 1
        assert [c.identity for c in changes(committed)] == [(fresh,)]

    def test_insert_rows_with_composite_keys(
        self, session: sa_orm.Session, connect: Connector, committed: Calls
    ) -> None:
        """Rows that carry their primary key give their identities directly."""
        calls = connect.record(signals.bulk_insert, Tag)
        session.execute(
            sa.insert(Tag), [{"namespace": "c", "name": "red"}, {"namespace": "c", "name": "blue"}]
        )
        session.commit()
        assert calls[0][1]["identities"] == [("c", "red"), ("c", "blue")]
        assert [c.identity for c in changes(committed)] == [("c", "red"), ("c", "blue")]

    def test_insert_one_row_as_parameters(
        self, session: sa_orm.Session, connect: Connector, committed: Calls
    ) -> None:
        """insert(Model) with one dict of parameters is a bulk insert of one row."""
        calls = connect.record(signals.bulk_insert)
        session.execute(sa.insert(Item), {"name": "solo", "value": 4})
        session.commit()
        [change] = changes(committed)
        assert calls[0][1]["identities"] == [change.identity]
        assert change.changes["name"] == (None, "solo")

    def test_single_row_insert_counted_by_layer(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A single-row insert reports one row even where the driver's rowcount is -1."""
        calls = connect.record(signals.bulk_insert)
        result = session.execute(sa.insert(Item).values(name="x"))
        [key] = result.inserted_primary_key_rows  # type: ignore[attr-defined]
        assert calls[0][1]["rowcount"] == 1
        assert calls[0][1]["identities"] == [tuple(key)]


class TestBulkInTransactions:
    def test_rolled_back_savepoint_drops_bulk_changes(
        self, session: sa_orm.Session, committed: Calls
    ) -> None:
        """A bulk statement inside a rolled-back savepoint is not in the change set."""
        seed(session, 2)
        committed.clear()
        savepoint = session.begin_nested()
        session.execute(sa.delete(Item))
        savepoint.rollback()
        session.execute(sa.update(Item).where(Item.name == "n0").values(value=5))
        session.commit()
        assert {c.operation for c in changes(committed)} == {"update"}

    def test_bulk_signal_sent_even_if_rolled_back(
        self, session: sa_orm.Session, connect: Connector, committed: Calls
    ) -> None:
        """bulk_* signals report execution; a rollback only keeps them out of the change set."""
        seed(session, 2)
        committed.clear()
        calls = connect.record(signals.bulk_delete)
        session.execute(sa.delete(Item))
        session.rollback()
        assert len(calls) == 1
        assert committed == []

    def test_core_and_text_statements_are_out_of_scope(
        self, session: sa_orm.Session, connect: Connector, committed: Calls
    ) -> None:
        """Core statements on a Table, and text(), send nothing."""
        calls = connect.record(signals.bulk_update)
        session.execute(sa.insert(Item.__table__).values(name="core", value=1))
        session.execute(sa.update(Item.__table__).values(value=2))
        session.execute(sa.text("UPDATE items SET value = 3"))
        session.commit()
        assert calls == []
        assert committed == []

    def test_selects_pass_through(self, session: sa_orm.Session, connect: Connector) -> None:
        """An ORM SELECT is left alone while bulk receivers are connected."""
        seed(session, 2)
        connect.record(signals.bulk_update)
        assert session.scalars(sa.select(Item.name).order_by(Item.name)).all() == ["n0", "n1"]


class TestBulkInheritance:
    def test_sender_is_the_statement_class_and_matches_bases(
        self, session: sa_orm.Session, connect: Connector, engine: sa.Engine
    ) -> None:
        """update(Cat) is sent for Cat, reaching receivers of Animal but not of Dog."""
        cat = Cat(name="tom")
        session.add_all([cat, Dog(name="rex")])
        session.commit()
        animals = connect.record(signals.bulk_update, Animal)
        dogs = connect.record(signals.bulk_update, Dog)
        session.execute(sa.update(Cat).values(name="felix"))
        session.commit()
        assert [sender for sender, _ in animals] == [Cat]
        assert dogs == []
        assert animals[0][1]["rowcount"] == 1
        if update_returning(engine):
            assert animals[0][1]["identities"] == [(cat.id,)]

    def test_joined_table_bulk_update(
        self, session: sa_orm.Session, connect: Connector, committed: Calls
    ) -> None:
        """A bulk UPDATE of a joined-table subclass column is reported for that class."""
        session.add(Dog(name="rex", tricks=1))
        session.commit()
        committed.clear()
        calls = connect.record(signals.bulk_update, Dog)
        session.execute(
            sa.update(Dog).values(tricks=5), execution_options={"synchronize_session": False}
        )
        session.commit()
        assert calls[0][1]["rowcount"] == 1
        assert {c.model for c in changes(committed)} == {Dog}


class TestExecuteListener:
    def test_attached_once_wanted_until_uninstall(self, engine: sa.Engine) -> None:
        """do_orm_execute is listened to once a bulk or change signal has a receiver.

        It then stays until uninstall: removing a listener while another thread runs it would
        break that thread's statement. With no receiver left it does nothing.
        """
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)
        calls: list[object] = []

        def listening() -> bool:
            return sa.event.contains(maker.class_, "do_orm_execute", _bridge._do_orm_execute)

        def receiver(sender: object, **kwargs: object) -> None:
            calls.append(sender)

        try:
            assert not listening()
            signals.bulk_delete.connect(receiver)
            assert listening()
            signals.bulk_delete.disconnect(receiver)
            assert listening()
            with maker() as session:
                session.execute(sa.delete(Item))
                session.commit()
            assert calls == []
        finally:
            sa_signals.uninstall(maker)
        assert not listening()

    def test_attached_at_install_when_receivers_exist(
        self, engine: sa.Engine, connect: Connector
    ) -> None:
        """Receivers connected before install(): the new installation sees bulk statements."""
        calls = connect.record(signals.bulk_delete)
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)
        try:
            with maker() as session:
                session.execute(sa.delete(Item))
                session.commit()
        finally:
            sa_signals.uninstall(maker)
        assert [sender for sender, _ in calls] == [Item]
        assert not sa.event.contains(maker.class_, "do_orm_execute", _bridge._do_orm_execute)
