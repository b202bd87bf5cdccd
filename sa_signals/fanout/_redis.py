"""Redis clients for the fan-out transports: bounded timeouts, no hidden retries."""

from __future__ import annotations

import collections.abc as c
import typing as t

try:
    import redis
    import redis.backoff
    import redis.connection
    import redis.exceptions
    import redis.retry
except ImportError as exc:  # pragma: no cover - depends on the environment
    msg = 'the Redis fan-out transports need redis-py: pip install "sa-signals[redis]"'
    raise ImportError(msg) from exc

ResponseError = redis.exceptions.ResponseError
NoScriptError = redis.exceptions.NoScriptError

DEFAULT_MAX_BYTES: t.Final = 1 << 20
"""The default payload limit of the Redis transports (Redis itself takes up to 512 MiB)."""


class Server:
    """What both Redis transports hold: the server's URL, the channel or stream, the limits."""

    def __init__(self, url: str, key: str, timeout: float, max_bytes: int) -> None:
        self.url = url
        self.timeout = timeout
        """Seconds a command may take."""
        self._key = key
        self._max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._key!r})"

    @property
    def max_bytes(self) -> int:
        """The largest payload sent."""
        return self._max_bytes

    def client_name(self, role: str) -> str:
        """Return the name of ``role``'s connections: ``sa_signals-fanout-<role>-<key>``, each
        character Redis refuses in a client name (a space, anything beyond printable ASCII)
        replaced by ``_``."""
        name = f"sa_signals-fanout-{role}-{self._key}"
        return "".join(char if "!" <= char <= "~" else "_" for char in name)

    def client(self, role: str, extra_timeout: float = 0.0) -> redis.Redis:
        """Return a client whose connections are named for ``role``."""
        return client(self.url, self.timeout + extra_timeout, self.client_name(role))

    def commands(self, role: str) -> Commands:
        """Return a batch sender whose connection is named for ``role``."""
        return Commands(self.url, self.timeout, self.client_name(role))


def _options(timeout: float, name: str) -> dict[str, t.Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
        "retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0),
        "health_check_interval": max(1, round(timeout)),
        "client_name": name,
    }


def client(url: str, timeout: float, name: str) -> redis.Redis:
    """Return a client of ``url`` that gives up after ``timeout`` seconds and never retries.

    Its connections are named ``name`` (``CLIENT LIST`` shows it).

    redis-py retries a failed command on a new connection by default, which would resubscribe a
    listener behind its back and lose what was published meanwhile without telling anyone: the
    transports reconnect themselves, and report the gap.
    """
    return redis.Redis.from_url(url, **_options(timeout, name))


def close(client: redis.Redis | None) -> None:
    """Close ``client``'s connections, if there is a client."""
    if client is not None:
        client.close()


Argument: t.TypeAlias = "bytes | str | int"


def pack(commands: c.Sequence[tuple[Argument, ...]]) -> list[bytes]:
    """Return ``commands`` in Redis's protocol, in one buffer, as ``send_packed_command()``
    takes them: what redis-py's ``pack_commands()`` writes for such arguments (strings in
    UTF-8), for a fraction of its work."""
    return [b"".join(_head(command, len(command)) for command in commands)]


def _head(arguments: tuple[Argument, ...], count: int) -> bytes:
    """Return the start of a command of ``count`` arguments in Redis's protocol: the first of
    them, ``arguments``."""
    parts = [b"*%d\r\n" % count]
    for argument in arguments:
        if isinstance(argument, str):
            value = argument.encode()
        elif isinstance(argument, bytes):
            value = argument
        else:
            value = b"%d" % argument
        parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(parts)


def connected(connection: redis.connection.ConnectionInterface) -> bool:
    """Whether ``connection`` holds an open socket (redis-py 8 tells by ``is_connected``; before,
    its socket attribute is None once it was dropped)."""
    is_connected = getattr(connection, "is_connected", None)
    if is_connected is not None:
        return bool(is_connected)
    return getattr(connection, "_sock", None) is not None


class Commands:
    """One connection that sends commands in batches: a pipeline without redis-py's per-call
    machinery, which costs a publisher three times the CPU of the commands themselves. Also a
    :class:`~sa_signals.fanout.transport.Writer`: commands written without waiting for their
    answers, read later."""

    def __init__(self, url: str, timeout: float, name: str) -> None:
        self._pool = redis.ConnectionPool.from_url(url, **_options(timeout, name))
        self._connection: redis.connection.ConnectionInterface | None = None
        self.unanswered = 0
        """Commands written whose answer was not read yet."""

    def run(self, packed: list[bytes], count: int) -> None:
        """Send ``count`` commands, ``packed`` in Redis's protocol, in one write and read every
        answer; raise on the first error."""
        connection = self._connection
        if connection is None:
            connection = self._connection = self._pool.get_connection()
        self.drain(wait=True)
        self._write(connection, packed, count, check_health=True)
        self.drain(wait=True)

    def write(self, packed: list[bytes], count: int) -> None:
        """Write ``count`` packed commands on the open connection without reading the answers."""
        connection = self._connection
        if connection is None or not connected(connection):
            msg = "the connection is not open; send() opens it"
            raise ConnectionError(msg)
        self._write(connection, packed, count, check_health=False)

    def _write(
        self,
        connection: redis.connection.ConnectionInterface,
        packed: list[bytes],
        count: int,
        *,
        check_health: bool,
    ) -> None:
        connection.send_packed_command(  # type: ignore[no-untyped-call]
            packed, check_health=check_health
        )
        self.unanswered += count

    def drain(self, *, wait: bool) -> None:
        """Read the answers that arrived, or all of them with ``wait``; raise on an error."""
        connection = self._connection
        while self.unanswered and connection is not None:
            if not connected(connection):  # redis-py dropped it after an error
                msg = "the connection was lost with answers unread"
                raise ConnectionError(msg)
            if not wait and not connection.can_read(timeout=0):
                break
            # An error answer raises, and its write stays unanswered: counted as lost.
            connection.read_response()
            self.unanswered -= 1

    def close(self) -> None:
        """Close the connection."""
        self._connection = None
        self.unanswered = 0
        self._pool.disconnect()


class CommandSender:
    """A :class:`~sa_signals.fanout.transport.Writer` that sends one command per payload, each
    batch in one write: one round trip. The command is ``arguments`` followed by the payload,
    packed once."""

    def __init__(self, server: Server, arguments: tuple[Argument, ...]) -> None:
        self._commands = server.commands("publisher")
        self._head = _head(arguments, len(arguments) + 1)

    def _packed(self, payloads: c.Sequence[bytes]) -> list[bytes]:
        head = self._head
        return [b"".join(b"%s$%d\r\n%s\r\n" % (head, len(p), p) for p in payloads)]

    @property
    def unanswered(self) -> int:
        """Payloads written whose answer was not read yet."""
        return self._commands.unanswered

    def send(self, payloads: c.Sequence[bytes], /) -> None:
        """Send ``payloads`` in order and read the answers."""
        self._commands.run(self._packed(payloads), len(payloads))

    def write(self, payloads: c.Sequence[bytes], /) -> None:
        """Write ``payloads`` on the open connection, leaving the answers for :meth:`drain`."""
        self._commands.write(self._packed(payloads), len(payloads))

    def drain(self, *, wait: bool) -> None:
        """Read the answers that arrived (all of them if ``wait``)."""
        self._commands.drain(wait=wait)

    def close(self) -> None:
        """Close the connection."""
        self._commands.close()
