"""Cache invalidation across processes: committed change sets fanned out to every instance.

``publish(target, transport)`` sends what each transaction of ``target`` committed, after the
COMMIT; ``listen(transport, models=...)`` (or ``listen_async``) in every process re-sends it on
``signals.remote_committed``, and sends ``signals.remote_gap`` whenever something may have been
missed. The transports live in their own modules, each behind its extra:
``sa_signals.fanout.postgresql.PostgresNotify``, ``sa_signals.fanout.redis_pubsub.RedisPubSub``
and ``sa_signals.fanout.redis_streams.RedisStream``. See ``docs/fanout.md``.
"""

from __future__ import annotations

from .generations import Generations
from .generations import Token
from .listen import AsyncListener
from .listen import listen
from .listen import listen_async
from .listen import Listener
from .listen import ListenerCounters
from .listen import RemoteChange
from .message import Message
from .message import MessageError
from .message import Record
from .names import table_name
from .publish import publish
from .publish import Publisher
from .publish import PublisherCounters
from .transport import Missed
from .transport import Sender
from .transport import Subscription
from .transport import Transport
from .transport import Writer

__all__ = [
    "AsyncListener",
    "Generations",
    "Listener",
    "ListenerCounters",
    "Message",
    "MessageError",
    "Missed",
    "Publisher",
    "PublisherCounters",
    "Record",
    "RemoteChange",
    "Sender",
    "Subscription",
    "Token",
    "Transport",
    "Writer",
    "listen",
    "listen_async",
    "publish",
    "table_name",
]
