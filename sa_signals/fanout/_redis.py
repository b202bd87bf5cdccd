"""Redis clients for the fan-out transports: bounded timeouts, no hidden retries."""

from __future__ import annotations

import collections.abc as c
import typing as t

try:
    import redis
    import redis.backoff
    import redis.connection
    import redis.retry
except ImportError as exc:  # pragma: no cover - depends on the environment
    msg = 'the Redis fan-out transports need redis-py: pip install "sa-signals[redis]"'
    raise ImportError(msg) from exc

DEFAULT_MAX_BYTES: t.Final = 1 << 20
"""The default payload limit of the Redis transports (Redis itself takes up to 512 MiB)."""


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


class Commands:
    """One connection that sends commands in batches: a pipeline without redis-py's per-call
    machinery, which costs a publisher three times the CPU of the commands themselves."""

    def __init__(self, url: str, timeout: float, name: str) -> None:
        self._pool = redis.ConnectionPool.from_url(url, **_options(timeout, name))
        self._connection: redis.connection.ConnectionInterface | None = None

    def run(self, commands: c.Sequence[tuple[t.Any, ...]]) -> None:
        """Send ``commands`` in one write and read every reply; raise on the first error."""
        connection = self._connection
        if connection is None:
            connection = self._connection = self._pool.get_connection()
        packed = connection.pack_commands(commands)  # type: ignore[no-untyped-call]
        connection.send_packed_command(packed)  # type: ignore[no-untyped-call]
        for _ in commands:
            connection.read_response()

    def close(self) -> None:
        """Close the connection."""
        self._connection = None
        self._pool.disconnect()
