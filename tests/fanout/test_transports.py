"""The transports on their real servers: order, size limits, reconnects, stream replays, trims."""

from __future__ import annotations

import hashlib
import typing as t
import urllib.parse

import pytest
import redis
import sqlalchemy.orm as sa_orm

from sa_signals.fanout.message import encode
from sa_signals.fanout.message import Message
from sa_signals.fanout.message import Record
from sa_signals.fanout.redis_streams import POSITION_SCRIPT
from sa_signals.fanout.transport import Missed
from tests.fanout.conftest import Heard
from tests.fanout.conftest import kill_connections
from tests.fanout.conftest import listening
from tests.fanout.conftest import make_transport
from tests.fanout.conftest import new_name
from tests.fanout.conftest import publishing
from tests.fanout.conftest import redis_url
from tests.models import Item

Scoped: t.TypeAlias = sa_orm.scoped_session[sa_orm.Session]


def payloads(publisher: str, first: int, count: int) -> list[bytes]:
    return [
        encode(
            Message(
                publisher=publisher,
                sequence=n,
                models={"items": (Record("update", (n,), frozenset({"value"})),)},
            ),
            8000,
        )[0]
        for n in range(first, first + count)
    ]


def send(transport: t.Any, items: list[bytes]) -> None:
    sender = transport.sender()
    try:
        sender.send(items)
    finally:
        sender.close()


class TestEveryTransport:
    def test_a_batch_arrives_whole_and_in_order(self, transport: t.Any, heard: Heard) -> None:
        """Three hundred messages sent in one call arrive once each, in order, without a gap."""
        with listening(transport):
            send(transport, payloads("elsewhere:1:x.1", 1, 300))
            assert heard.wait_for(lambda: len(heard.changes) == 300)
        assert heard.identities() == [(n,) for n in range(1, 301)]
        assert heard.gaps == ["subscribed"]

    def test_a_channel_named_beyond_ascii_carries_messages(
        self, transport_kind: str, heard: Heard
    ) -> None:
        """A channel or stream whose name is not ASCII (sent in UTF-8) works both ways."""
        transport = make_transport(transport_kind, f"{new_name()}-prix-é")
        try:
            with listening(transport):
                send(transport, payloads("elsewhere:1:x.1", 1, 2))
                assert heard.wait_for(lambda: len(heard.changes) == 2)
        finally:
            if transport_kind == "redis-stream":
                client = redis.Redis.from_url(redis_url())
                assert client.delete(transport.stream) == 1  # type: ignore[attr-defined]
                client.close()
        assert heard.identities() == [(1,), (2,)]

    def test_the_largest_payload_it_announces_passes(self, transport: t.Any, heard: Heard) -> None:
        """A payload of exactly max_bytes is carried (for NOTIFY: 7999 bytes)."""
        limit = min(transport.max_bytes, 100_000)
        message = Message(publisher="elsewhere:1:x.1", sequence=1, models={"items": ()})
        filler = limit - len(encode(message, limit)[0]) - len(',"":[]')
        message = Message(
            publisher="elsewhere:1:x.1", sequence=1, models={"items": (), "x" * filler: ()}
        )
        payload, degraded = encode(message, limit)
        assert (len(payload), degraded) == (limit, False)
        with listening(transport) as listener:
            send(transport, [payload])
            assert heard.wait_for(lambda: listener.counters.received == 1)
        assert heard.gaps == ["subscribed"]

    @pytest.mark.backends("sqlite")
    def test_a_lost_listening_connection_is_a_gap_then_delivery_goes_on(
        self, Session: Scoped, transport_kind: str, transport: t.Any, heard: Heard
    ) -> None:
        """Killing the listener's connection is a gap, then delivery goes on; a stream replays
        what was published meanwhile instead."""
        with publishing(Session, transport), listening(transport) as listener:
            with Session.begin():
                Session.add(Item(id=1, name="a"))
            assert heard.wait_for(lambda: heard.identities() == [(1,)])
            assert kill_connections(transport, "listener") == 1
            with Session.begin():
                Session.add(Item(id=2, name="while reconnecting"))
            assert heard.wait_for(lambda: listener.counters.connects == 2)
            with Session.begin():
                Session.add(Item(id=3, name="c"))
            assert heard.wait_for(lambda: (3,) in heard.identities())
        if transport_kind == "redis-stream":
            assert heard.identities() == [(1,), (2,), (3,)]
            assert heard.gaps == ["subscribed"]
        else:
            assert heard.gaps == ["subscribed", "reconnected"]
            assert heard.events.index(("gap", "reconnected")) < heard.events.index(
                heard.changes[-1]
            )


@pytest.fixture
def no_scripts_url() -> t.Iterator[str]:
    """The test server's URL as a user of its own that may do anything but run scripts, as
    some managed servers' users."""
    user = f"sa_signals_test_{new_name()}"
    client = redis.Redis.from_url(redis_url())
    client.acl_setuser(
        user,
        enabled=True,
        nopass=True,
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-@scripting"],
    )
    parts = urllib.parse.urlsplit(redis_url())
    yield parts._replace(netloc=f"{user}@{parts.netloc.rpartition('@')[2]}").geturl()
    client.acl_deluser(user)
    client.close()


def with_protocol(url: str, protocol: int) -> str:
    """``url`` with redis-py's RESP ``protocol`` version in its query."""
    parts = urllib.parse.urlsplit(url)
    query = "&".join(filter(None, [parts.query, f"protocol={protocol}"]))
    return parts._replace(query=query).geturl()


@pytest.mark.services("redis")
class TestRedisStream:
    @pytest.fixture(params=["RESP3", "RESP2", "no scripts"])
    def stream(self, request: pytest.FixtureRequest) -> t.Iterator[t.Any]:
        """A stream read with the position script in both of Redis's protocols, and read by a
        user who may not run scripts."""
        if request.param == "no scripts":
            url = request.getfixturevalue("no_scripts_url")
        else:
            url = with_protocol(redis_url(), int(request.param[-1]))
        transport = make_transport("redis-stream", new_name(), url, maxlen=5)
        yield transport
        client = redis.Redis.from_url(redis_url())
        client.delete(transport.stream)
        client.close()

    def test_reopening_resumes_where_it_stopped(self, stream: t.Any) -> None:
        """Entries appended while a subscription was closed are read after it opens again."""
        subscription = stream.subscribe()
        assert subscription.open() is False  # the first open: what came before is unknown
        send(stream, payloads("p:1:x.1", 1, 2))
        assert subscription.read(1.0) == payloads("p:1:x.1", 1, 2)
        subscription.close()
        send(stream, payloads("p:1:x.1", 3, 2))
        assert subscription.open() is True
        assert subscription.read(1.0) == payloads("p:1:x.1", 3, 2)
        subscription.close()

    def test_trimmed_past_the_position_is_missed(self, stream: t.Any) -> None:
        """Entries trimmed away before they were read are reported, then reading goes on."""
        subscription = stream.subscribe()
        subscription.open()
        send(stream, payloads("p:1:x.1", 1, 300))  # MAXLEN ~ 5 trims whole nodes of 100
        first = subscription.read(1.0)
        assert isinstance(first[0], Missed)
        assert "was trimmed past this listener" in first[0].reason
        assert len(first) < 301
        send(stream, payloads("p:1:x.1", 301, 1))
        assert subscription.read(1.0) == payloads("p:1:x.1", 301, 1)
        subscription.close()
        send(stream, payloads("p:1:x.1", 302, 300))
        assert subscription.open() is False  # trimmed while closed
        subscription.close()

    def test_a_failed_read_leaves_nothing_behind(self, stream: t.Any) -> None:
        """A read the server refuses raises; opened again, the subscription reads on."""
        subscription = stream.subscribe()
        subscription.open()
        send(stream, payloads("p:1:x.1", 1, 1))
        assert subscription.read(1.0) == payloads("p:1:x.1", 1, 1)
        client = redis.Redis.from_url(redis_url())
        client.delete(stream.stream)
        client.set(stream.stream, "not a stream")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            subscription.read(0.01)
        client.delete(stream.stream)
        client.close()
        subscription.close()
        assert subscription.open() is False  # the stream it read is gone
        send(stream, payloads("p:1:x.1", 2, 2))
        assert subscription.read(1.0) == payloads("p:1:x.1", 2, 2)
        subscription.close()

    def test_a_deleted_stream_is_missed(self, stream: t.Any) -> None:
        """Entries lost with a deleted stream are reported, closed or open."""
        subscription = stream.subscribe()
        subscription.open()
        send(stream, payloads("p:1:x.1", 1, 1))
        assert len(subscription.read(1.0)) == 1
        client = redis.Redis.from_url(redis_url())
        client.delete(stream.stream)
        (missed,) = subscription.read(0.01)
        assert isinstance(missed, Missed)
        send(stream, payloads("p:1:x.1", 2, 1))
        assert subscription.read(1.0) == payloads("p:1:x.1", 2, 1)
        subscription.close()
        client.delete(stream.stream)
        client.close()
        assert subscription.open() is False
        subscription.close()


@pytest.mark.services("redis")
def test_a_flushed_position_script_is_loaded_again() -> None:
    """After SCRIPT FLUSH, a read still tells a trim past the position, and loads the script
    again for the next reads."""
    transport: t.Any = make_transport("redis-stream", new_name(), maxlen=5)
    script = hashlib.sha1(POSITION_SCRIPT.encode()).hexdigest()
    client = redis.Redis.from_url(redis_url())
    subscription = transport.subscribe()
    try:
        subscription.open()
        assert client.script_exists(script) == [True]
        client.script_flush()
        send(transport, payloads("p:1:x.1", 1, 300))
        (missed, *_) = subscription.read(1.0)
        assert isinstance(missed, Missed)
        assert client.script_exists(script) == [True]
        send(transport, payloads("p:1:x.1", 301, 1))
        assert subscription.read(1.0) == payloads("p:1:x.1", 301, 1)
    finally:
        subscription.close()
        client.delete(transport.stream)
        client.close()


@pytest.mark.services("redis")
def test_a_refused_position_script_leaves_xinfo(no_scripts_url: str) -> None:
    """A listener whose user may not run scripts asks XINFO STREAM, and reads as usual."""
    transport: t.Any = make_transport("redis-stream", new_name(), no_scripts_url, maxlen=5)
    subscription = transport.subscribe()
    client = redis.Redis.from_url(redis_url())
    before = _calls(client)
    try:
        subscription.open()
        send(transport, payloads("p:1:x.1", 1, 3))
        assert subscription.read(1.0) == payloads("p:1:x.1", 1, 3)
    finally:
        subscription.close()
        client.delete(transport.stream)
    after = _calls(client)
    client.close()
    assert after["xinfo|stream"] > before.get("xinfo|stream", 0)
    assert after.get("evalsha", 0) == before.get("evalsha", 0)


def _calls(client: redis.Redis) -> dict[str, int]:
    """How often the server ran each command since it started (INFO commandstats)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


@pytest.mark.transports("postgresql")
def test_channel_names_postgresql_would_cut_are_refused(transport_kind: str) -> None:
    """A NOTIFY channel longer than PostgreSQL's identifiers is refused with the fix."""
    with pytest.raises(ValueError, match="longer than PostgreSQL's 63-byte identifiers; use a"):
        make_transport(transport_kind, "x" * 64)
