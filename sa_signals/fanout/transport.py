"""What a fan-out transport provides: a sender for publishers, a subscription for listeners.

The built-in transports are :class:`~sa_signals.fanout.postgresql.PostgresNotify`,
:class:`~sa_signals.fanout.redis_pubsub.RedisPubSub` and
:class:`~sa_signals.fanout.redis_streams.RedisStream`. Any object with this shape works too.
"""

from __future__ import annotations

import collections.abc as c
import dataclasses
import typing as t


@dataclasses.dataclass(frozen=True)
class Missed:
    """Put in a subscription's output where messages may have been lost."""

    reason: str
    """Why, for the ``remote_gap`` receivers and the logs."""


class Sender(t.Protocol):
    """One publisher's connection: used from one thread, never on a committing thread.

    In a child forked from the publishing process the sender is dropped without ``close()``:
    when freed in another process, it must leave its connection alone.
    """

    def send(self, payloads: c.Sequence[bytes], /) -> None:
        """Send ``payloads`` in order, or raise. Must return or raise within bounded time."""

    def close(self) -> None:
        """Release the connection. Must not raise."""


@t.runtime_checkable
class Writer(Sender, t.Protocol):
    """A sender that can also write without waiting for the server's answers.

    A publisher whose sender is a writer writes each change set from the committing thread,
    right after the COMMIT, when nothing is queued before it: no hand-off to its thread, whose
    wake-ups cost a busy process more than the write itself. Its thread reads the answers.
    """

    @property
    def unanswered(self) -> int:
        """How many payloads written have no answer yet."""

    def write(self, payloads: c.Sequence[bytes], /) -> None:
        """Write ``payloads`` without waiting for answers, or raise; never connect or block."""

    def drain(self, *, wait: bool) -> None:
        """Read the answers that arrived (every one, if ``wait``); raise on an error answer or
        a lost connection."""


class Subscription(t.Protocol):
    """One listener's connection: opened, read and closed from one thread."""

    def open(self) -> bool:
        """Connect and subscribe, or raise.

        Return True only if nothing published since the previous :meth:`close` can have been
        missed (a replayable transport that resumed where it stopped); False otherwise, which
        the listener reports as a gap.
        """

    def read(self, timeout: float, /) -> c.Sequence[bytes | Missed]:
        """Return the payloads received within ``timeout`` seconds (maybe none), or raise.

        A :class:`Missed` in the output stands for messages lost at that point. Raising means
        the connection is lost: the listener closes the subscription and opens it again.
        """

    def close(self) -> None:
        """Disconnect. Must not raise."""


class Transport(t.Protocol):
    """A way to move fan-out messages between processes."""

    @property
    def max_bytes(self) -> int:
        """The largest payload the transport carries."""

    def sender(self) -> Sender:
        """Return a new, not yet connected sender (it connects on first use)."""

    def subscribe(self) -> Subscription:
        """Return a new, not yet opened subscription."""
