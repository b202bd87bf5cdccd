"""publish(): one message per committed transaction of the target, after the COMMIT only."""

from __future__ import annotations

import logging
import typing as t

import pytest
import redis
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import fanout
from sa_signals import signals
from tests.conftest import Flavour
from tests.fanout.conftest import Heard
from tests.fanout.conftest import kill_connections
from tests.fanout.conftest import listening
from tests.fanout.conftest import make_transport
from tests.fanout.conftest import new_name
from tests.fanout.conftest import publishing
from tests.fanout.conftest import RedisServer
from tests.models import Item

pytestmark = pytest.mark.transports("redis-stream")
"""What is published does not depend on the transport (tests/fanout/test_transports.py)."""


def sentinel(Session: t.Any, flavour: Flavour | None = None) -> None:
    """Commit a row named "sentinel": once it is heard, everything committed before it was."""
    session = Session()
    if flavour is None:
        with session.begin():
            session.add(Item(id=999, name="sentinel"))
    else:
        with flavour.begin(session):
            session.add(Item(id=999, name="sentinel"))
        flavour.aw(session.close())


def wait_for_sentinel(heard: Heard) -> None:
    assert heard.wait_for(lambda: (999,) in heard.identities()), "the sentinel never arrived"


class TestWhatIsPublished:
    def test_one_message_per_committed_transaction(
        self,
        AnySession: t.Any,
        any_session: t.Any,
        flavour: Flavour,
        transport: t.Any,
        heard: Heard,
    ) -> None:
        """Each committed transaction is one message listing its rows, in commit order."""
        with publishing(AnySession, transport), listening(transport):
            session = any_session
            with flavour.begin(session):
                session.add_all([Item(id=1, name="a"), Item(id=2, name="b")])
            with flavour.begin(session):
                item = flavour.aw(session.get(Item, 1))
                item.value = 5
            with flavour.begin(session):
                flavour.aw(session.delete(item))
            flavour.aw(session.close())
            sentinel(AnySession, flavour)
            wait_for_sentinel(heard)
        assert [
            [(c.operation, c.identity, sorted(c.fields)) for c in message.models["items"]]
            for message in heard.messages
        ] == [
            [("insert", (1,), ["id", "name", "value"]), ("insert", (2,), ["id", "name", "value"])],
            [("update", (1,), ["value"])],
            [("delete", (1,), ["id", "name", "value"])],
            [("insert", (999,), ["id", "name", "value"])],
        ]
        sequences = [message.sequence for message in heard.messages]
        assert sequences == list(range(sequences[0], sequences[0] + 4))
        assert heard.gaps == ["subscribed"]

    def test_rolled_back_work_is_never_published(
        self, Session: sa_orm.scoped_session[sa_orm.Session], transport: t.Any, heard: Heard
    ) -> None:
        """A rollback, a failed flush and a rolled-back savepoint publish nothing of theirs."""
        with publishing(Session, transport), listening(transport):
            session = Session()
            with session.begin():
                session.add(Item(id=1, name="a"))
            session.begin()
            session.add(Item(id=2, name="rolled back"))
            session.flush()
            session.rollback()
            with session.begin():
                session.add(Item(id=3, name="a"))
                with pytest.raises(sa.exc.IntegrityError):
                    session.flush()
            with session.begin():
                savepoint = session.begin_nested()
                session.add(Item(id=4, name="savepoint rolled back"))
                session.flush()
                savepoint.rollback()
                with session.begin_nested():
                    session.add(Item(id=5, name="savepoint released"))
            Session.remove()
            sentinel(Session)
            wait_for_sentinel(heard)
        assert heard.identities() == [(1,), (5,), (999,)]

    @pytest.mark.backends("sqlite")
    def test_only_sessions_of_the_target(
        self,
        Session: sa_orm.scoped_session[sa_orm.Session],
        engine: sa.Engine,
        transport: t.Any,
        heard: Heard,
    ) -> None:
        """Commits of sessions another installation made are not published."""
        other = sa_orm.sessionmaker(engine)
        sa_signals.install(other)
        try:
            with publishing(Session, transport), listening(transport):
                with other.begin() as session:
                    session.add(Item(id=1, name="other"))
                sentinel(Session)
                wait_for_sentinel(heard)
        finally:
            sa_signals.uninstall(other)
        assert heard.identities() == [(999,)]

    def test_bulk_statements_are_published(
        self,
        Session: sa_orm.scoped_session[sa_orm.Session],
        engine: sa.Engine,
        transport: t.Any,
        heard: Heard,
    ) -> None:
        """An ORM bulk UPDATE is published with its rows, or as rows unknown without RETURNING."""
        with Session.begin():
            Session.add_all([Item(id=1, name="a"), Item(id=2, name="b")])
        with publishing(Session, transport), listening(transport):
            with Session.begin():
                Session.execute(sa.update(Item).where(Item.id < 3).values(value=7))
            sentinel(Session)
            wait_for_sentinel(heard)
        expected = [(1,), (2,)] if engine.dialect.update_returning else [None]
        assert heard.identities()[:-1] == expected
        assert {change.operation for change in heard.changes[:-1]} == {"update"}
        assert all(change.fields == {"value"} for change in heard.changes[:-1])

    @pytest.mark.backends("sqlite")
    def test_commits_of_on_commit_callbacks_are_published(
        self, Session: sa_orm.scoped_session[sa_orm.Session], transport: t.Any, heard: Heard
    ) -> None:
        """A row written by an on_commit callback in its distinct session is published."""

        def audit() -> None:
            Session().add(Item(id=2, name="written by a callback"))

        with publishing(Session, transport), listening(transport):
            with Session.begin():
                Session.add(Item(id=1, name="a"))
                sa_signals.on_commit(audit, Session)
            sentinel(Session)
            wait_for_sentinel(heard)
        assert heard.identities() == [(1,), (2,), (999,)]

    @pytest.mark.backends("sqlite")
    def test_a_stopped_publisher_is_disconnected(
        self, Session: sa_orm.scoped_session[sa_orm.Session], transport: t.Any
    ) -> None:
        """After stop() nothing listens to models_committed: commits cost nothing more."""
        publisher = fanout.publish(Session, transport)
        assert signals.models_committed.receivers
        publisher.stop()
        publisher.stop()
        assert not signals.models_committed.receivers
        with Session.begin():
            Session.add(Item(id=1, name="a"))
        assert publisher.counters.published == 0
        assert "stopped" in repr(publisher)

    @pytest.mark.backends("sqlite")
    def test_counters(
        self, Session: sa_orm.scoped_session[sa_orm.Session], transport: t.Any, heard: Heard
    ) -> None:
        """The handle counts change sets sent, degraded, and its last message."""
        with listening(transport), fanout.publish(Session, transport, max_bytes=600) as publisher:
            with Session.begin():
                Session.add(Item(id=1, name="a"))
            with Session.begin():
                Session.add_all([Item(id=n, name=str(n)) for n in range(2, 40)])
            assert publisher.flush()
            assert publisher.counters[:4] == (2, 0, 0, 1)
            assert publisher.counters.pending == 0
            assert heard.wait_for(lambda: len(heard.changes) == 2)
        assert heard.changes[1].identity is None  # 38 rows did not fit in 600 bytes
        assert publisher.counters.heartbeats == 1  # the last message

    @pytest.mark.backends("sqlite")
    @pytest.mark.parametrize(
        ("options", "match"),
        [
            ({"max_bytes": 100}, "max_bytes of at least 512, got 100"),
            ({"max_pending": 0}, "max_pending of at least 1, got 0"),
            ({"heartbeat": -1}, r"heartbeat of 0 \(none\) or more seconds, got -1"),
        ],
    )
    def test_options_are_checked(
        self,
        Session: sa_orm.scoped_session[sa_orm.Session],
        transport: t.Any,
        options: t.Any,
        match: str,
    ) -> None:
        """Limits too small to work are refused with the fix."""
        with pytest.raises(ValueError, match=match):
            fanout.publish(Session, transport, **options)

    @pytest.mark.backends("sqlite")
    def test_target_is_checked(self, transport: t.Any) -> None:
        """Something install() would not take is refused."""
        with pytest.raises(
            TypeError, match=r"publish\(\) takes what sa_signals.install\(\) takes"
        ):
            fanout.publish(t.cast("t.Any", object()), transport)

    @pytest.mark.backends("sqlite")
    def test_a_session_class_target(
        self, engine: sa.Engine, transport: t.Any, heard: Heard
    ) -> None:
        """A Session subclass is a target like any other."""

        class MySession(sa_orm.Session):
            pass

        sa_signals.install(MySession)
        try:
            with publishing(MySession, transport), listening(transport):
                with MySession(engine) as session, session.begin():
                    session.add(Item(id=1, name="a"))
                assert heard.wait_for(lambda: heard.identities() == [(1,)])
        finally:
            sa_signals.uninstall(MySession)


@pytest.mark.backends("sqlite")
class TestTransportDown:
    @pytest.mark.services("redis")
    def test_commit_succeeds_and_failure_is_counted(
        self, Session: sa_orm.scoped_session[sa_orm.Session], caplog: pytest.LogCaptureFixture
    ) -> None:
        """With the server unreachable the commit returns; the failure is logged and counted."""
        down = make_transport("redis-pubsub", new_name(), url="redis://127.0.0.1:1/0", timeout=0.5)
        with publishing(Session, down) as publisher:
            with Session.begin():
                Session.add(Item(id=1, name="a"))
            assert publisher.flush()
            assert publisher.counters.failed >= 1
            assert publisher.counters.published == 0
        assert Session().get(Item, 1) is not None
        assert "could not send 1 messages through RedisPubSub" in caplog.text
        assert "listeners will see a gap" in caplog.text

    @pytest.mark.services("redis")
    def test_full_queue_drops_and_counts(
        self, Session: sa_orm.scoped_session[sa_orm.Session]
    ) -> None:
        """Change sets beyond max_pending are dropped on the committing thread and counted."""
        down = make_transport("redis-pubsub", new_name(), url="redis://127.0.0.1:1/0", timeout=0.5)
        with publishing(Session, down, max_pending=1) as publisher:
            for n in range(1, 500):
                with Session.begin():
                    Session.add(Item(id=n, name=str(n)))
                if publisher.counters.dropped:
                    break
            assert publisher.counters.dropped >= 1

    @pytest.mark.transports("postgresql", "redis-pubsub", "redis-stream")
    @pytest.mark.parametrize("write", [False, True], ids=["thread", "write"])
    def test_lost_messages_are_announced_by_the_next_one(
        self,
        Session: sa_orm.scoped_session[sa_orm.Session],
        transport_kind: str,
        write: bool,
        heard: Heard,
        caplog: pytest.LogCaptureFixture,
        request: pytest.FixtureRequest,
    ) -> None:
        """A send that failed, or a write never answered, becomes a gap at the listeners,
        announced by the next message (NOTIFY has no writer: write=True sends from the thread)."""
        if transport_kind == "postgresql":
            transport = make_transport(transport_kind, new_name())
        else:  # Redis stalls writes on a private server; the listener keeps reading
            server: RedisServer = request.getfixturevalue("redis_server")
            transport = make_transport(transport_kind, new_name(), url=server.url, timeout=0.5)
        with publishing(Session, transport, write=write) as publisher, listening(transport):
            with Session.begin():
                Session.add(Item(id=1, name="a"))
            assert heard.wait_for(lambda: heard.identities() == [(1,)])
            if transport_kind == "postgresql":
                assert kill_connections(transport, "publisher") == 1
            else:
                admin = redis.Redis.from_url(server.url)
                admin.execute_command("CLIENT", "PAUSE", 60000, "WRITE")
            with Session.begin():
                Session.add(Item(id=2, name="lost"))  # this send fails, or its answer never comes
            # No flush(): the publisher notices a stalled server by itself.
            assert heard.wait_for(lambda: publisher.counters.failed == 1)
            if transport_kind != "postgresql":
                admin.execute_command("CLIENT", "UNPAUSE")
                admin.close()
            caplog.set_level(logging.INFO, "sa_signals.fanout")
            with Session.begin():
                Session.add(Item(id=3, name="c"))
            assert heard.wait_for(lambda: (3,) in heard.identities())
        assert heard.identities()[0] == (1,)
        assert heard.identities()[-1] == (3,)
        assert heard.gaps == ["subscribed", f"publisher {publisher.id} failed to send 1 messages"]
        # The gap comes before the change of the message that announced it.
        assert heard.events.index(("gap", heard.gaps[1])) < heard.events.index(heard.changes[-1])
        assert (
            f"fan-out publisher {publisher.id} sends again after losing 1 messages" in caplog.text
        )

    @pytest.mark.transports("redis-pubsub", "redis-stream")
    def test_a_write_lost_with_its_connection_is_announced(
        self, Session: sa_orm.scoped_session[sa_orm.Session], transport: t.Any, heard: Heard
    ) -> None:
        """A message written from the committing thread on a connection Redis closed is
        counted as lost when its answer never comes, and announced."""
        with publishing(Session, transport, write=True) as publisher, listening(transport):
            with Session.begin():
                Session.add(Item(id=1, name="a"))  # sent by the thread: the connection opens
            assert publisher.flush()
            with Session.begin():
                Session.add(Item(id=2, name="b"))  # written from this thread
            assert heard.wait_for(lambda: heard.identities() == [(1,), (2,)])
            assert kill_connections(transport, "publisher") == 1
            with Session.begin():
                Session.add(Item(id=3, name="lost"))
            assert publisher.flush()
            assert publisher.counters.failed == 1
            with Session.begin():
                Session.add(Item(id=4, name="d"))
            assert heard.wait_for(lambda: (4,) in heard.identities())
        assert heard.identities() == [(1,), (2,), (4,)]
        assert heard.gaps == ["subscribed", f"publisher {publisher.id} failed to send 1 messages"]
