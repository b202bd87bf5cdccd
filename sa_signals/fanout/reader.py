"""The reading thread of a listener: keeps a subscription open and its socket drained.

Reading never waits for receivers: payloads go to a bounded inbox that the listener's
dispatcher (a thread, or an asyncio task) empties. A slow receiver therefore cannot make the
server drop the connection or hold back its notification queue; when the inbox overflows, what
it held is replaced by one :class:`~sa_signals.fanout.transport.Missed`.
"""

from __future__ import annotations

import collections
import collections.abc as c
import logging
import threading
import typing as t

from .transport import Missed

if t.TYPE_CHECKING:
    from .transport import Subscription
    from .transport import Transport

logger = logging.getLogger("sa_signals.fanout")

READ_TIMEOUT: t.Final = 0.1
"""Seconds one read waits for a message: how soon a stop is noticed."""

BACKOFF: t.Final = (0.05, 2.0)
"""Seconds between attempts to open a subscription: the first wait, the longest."""


class Reader:
    """Opens ``transport``'s subscription on a thread and keeps it open until :meth:`stop`."""

    def __init__(
        self, transport: Transport, *, max_queued: int, notify: c.Callable[[], None]
    ) -> None:
        self.transport = transport
        self.inbox: collections.deque[bytes | Missed] = collections.deque()
        self.ready = threading.Event()
        """Set once the first subscription is open."""
        self.received = 0
        self.connects = 0
        self.disconnects = 0
        self.overflows = 0
        self._max_queued = max_queued
        self._notify = notify
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="sa_signals fan-out reader", daemon=True
        )

    def start(self) -> None:
        """Start the reading thread."""
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Close the subscription and end the thread, waiting at most ``timeout`` seconds."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        subscription = self.transport.subscribe()
        backoff = BACKOFF[0]
        failures = 0
        while not self._stop.is_set():
            try:
                resumed = subscription.open()
            except Exception:
                failures += 1
                logger.log(
                    logging.ERROR if failures == 1 else logging.WARNING,
                    "a fan-out listener could not subscribe through %r; retrying",
                    self.transport,
                    exc_info=failures == 1,
                )
                _close(subscription)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF[1])
                continue
            if not resumed:
                self._push([Missed("subscribed" if self.connects == 0 else "reconnected")])
            self.connects += 1
            failures = 0
            backoff = BACKOFF[0]
            self.ready.set()
            try:
                while not self._stop.is_set():
                    items = subscription.read(READ_TIMEOUT)
                    if items:
                        self._push(items)
            except Exception:
                self.disconnects += 1
                logger.warning(
                    "a fan-out listener lost its subscription through %r; reconnecting",
                    self.transport,
                    exc_info=True,
                )
            _close(subscription)
        _close(subscription)

    def _push(self, items: c.Sequence[bytes | Missed]) -> None:
        inbox = self.inbox
        self.received += sum(not isinstance(item, Missed) for item in items)
        if len(inbox) + len(items) > self._max_queued:
            # What the inbox held is worthless next to a gap: replace it by one.
            self.overflows += 1
            inbox.clear()
            inbox.append(Missed(f"the listener's queue of {self._max_queued} overflowed"))
        else:
            inbox.extend(items)
        self._notify()


def _close(subscription: Subscription) -> None:
    try:
        subscription.close()
    except Exception:
        logger.exception("closing the fan-out subscription %r failed", subscription)
