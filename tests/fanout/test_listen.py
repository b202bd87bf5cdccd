"""listen() and listen_async(): remote_committed per model, remote_gap whenever loss may be."""

from __future__ import annotations

import asyncio
import logging
import threading
import typing as t
import uuid

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from sa_signals import fanout
from sa_signals import signals
from sa_signals.fanout import _process
from sa_signals.fanout.gaps import Gap
from sa_signals.fanout.gaps import Tracker
from sa_signals.fanout.message import encode
from sa_signals.fanout.message import Message
from sa_signals.fanout.message import Record
from sa_signals.fanout.names import Resolver
from sa_signals.fanout.names import table_name
from sa_signals.fanout.transport import Missed
from tests.conftest import Connector
from tests.fanout.conftest import Heard
from tests.fanout.conftest import listening
from tests.fanout.conftest import publishing
from tests.fanout.conftest import WAIT
from tests.models import Animal
from tests.models import Base
from tests.models import Cat
from tests.models import Dog
from tests.models import Item

Scoped: t.TypeAlias = sa_orm.scoped_session[sa_orm.Session]


def payload(publisher: str, sequence: int, **fields: t.Any) -> bytes:
    fields.setdefault("models", {"items": (Record("update", (1,), frozenset({"value"})),)})
    return encode(Message(publisher=publisher, sequence=sequence, **fields), 8000)[0]


class TestTracker:
    def test_consecutive_messages_are_delivered(self) -> None:
        """Messages numbered one after the other are delivered, without a gap."""
        tracker = Tracker(own=False)
        out = [tracker.accept(payload("p.1", n), 0.0) for n in (5, 6, 7)]
        assert [[m.sequence for m in batch] for batch in out] == [[5], [6], [7]]

    def test_skipped_numbers_are_a_gap(self) -> None:
        """A publisher skipping numbers means messages were lost on the way."""
        tracker = Tracker(own=False)
        tracker.accept(payload("p.1", 1), 0.0)
        out = tracker.accept(payload("p.1", 4), 0.0)
        assert out[0] == Gap("2 messages of publisher p.1 were missed")
        assert t.cast("Message", out[1]).sequence == 4

    def test_publisher_failures_are_a_gap_even_at_first_sight(self) -> None:
        """A message saying its publisher failed to send is a gap, however it is numbered."""
        tracker = Tracker(own=False)
        assert tracker.accept(payload("p.1", 3, lost=2), 0.0)[0] == Gap(
            "publisher p.1 failed to send 2 messages"
        )

    def test_replayed_messages_are_dropped(self) -> None:
        """A message heard before (a stream replay) is not delivered twice."""
        tracker = Tracker(own=False)
        tracker.accept(payload("p.1", 1), 0.0)
        tracker.accept(payload("p.1", 2), 0.0)
        assert tracker.accept(payload("p.1", 2), 0.0) == []
        assert tracker.duplicates == 1

    def test_subscription_gap_forgets_the_numbers(self) -> None:
        """After a reconnect, each publisher's next number starts afresh."""
        tracker = Tracker(own=False)
        tracker.accept(payload("p.1", 1), 0.0)
        assert tracker.accept(Missed("reconnected"), 0.0) == [Gap("reconnected")]
        assert [type(out) for out in tracker.accept(payload("p.1", 9), 0.0)] == [Message]

    def test_silent_publishers_are_a_gap(self) -> None:
        """A publisher silent for three heartbeats without saying goodbye is a gap, once."""
        tracker = Tracker(own=False)
        tracker.accept(payload("p.1", 1, heartbeat=1.0), 100.0)
        tracker.accept(payload("p.2", 1, heartbeat=1.0, end=True), 100.0)
        tracker.accept(payload("p.3", 1, heartbeat=0.0), 100.0)
        assert tracker.expire(102.9) == []
        assert tracker.expire(103.1) == [Gap("publisher p.1 fell silent")]
        assert tracker.expire(1e9) == []

    def test_heartbeats_deliver_nothing(self) -> None:
        """A message without changes only keeps its publisher's numbers and deadline."""
        tracker = Tracker(own=False)
        assert tracker.accept(payload("p.1", 1, models={}), 0.0) == []
        assert len(tracker.accept(payload("p.1", 2), 0.0)) == 1

    def test_unreadable_and_too_large_messages_are_gaps(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A payload that cannot be read, or that lists no models, is a gap."""
        tracker = Tracker(own=False)
        (gap,) = tracker.accept(b'{"v": 9}', 0.0)
        assert isinstance(gap, Gap)
        assert gap.reason.startswith("unreadable message: a fan-out message of version 9")
        assert "a fan-out message could not be read" in caplog.text
        assert tracker.accept(payload("p.1", 1, models=None), 0.0) == [
            Gap("a message of publisher p.1 was too large to say what changed")
        ]

    def test_own_messages_are_left_out_unless_asked(self) -> None:
        """Messages of this process's publishers are dropped, unless own=True."""
        own = _process.new_publisher_id()
        assert Tracker(own=False).accept(payload(own, 1), 0.0) == []
        assert len(Tracker(own=True).accept(payload(own, 1), 0.0)) == 1


class Keyed(sa_orm.DeclarativeBase):
    pass


class Event(Keyed):
    __tablename__ = "events"
    id: sa_orm.Mapped[uuid.UUID] = sa_orm.mapped_column(primary_key=True)
    day: sa_orm.Mapped[sa.Date] = sa_orm.mapped_column(sa.Date, primary_key=True)
    code: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(10), primary_key=True)


class TestResolver:
    def test_single_table_subclasses_go_to_the_base(self) -> None:
        """A table's name resolves to the class that maps the table itself."""
        resolver = Resolver(Base, table_name)
        assert resolver.resolve("animals") is Animal
        assert resolver.resolve("dogs") is Dog
        assert table_name(Cat) == "animals"

    def test_models_given_as_a_registry_or_classes(self) -> None:
        """A registry or an iterable of mapped classes work as well as a base."""
        assert Resolver(Base.registry, table_name).resolve("items") is Item
        assert Resolver([Item], table_name).resolve("items") is Item
        assert Resolver([Item], table_name).resolve("dogs") is None

    def test_unknown_names_are_logged_once(self, caplog: pytest.LogCaptureFixture) -> None:
        """A name no model has is logged the first time only."""
        caplog.set_level(logging.INFO, "sa_signals.fanout")
        resolver = Resolver([Item], table_name)
        resolver.resolve("nowhere")
        resolver.resolve("nowhere")
        assert caplog.text.count("no mapped class is named 'nowhere' here") == 1

    def test_clashing_names_are_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        """Two classes with one name: the first wins, and the clash is logged."""
        resolver = Resolver([Item, Animal], lambda model: "same")
        assert resolver.resolve("same") is Item
        assert "Item and Animal are both named 'same'" in caplog.text

    def test_identities_get_their_python_types_back(self) -> None:
        """UUIDs and dates sent as text become UUIDs and dates again."""
        key = uuid.uuid4()
        resolver = Resolver(Keyed, table_name)
        model = resolver.resolve("events")
        identity = resolver.identity(model, (str(key), "2024-01-02", "x"))
        assert identity == (key, __import__("datetime").date(2024, 1, 2), "x")
        assert resolver.identity(None, ("a",)) == ("a",)
        assert resolver.identity(Item, (1,)) == (1,)


@pytest.mark.backends("sqlite")
@pytest.mark.transports("redis-pubsub")
class TestDelivery:
    def test_sender_is_the_mapped_class(
        self, Session: Scoped, transport: t.Any, heard: Heard, connect: Connector
    ) -> None:
        """remote_committed is sent by the most specific class; base receivers get subclasses."""
        animals = connect.record(signals.remote_committed, Animal)
        with publishing(Session, transport), listening(transport):
            with Session.begin():
                Session.add_all([Dog(id=1, name="rex"), Item(id=1, name="a")])
            assert heard.wait_for(lambda: len(heard.sends) == 2)
        assert {sender for sender, _ in heard.sends} == {Dog, Item}
        assert [(sender, kwargs["changes"][0].identity) for sender, kwargs in animals] == [
            (Dog, (1,))
        ]
        change = animals[0][1]["changes"][0]
        assert (change.operation, change.model, change.name) == ("insert", Dog, "dogs")
        assert isinstance(animals[0][1]["message"], fanout.Message)

    def test_unknown_names_are_sent_by_name(
        self, Session: Scoped, transport: t.Any, heard: Heard
    ) -> None:
        """A model this process does not map arrives with its name as sender, model None."""
        with publishing(Session, transport), listening(transport, models=[Item]):
            with Session.begin():
                Session.add(Dog(id=1, name="rex"))
            assert heard.wait_for(lambda: len(heard.sends) == 1)
        (sender, (change,)) = heard.sends[0]
        assert sender == "dogs"
        assert change.model is None
        assert change.identity == (1,)

    def test_own_messages_are_left_out(
        self, Session: Scoped, transport: t.Any, heard: Heard
    ) -> None:
        """A listener hears its own process's commits only with own=True."""
        with (
            publishing(Session, transport),
            listening(transport, own=False) as deaf,
            listening(transport),
        ):
            with Session.begin():
                Session.add(Item(id=1, name="a"))
            assert heard.wait_for(lambda: len(heard.sends) == 1)
            assert heard.wait_for(lambda: deaf.counters.received == 1)
        assert deaf.counters.delivered == 0

    def test_failing_receivers_are_logged_and_the_others_run(
        self,
        Session: Scoped,
        transport: t.Any,
        heard: Heard,
        connect: Connector,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A receiver that raises is logged and counted; later receivers still get the message."""

        def broken(sender: t.Any, **kwargs: t.Any) -> None:
            raise RuntimeError("cache server gone")

        async def coroutine(sender: t.Any, **kwargs: t.Any) -> None:
            pass

        connect(signals.remote_committed, broken)
        connect(signals.remote_committed, coroutine)
        connect(signals.remote_committed, lambda sender, **kwargs: asyncio.sleep(0))
        after = connect.record(signals.remote_committed)
        with publishing(Session, transport), listening(transport) as listener:
            with Session.begin():
                Session.add(Item(id=1, name="a"))
            assert heard.wait_for(lambda: len(after) == 1)
        assert listener.counters.receiver_errors == 3
        assert "cache server gone" in caplog.text
        assert (
            "is a coroutine function connected to remote_committed, but the listener runs on a"
            " thread; start it with listen_async()" in caplog.text
        )
        assert "returned a coroutine, but the listener runs on a thread" in caplog.text

    def test_slow_receivers_overflow_into_a_gap(
        self, Session: Scoped, transport: t.Any, heard: Heard, connect: Connector
    ) -> None:
        """Messages that pile up behind a slow receiver are replaced by one gap."""
        release = threading.Event()
        connect(signals.remote_committed, lambda sender, **kwargs: release.wait(WAIT))
        with publishing(Session, transport), listening(transport, max_queued=2) as listener:
            commit(Session, 1)
            assert heard.wait_for(lambda: heard.identities() == [(1,)])  # now held up
            for n in range(2, 6):
                commit(Session, n)
            assert heard.wait_for(lambda: listener.counters.overflows >= 1)
            release.set()
            commit(Session, 99)
            assert heard.wait_for(lambda: (99,) in heard.identities())
        assert "the listener's queue of 2 overflowed" in heard.gaps
        assert heard.identities()[0] == (1,)
        assert len(heard.identities()) < 6  # some of 2 to 5 were replaced by the gap

    def test_listeners_are_checked(self, transport: t.Any) -> None:
        """A queue too small to work is refused with the fix."""
        with pytest.raises(ValueError, match="max_queued of at least 1, got 0"):
            fanout.listen(transport, models=Base, max_queued=0)

    def test_async_listener_awaits_receivers_in_the_loop(
        self, Session: Scoped, transport: t.Any, connect: Connector, arunner: asyncio.Runner
    ) -> None:
        """listen_async() delivers in the event loop, awaiting coroutine receivers in order."""
        done: list[t.Any] = []
        loop_thread = threading.current_thread()

        async def slow(sender: t.Any, **kwargs: t.Any) -> None:
            await asyncio.sleep(0.01)
            done.append(
                ("slow", kwargs["changes"][0].identity, threading.current_thread() is loop_thread)
            )

        connect(signals.remote_committed, slow)
        connect(
            signals.remote_committed,
            lambda sender, **kwargs: done.append(("plain", kwargs["changes"][0].identity)),
        )
        connect(
            signals.remote_gap, lambda sender, **kwargs: done.append(("gap", kwargs["reason"]))
        )

        async def scenario() -> t.Any:
            async with fanout.listen_async(transport, models=Base, own=True) as listener:
                assert await listener.wait_ready(WAIT)
                with publishing(Session, transport):
                    for n in (1, 2):
                        await asyncio.to_thread(commit, Session, n)
                    for _ in range(int(WAIT * 100)):
                        if len(done) == 5:
                            break
                        await asyncio.sleep(0.01)
            return listener

        listener = arunner.run(scenario())
        assert done == [
            ("gap", "subscribed"),
            ("slow", (1,), True),
            ("plain", (1,)),
            ("slow", (2,), True),
            ("plain", (2,)),
        ]
        assert listener.counters.delivered == 2
        assert "AsyncListener" in repr(listener)


SILENT = "elsewhere:1:x.1"
"""A publisher that sends one message, with heartbeats due every 0.05 s, then falls silent."""


def send_then_fall_silent(transport: t.Any) -> None:
    message = Message(
        publisher=SILENT,
        sequence=1,
        heartbeat=0.05,
        models={"items": (Record("update", (1,), frozenset({"name"})),)},
    )
    sender = transport.sender()
    try:
        sender.send([encode(message, 8000)[0]])
    finally:
        sender.close()


@pytest.mark.parametrize("dispatcher", ["thread", "asyncio"])
def test_a_publisher_fallen_silent_is_a_gap_while_nothing_arrives(
    dispatcher: str, transport: t.Any, connect: Connector
) -> None:
    """With no message coming, either listener still notices a publisher that stopped
    without saying goodbye: its dispatcher wakes on its own to look."""
    heard = Heard()
    connect(signals.remote_committed, heard.committed)
    connect(signals.remote_gap, heard.gap)
    silent = f"publisher {SILENT} fell silent"

    if dispatcher == "thread":
        with fanout.listen(transport, models=Base) as listener:
            assert listener.wait_ready(WAIT)
            send_then_fall_silent(transport)
            assert heard.wait_for(lambda: silent in heard.gaps)
    else:

        async def scenario() -> bool:
            async with fanout.listen_async(transport, models=Base) as listener:
                assert await listener.wait_ready(WAIT)
                await asyncio.to_thread(send_then_fall_silent, transport)
                for _ in range(int(WAIT * 100)):
                    if silent in heard.gaps:
                        return True  # before stop(), which looks once more
                    await asyncio.sleep(0.01)
            return False

        assert asyncio.run(scenario())
    assert heard.gaps == ["subscribed", silent]
    assert heard.identities() == [(1,)]


def commit(Session: Scoped, n: int) -> None:
    with Session.begin():
        Session.add(Item(id=n, name=str(n)))
    Session.remove()
