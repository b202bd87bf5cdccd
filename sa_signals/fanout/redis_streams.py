"""A Redis stream as a fan-out transport (needs redis-py and Redis 7 or later).

Publishers ``XADD`` to one stream, trimmed to about ``maxlen`` entries; each listener reads it
from where it stopped. A reconnect therefore loses nothing while the entries it missed are still
in the stream: the listener resumes without a gap. Trimming past a listener's position is
noticed (Redis 7 counts the entries ever added) and reported as a gap.
"""

from __future__ import annotations

import typing as t

from . import _redis
from .transport import Missed

if t.TYPE_CHECKING:
    import redis

BATCH: t.Final = 1000
"""Entries one read takes at most."""

FIELD: t.Final = b"m"
"""The entry field holding the payload."""


class RedisStream(_redis.Server):
    """Messages as entries of the stream ``stream`` on the Redis server at ``url``.

    Publishers trim it to about ``maxlen`` entries (``XADD MAXLEN ~``): enough for a listener
    to catch up after a reconnect of ``maxlen / commits per second`` seconds. Commands give up
    after ``timeout`` seconds.
    """

    def __init__(
        self,
        url: str,
        stream: str = "sa_signals",
        *,
        maxlen: int = 100_000,
        timeout: float = 2.0,
        max_bytes: int = _redis.DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(url, stream, timeout, max_bytes)
        self.stream = stream
        self.maxlen = maxlen

    def sender(self) -> StreamSender:
        """Return a sender that connects on first use."""
        return StreamSender(self)

    def subscribe(self) -> StreamSubscription:
        """Return a subscription that starts reading at the end of the stream."""
        return StreamSubscription(self)


class StreamSender(_redis.CommandSender):
    """Appends each payload to the stream, trimming it."""

    def __init__(self, transport: RedisStream) -> None:
        super().__init__(transport)
        self._command = ("XADD", transport.stream, "MAXLEN", "~", transport.maxlen, "*", FIELD)

    def command(self, payload: bytes) -> tuple[t.Any, ...]:
        """Return ``XADD`` of ``payload``."""
        return (*self._command, payload)


class StreamSubscription:
    """Reads the stream from a position kept across reconnects.

    Besides the id of the last entry read, it keeps that entry's ordinal: how many entries the
    stream had received up to it. Redis counts every entry ever added (``entries-added``) and
    trims only the oldest, so the entries still in the stream are the last ``length`` ones: when
    the ordinal is below ``entries-added - length``, unread entries were trimmed away.
    """

    def __init__(self, transport: RedisStream) -> None:
        self._transport = transport
        self._client: redis.Redis | None = None
        self.position: str | None = None
        """The id of the last entry read; None before the first open."""
        self._ordinal = 0

    def open(self) -> bool:
        """Connect; return True if every entry after the position is still in the stream."""
        transport = self._transport
        # A blocking read waits up to the read timeout on top of the command timeout.
        self._client = transport.client("listener", extra_timeout=1.0)
        try:
            info = self._client.xinfo_stream(transport.stream)
        except Exception as exc:
            if not _no_stream(exc):
                raise
            info = None
        if self.position is None:  # the first open: start at the end
            self._resync(info)
            return False
        return self._intact(info, self._ordinal)

    def read(self, timeout: float, /) -> list[bytes | Missed]:
        """Return the entries appended after the position, waiting up to ``timeout`` seconds."""
        client = self._client
        assert client is not None, "read() before open()"
        assert self.position is not None
        stream = self._transport.stream
        ordinal = self._ordinal
        pipeline = client.pipeline(transaction=False)
        pipeline.xread({stream: self.position}, count=BATCH, block=max(1, int(timeout * 1000)))
        # Right after the read, on the same connection: had the stream dropped entries after
        # the position before the read could return them?
        pipeline.xinfo_stream(stream)
        result, info = pipeline.execute(raise_on_error=False)
        if isinstance(result, Exception):
            raise result
        if isinstance(info, Exception):
            if not _no_stream(info):
                raise info
            info = None
        out: list[bytes | Missed] = []
        for _, entries in result or ():
            for entry_id, fields in entries:
                self.position = _text(entry_id)
                self._ordinal += 1
                payload = fields.get(FIELD)
                if payload is not None:
                    out.append(payload)
        if not self._intact(info, ordinal):
            out.insert(0, Missed(f"the stream {stream!r} was trimmed past this listener"))
        return out

    def _intact(self, info: dict[str, t.Any] | None, ordinal: int) -> bool:
        """Whether every entry after the one of ``ordinal`` is still in the stream, per ``info``.

        If not, the position moves to the end of the stream: the gap covers what is skipped.
        """
        if info is None:
            intact = ordinal == 0  # else the stream being read was deleted
        else:
            added = int(info["entries-added"])
            # Fewer entries added than read: the stream was deleted and made again.
            intact = added - int(info["length"]) <= ordinal <= added
        if not intact:
            self._resync(info)
        return intact

    def _resync(self, info: dict[str, t.Any] | None) -> None:
        if info is None:
            self.position, self._ordinal = "0-0", 0
        else:
            self.position = _text(info["last-generated-id"])
            self._ordinal = int(info["entries-added"])

    def close(self) -> None:
        """Close the connection; the position is kept for the next open."""
        client, self._client = self._client, None
        _redis.close(client)


def _no_stream(exc: Exception) -> bool:
    return "no such key" in str(exc)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
