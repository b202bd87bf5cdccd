"""Redis clients for the fan-out transports: bounded timeouts, no hidden retries."""

from __future__ import annotations

import typing as t

try:
    import redis
    import redis.backoff
    import redis.retry
except ImportError as exc:  # pragma: no cover - depends on the environment
    msg = 'the Redis fan-out transports need redis-py: pip install "sa-signals[redis]"'
    raise ImportError(msg) from exc

DEFAULT_MAX_BYTES: t.Final = 1 << 20
"""The default payload limit of the Redis transports (Redis itself takes up to 512 MiB)."""


def client(url: str, timeout: float, name: str) -> redis.Redis:
    """Return a client of ``url`` that gives up after ``timeout`` seconds and never retries.

    Its connections are named ``name`` (``CLIENT LIST`` shows it).

    redis-py retries a failed command on a new connection by default, which would resubscribe a
    listener behind its back and lose what was published meanwhile without telling anyone: the
    transports reconnect themselves, and report the gap.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        socket_keepalive=True,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
        health_check_interval=max(1, round(timeout)),
        client_name=name,
    )


def close(client: redis.Redis | None) -> None:
    """Close ``client``'s connections, if there is a client."""
    if client is not None:
        client.close()
