"""Redis pub/sub as a fan-out transport (needs redis-py).

``PUBLISH`` reaches the subscribers connected at that moment, once: what is published while a
listener reconnects is gone, and the listener reports a gap. A subscriber that reads too slowly
is disconnected by Redis (``client-output-buffer-limit pubsub``), which is a reconnect too.
"""

from __future__ import annotations

import typing as t

from . import _redis
from .transport import Missed

if t.TYPE_CHECKING:
    import redis
    import redis.client


class RedisPubSub(_redis.Server):
    """Messages as ``PUBLISH`` on ``channel`` of the Redis server at ``url``.

    Pub/sub channels are shared by every database of a server: the database of ``url`` does not
    separate them, the channel name does. Commands give up after ``timeout`` seconds.
    """

    def __init__(
        self,
        url: str,
        channel: str = "sa_signals",
        *,
        timeout: float = 2.0,
        max_bytes: int = _redis.DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(url, channel, timeout, max_bytes)
        self.channel = channel

    def sender(self) -> PublishSender:
        """Return a sender that connects on first use."""
        return PublishSender(self)

    def subscribe(self) -> PubSubSubscription:
        """Return a subscription to the channel."""
        return PubSubSubscription(self)


class PublishSender(_redis.CommandSender):
    """Publishes each payload on the channel."""

    def __init__(self, transport: RedisPubSub) -> None:
        super().__init__(transport, ("PUBLISH", transport.channel))


class PubSubSubscription:
    """A connection subscribed to the channel."""

    def __init__(self, transport: RedisPubSub) -> None:
        self._transport = transport
        self._client: redis.Redis | None = None
        self._pubsub: redis.client.PubSub | None = None

    def open(self) -> bool:
        """Subscribe and wait for the confirmation; what was published before is lost."""
        transport = self._transport
        self._client = transport.client("listener")
        self._pubsub = self._client.pubsub()
        self._pubsub.subscribe(transport.channel)
        confirmation = self._pubsub.get_message(timeout=transport.timeout)
        if confirmation is None or confirmation["type"] != "subscribe":
            msg = f"Redis did not confirm the subscription to {transport.channel!r}"
            raise ConnectionError(msg)
        return False

    def read(self, timeout: float, /) -> list[bytes | Missed]:
        """Return the next message, waiting up to ``timeout`` seconds; empty if none came.

        One message per read: asking redis-py for a second one that has not arrived costs as
        much as a tenth of what a listener does per message, and one already received comes
        back at once from the next read.
        """
        pubsub = self._pubsub
        assert pubsub is not None, "read() before open()"
        message = pubsub.get_message(timeout=timeout)
        if message is None:
            return []
        kind = message["type"]
        if kind == "message":
            return [message["data"]]
        if kind == "subscribe":
            # redis-py reconnected and subscribed again by itself: the meantime is lost.
            return [Missed("reconnected")]
        return []

    def close(self) -> None:
        """Unsubscribe and close the connection."""
        pubsub, self._pubsub = self._pubsub, None
        client, self._client = self._client, None
        try:
            if pubsub is not None:
                pubsub.close()
        finally:
            _redis.close(client)
