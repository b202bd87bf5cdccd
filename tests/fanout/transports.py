"""The transports of the fan-out tests, without pytest: the test processes import this too."""

from __future__ import annotations

import os
import typing as t

from sa_signals.fanout import Transport


def redis_url() -> str:
    return os.environ["SA_SIGNALS_TEST_REDIS_URL"]


def postgresql_url() -> str:
    return os.environ["SA_SIGNALS_TEST_POSTGRESQL_URL"]


def make_transport(kind: str, name: str, url: str | None = None, **options: t.Any) -> Transport:
    """A transport of ``kind`` on channel or stream ``name`` (on ``url``, default the test's)."""
    if kind == "postgresql":
        from sa_signals.fanout.postgresql import PostgresNotify

        return PostgresNotify(url or postgresql_url(), name.replace("-", "_"), **options)
    if kind == "redis-pubsub":
        from sa_signals.fanout.redis_pubsub import RedisPubSub

        return RedisPubSub(url or redis_url(), name, **options)
    from sa_signals.fanout.redis_streams import RedisStream

    return RedisStream(url or redis_url(), name, **options)
