"""A Redis stream as a fan-out transport (needs redis-py and Redis 7 or later).

Publishers ``XADD`` to one stream, trimmed to about ``maxlen`` entries; each listener reads it
from where it stopped. A reconnect therefore loses nothing while the entries it missed are still
in the stream: the listener resumes without a gap. Trimming past a listener's position is
noticed (Redis 7 counts the entries ever added) and reported as a gap.

Right after each read, on the same connection, a listener asks how many entries the stream has
and has ever received. A small Lua script answers with those three figures: the whole
``XINFO STREAM`` answer carries the first and last entries as well, and decoding it cost a
listener as much as everything else it does per message. Where scripts are refused (an ACL
without ``EVALSHA``, scripting disabled), ``XINFO STREAM`` is asked instead.
"""

from __future__ import annotations

import collections.abc as c
import typing as t

from . import _redis
from .transport import Missed

if t.TYPE_CHECKING:
    import redis
    import redis.connection

BATCH: t.Final = 1000
"""Entries one read takes at most."""

FIELD: t.Final = b"m"
"""The entry field holding the payload."""

POSITION_SCRIPT: t.Final = """\
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local found = {}
for i = 1, #info, 2 do found[info[i]] = info[i + 1] end
return {found['length'], found['entries-added'], found['last-generated-id']}
"""
"""What a listener needs of ``XINFO STREAM``: the length, the entries ever added and the id of
the last one; nil when the stream does not exist."""

_Entry: t.TypeAlias = "tuple[bytes | str, bytes | None]"
"""An entry read: its id and its payload (None if it has no ``FIELD``)."""

_ResponseError = _redis.ResponseError
_NoScriptError = _redis.NoScriptError


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
    """Appends each payload to the stream, trimmed, as an entry whose one field is ``FIELD``."""

    def __init__(self, transport: RedisStream) -> None:
        stream, maxlen = transport.stream, transport.maxlen
        super().__init__(transport, ("XADD", stream, "MAXLEN", "~", maxlen, "*", FIELD))


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
        self._connection: redis.connection.ConnectionInterface | None = None
        """The connection that reads, taken from the client's pool at the first read."""
        self._script: str | None = None
        """The SHA1 of :data:`POSITION_SCRIPT` on the server; None where scripts are refused."""

    def open(self) -> bool:
        """Connect; return True if every entry after the position is still in the stream."""
        transport = self._transport
        # A blocking read waits up to the read timeout on top of the command timeout.
        self._client = transport.client("listener", extra_timeout=1.0)
        self._load_script()
        info = self._info_now()
        if self.position is None:  # the first open: start at the end
            self._resync(info)
            return False
        return self._intact(info, self._ordinal)

    def read(self, timeout: float, /) -> list[bytes | Missed]:
        """Return the entries appended after the position, waiting up to ``timeout`` seconds."""
        assert self._client is not None, "read() before open()"
        assert self.position is not None
        stream = self._transport.stream
        ordinal = self._ordinal
        block = max(1, int(timeout * 1000))
        # Right after the read, on the same connection: had the stream dropped entries after
        # the position before the read could return them?
        if self._script is not None:
            entries, answer = self._read_with_script(stream, block)
        else:
            entries, answer = self._read_with_xinfo(stream, block)
        if self._script is not None and isinstance(answer, _ResponseError):
            # The script was forgotten (SCRIPT FLUSH) or refused: asked again now, later than
            # the read. The stream can only have lost more since, so no gap is missed.
            if isinstance(answer, _NoScriptError):
                self._load_script()
            info = self._info_now()
        else:
            info = _info_of(answer)
        out: list[bytes | Missed] = []
        for entry_id, payload in entries:
            self.position = _text(entry_id)
            self._ordinal += 1
            if payload is not None:
                out.append(payload)
        if not self._intact(info, ordinal):
            out.insert(0, Missed(f"the stream {stream!r} was trimmed past this listener"))
        return out

    def _read_with_script(self, stream: str, block: int) -> tuple[list[_Entry], t.Any]:
        """``XREAD`` and the position script, written at once on a connection of the client's,
        their answers read as the server sent them (redis-py's pipeline and its parsing of
        the answers cost a listener a quarter of its work per message)."""
        assert self._client is not None
        assert self._script is not None
        assert self.position is not None
        connection = self._connection
        if connection is None:
            connection = self._connection = self._client.connection_pool.get_connection()
        commands = [
            ("XREAD", "COUNT", BATCH, "BLOCK", block, "STREAMS", stream, self.position),
            ("EVALSHA", self._script, 1, stream),
        ]
        try:
            connection.send_packed_command(_redis.pack(commands))  # type: ignore[no-untyped-call]
            reply = connection.read_response()
            try:
                answer = connection.read_response()
            except _ResponseError as exc:
                answer = exc
        except BaseException:
            # An answer may be left unread: the connection cannot serve another read.
            connection.disconnect()  # type: ignore[no-untyped-call]
            raise
        return _entries_of(reply), answer

    def _read_with_xinfo(self, stream: str, block: int) -> tuple[list[_Entry], t.Any]:
        """``XREAD`` and ``XINFO STREAM`` in a pipeline, where scripts are refused."""
        assert self._client is not None
        assert self.position is not None
        pipeline = self._client.pipeline(transaction=False)
        pipeline.xread({stream: self.position}, count=BATCH, block=block)
        pipeline.xinfo_stream(stream)
        result, answer = pipeline.execute(raise_on_error=False)
        if isinstance(result, Exception):
            raise result
        entries = [
            (entry_id, fields.get(FIELD)) for _, read in result or () for entry_id, fields in read
        ]
        return entries, answer

    def _load_script(self) -> None:
        assert self._client is not None
        try:
            self._script = self._client.script_load(POSITION_SCRIPT)
        except _ResponseError:  # scripts refused: XINFO STREAM after each read instead
            self._script = None

    def _info_now(self) -> dict[str, t.Any] | None:
        """Return the stream's length, entries added and last id; None if it does not exist."""
        assert self._client is not None
        stream = self._transport.stream
        if self._script is not None:
            try:
                return _info_of(self._client.evalsha(self._script, 1, stream))
            except _NoScriptError:
                pass  # forgotten meanwhile: XINFO STREAM this time
            except _ResponseError:
                self._script = None  # refused: XINFO STREAM from now on
        try:
            return _info_of(self._client.xinfo_stream(stream))
        except Exception as exc:
            if not _no_stream(exc):
                raise
            return None

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
        self._connection = None
        _redis.close(client)


def _entries_of(reply: t.Any) -> list[_Entry]:
    """Return the entries of an ``XREAD`` answer as the server sent it: RESP2
    ``[[stream, entries]]``, RESP3 ``{stream: entries}``, nil when none came; each entry
    ``[id, [field, value, ...]]``."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else [read for _, read in reply]
    return [(entry_id, _payload(fields or ())) for read in streams for entry_id, fields in read]


def _payload(fields: c.Sequence[t.Any]) -> bytes | None:
    for index in range(0, len(fields) - 1, 2):
        if fields[index] == FIELD:
            payload: bytes = fields[index + 1]
            return payload
    return None


def _info_of(answer: t.Any) -> dict[str, t.Any] | None:
    """Return what ``POSITION_SCRIPT`` or ``XINFO STREAM`` answered as ``XINFO STREAM`` names it;
    None when the stream does not exist; raise an error answer."""
    if isinstance(answer, Exception):
        if _no_stream(answer):
            return None
        raise answer
    if answer is None or isinstance(answer, dict):
        return answer
    length, added, last = answer
    return {"length": length, "entries-added": added, "last-generated-id": last}


def _no_stream(exc: Exception) -> bool:
    return "no such key" in str(exc)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
