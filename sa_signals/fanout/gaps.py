"""Gap detection: which messages a listener delivers, and when it may have missed some.

Every publisher numbers its messages. A listener remembers the last number of each publisher it
heard and reports a gap when:

- the subscription says so (a :class:`~sa_signals.fanout.transport.Missed`): the first
  subscription, a reconnect, an overflowed queue, a trimmed stream;
- a publisher skips numbers (a message lost on the way);
- a message says the publisher failed to send the ones before it (``lost``), also from a
  publisher heard for the first time;
- a publisher falls silent for three of its heartbeat intervals without having said goodbye
  (killed between a COMMIT and the send);
- a payload cannot be read (another version), or a message was too large to say what changed.

After a subscription-level gap the numbers heard so far mean nothing any more: each publisher's
next message starts afresh.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import typing as t

from . import _process
from .message import decode
from .message import Message
from .message import MessageError
from .transport import Missed

logger = logging.getLogger("sa_signals.fanout")

SILENCE: t.Final = 3.0
"""Heartbeat intervals without a message after which a publisher counts as vanished."""


@dataclasses.dataclass(frozen=True)
class Gap:
    """Messages may have been missed: every cache fed by the listener must be flushed."""

    reason: str


class Tracker:
    """Turns received payloads into messages to deliver and gaps to report. Not thread-safe."""

    def __init__(self, *, own: bool) -> None:
        self._own = own
        self._last: dict[str, int] = {}
        self._deadline: dict[str, float] = {}
        self.duplicates = 0
        """Messages heard twice (a replay) and dropped."""

    def accept(self, item: bytes | Missed, now: float) -> list[Gap | Message]:
        """Return what to report for ``item``, received at ``now`` (``time.monotonic()``)."""
        if isinstance(item, Missed):
            self._last.clear()
            self._deadline.clear()
            return [Gap(item.reason)]
        try:
            message = decode(item)
        except MessageError as exc:
            logger.error("a fan-out message could not be read: %s", exc)
            return [Gap(f"unreadable message: {exc}")]
        publisher = message.publisher
        if not self._own and _process.is_own(publisher):
            return []
        out: list[Gap | Message] = []
        last = self._last.get(publisher)
        if last is not None and message.sequence <= last:
            self.duplicates += 1
            return []
        if message.lost:
            out.append(Gap(f"publisher {publisher} failed to send {message.lost} messages"))
        elif last is not None and message.sequence != last + 1:
            missed = message.sequence - last - 1
            out.append(Gap(f"{missed} messages of publisher {publisher} were missed"))
        if message.end:
            self._last.pop(publisher, None)
            self._deadline.pop(publisher, None)
        else:
            self._last[publisher] = message.sequence
            beat = message.heartbeat
            self._deadline[publisher] = now + SILENCE * beat if beat > 0 else math.inf
        if message.models is None:
            out.append(
                Gap(f"a message of publisher {publisher} was too large to say what changed")
            )
        elif message.models:
            out.append(message)
        return out

    def expire(self, now: float) -> list[Gap]:
        """Return a gap for each publisher silent past its deadline, and forget it."""
        gone = [publisher for publisher, deadline in self._deadline.items() if deadline < now]
        for publisher in gone:
            del self._deadline[publisher]
            del self._last[publisher]
        return [Gap(f"publisher {publisher} fell silent") for publisher in gone]
