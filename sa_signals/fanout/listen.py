"""``listen()`` and ``listen_async()``: re-send other processes' commits on ``remote_committed``.

A listener reads on a thread of its own (:mod:`~sa_signals.fanout.reader`) and delivers on a
dispatcher: a second thread for :func:`listen`, an asyncio task for :func:`listen_async`, where
coroutine receivers are awaited. Whatever it cannot vouch for becomes ``remote_gap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import queue
import threading
import time
import typing as t

from .. import signals
from ..exceptions import CoroutineMisuseError
from .gaps import Gap
from .gaps import Tracker
from .message import construct
from .message import Identity
from .message import Message
from .message import Operation
from .names import Models
from .names import Namer
from .names import Resolver
from .names import table_name
from .reader import Reader

if t.TYPE_CHECKING:
    from .transport import Transport

logger = logging.getLogger("sa_signals.fanout")

EXPIRY_CHECK: t.Final = 0.5
"""Seconds between two looks for publishers that fell silent."""


@dataclasses.dataclass(frozen=True)
class RemoteChange:
    """One row another process committed, as ``remote_committed`` carries it."""

    operation: Operation
    """``"insert"``, ``"update"`` or ``"delete"``."""
    model: type[t.Any] | None
    """The mapped class; None when no mapped class of this process has :attr:`name`."""
    name: str
    """The stable name the publisher gave the model (the table name by default)."""
    identity: Identity
    """The primary key as a tuple; None when the rows are unknown (a bulk statement whose rows
    the database did not return, or a message too large to list them): the whole table may have
    changed."""
    fields: frozenset[str]
    """The attribute keys that changed (every column attribute for an insert or a delete)."""


class ListenerCounters(t.NamedTuple):
    """What a listener did since it started."""

    received: int
    """Payloads read from the transport."""
    delivered: int
    """Messages sent on ``remote_committed`` (one send per model in each)."""
    gaps: int
    """``remote_gap`` sends."""
    duplicates: int
    """Messages heard twice (a replay) and dropped."""
    receiver_errors: int
    """Exceptions raised by receivers (each logged)."""
    connects: int
    """Subscriptions opened."""
    disconnects: int
    """Subscriptions lost."""
    overflows: int
    """Times the queue between reading and delivering overflowed."""


class _Listening:
    """What both listeners share: reading, gap tracking, and what each message becomes."""

    def __init__(
        self, transport: Transport, models: Models, name: Namer, own: bool, max_queued: int
    ) -> None:
        if max_queued < 1:
            msg = f"a listener needs max_queued of at least 1, got {max_queued}."
            raise ValueError(msg)
        self.transport = transport
        self._resolver = Resolver(models, name)
        self._tracker = Tracker(own=own)
        self._reader = Reader(transport, max_queued=max_queued, notify=self._notify)
        self._delivered = 0
        self._gaps = 0
        self._receiver_errors = 0
        self._stopping = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} on {self.transport!r}>"

    @property
    def counters(self) -> ListenerCounters:
        """What this listener did so far."""
        reader = self._reader
        return ListenerCounters(
            received=reader.received,
            delivered=self._delivered,
            gaps=self._gaps,
            duplicates=self._tracker.duplicates,
            receiver_errors=self._receiver_errors,
            connects=reader.connects,
            disconnects=reader.disconnects,
            overflows=reader.overflows,
        )

    def _notify(self) -> None:
        raise NotImplementedError

    def _take(self) -> list[tuple[t.Any, t.Any, dict[str, t.Any]]]:
        """Return the sends owed for what the inbox holds and for silent publishers."""
        inbox = self._reader.inbox
        sends: list[tuple[t.Any, t.Any, dict[str, t.Any]]] = []
        while inbox:
            item = inbox.popleft()
            for out in self._tracker.accept(item, time.monotonic()):
                sends.extend(self._sends(out))
        for gap in self._tracker.expire(time.monotonic()):
            sends.extend(self._sends(gap))
        return sends

    def _sends(self, out: Gap | Message) -> list[tuple[t.Any, t.Any, dict[str, t.Any]]]:
        if isinstance(out, Gap):
            self._gaps += 1
            level = logging.INFO if out.reason == "subscribed" else logging.WARNING
            logger.log(level, "fan-out gap on %r: %s", self.transport, out.reason)
            return [(signals.remote_gap, self, {"reason": out.reason})]
        self._delivered += 1
        assert out.models is not None
        sends = []
        resolver = self._resolver
        for name, records in out.models.items():
            model = resolver.resolve(name)
            changes = [
                construct(
                    RemoteChange,
                    operation=record.operation,
                    model=model,
                    name=name,
                    identity=(
                        None
                        if record.identity is None
                        else resolver.identity(model, record.identity)
                    ),
                    fields=record.fields,
                )
                for record in records
            ]
            sender = name if model is None else model
            sends.append((signals.remote_committed, sender, {"changes": changes, "message": out}))
        return sends

    def _failed(self, signal: t.Any, receiver: object, exc: Exception) -> None:
        self._receiver_errors += 1
        logger.error(
            "a receiver of %s, %r, failed on a fan-out message",
            signal.name,
            receiver,
            exc_info=exc,
        )


class Listener(_Listening):
    """The handle :func:`listen` returns: counters, :meth:`wait_ready` and :meth:`stop`.

    Receivers run on the listener's dispatcher thread, one message at a time, in order.
    """

    def __init__(
        self, transport: Transport, models: Models, name: Namer, own: bool, max_queued: int
    ) -> None:
        super().__init__(transport, models, name, own, max_queued)
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        """Wakes the dispatcher: the reader puts into it while the dispatcher waits, or may."""
        self._waiting = False
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="sa_signals fan-out dispatcher", daemon=True
        )
        self._dispatcher.start()
        self._reader.start()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the first subscription is open; False if ``timeout`` passed first."""
        return self._reader.ready.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the subscription and stop delivering, waiting at most ``timeout`` seconds."""
        self._reader.stop(timeout)
        self._stopping = True
        self._wake.put(None)
        if threading.current_thread() is not self._dispatcher:
            self._dispatcher.join(timeout)

    def _notify(self) -> None:
        # After the reader filled the inbox. A busy dispatcher looks at the inbox again before
        # it waits, so it needs no wake-up call.
        if self._waiting:
            self._wake.put(None)

    def _dispatch(self) -> None:
        inbox, wake = self._reader.inbox, self._wake
        while not self._stopping:
            # The flag goes up before the last look at the inbox: items pushed before the look
            # are taken now, those pushed after it see the flag and wake this thread. A wake-up
            # left over from an earlier wait costs one empty turn.
            self._waiting = True
            if not inbox and not self._stopping:
                with contextlib.suppress(queue.Empty):
                    wake.get(timeout=EXPIRY_CHECK)
            self._waiting = False
            for signal, sender, kwargs in self._take():
                self._send(signal, sender, kwargs)

    def _send(self, signal: t.Any, sender: t.Any, kwargs: dict[str, t.Any]) -> None:
        for receiver, is_coroutine in signal.receivers_in_order(sender):
            try:
                if is_coroutine:
                    msg = (
                        f"{receiver!r} is a coroutine function connected to {signal.name}, but"
                        " the listener runs on a thread; start it with listen_async()."
                    )
                    raise CoroutineMisuseError(msg)
                result = receiver(sender, **kwargs)
                if inspect.iscoroutine(result):
                    result.close()
                    msg = (
                        f"{receiver!r} returned a coroutine, but the listener runs on a thread;"
                        " start it with listen_async()."
                    )
                    raise CoroutineMisuseError(msg)
            except Exception as exc:
                self._failed(signal, receiver, exc)


class AsyncListener(_Listening):
    """The handle :func:`listen_async` returns: counters, :meth:`wait_ready` and :meth:`stop`.

    Receivers run in the event loop it was started in, one message at a time, in order;
    coroutine receivers are awaited.
    """

    def __init__(
        self, transport: Transport, models: Models, name: Namer, own: bool, max_queued: int
    ) -> None:
        super().__init__(transport, models, name, own, max_queued)
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._waiting = False
        self._tick: asyncio.TimerHandle | None = None
        self._task = self._loop.create_task(self._dispatch(), name="sa_signals fan-out listener")
        self._reader.start()

    async def __aenter__(self) -> AsyncListener:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the first subscription is open; False if ``timeout`` passed first."""
        return await asyncio.to_thread(self._reader.ready.wait, timeout)

    async def stop(self, timeout: float = 5.0) -> None:
        """Close the subscription and stop delivering, waiting at most ``timeout`` seconds."""
        await asyncio.to_thread(self._reader.stop, timeout)
        self._stopping = True
        self._wake.set()
        if self._tick is not None:
            self._tick.cancel()
        if asyncio.current_task() is not self._task:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)

    def _notify(self) -> None:
        # After the reader filled the inbox. A busy dispatcher looks at the inbox again before
        # it waits, so it needs no wake-up call (each one writes to the loop's self-pipe).
        try:
            if self._waiting:
                self._loop.call_soon_threadsafe(self._wake.set)
                return
        except RuntimeError:  # the loop was closed without stop(): nothing left to deliver to
            self._reader.stop(0)
            return
        if self._loop.is_closed():
            self._reader.stop(0)

    def _expiry_check(self) -> None:
        """Wake the dispatcher every :data:`EXPIRY_CHECK` seconds, for silent publishers."""
        self._wake.set()
        self._tick = self._loop.call_later(EXPIRY_CHECK, self._expiry_check)

    async def _dispatch(self) -> None:
        inbox, wake = self._reader.inbox, self._wake
        self._tick = self._loop.call_later(EXPIRY_CHECK, self._expiry_check)
        while not self._stopping:
            # As the threaded dispatcher: the flag goes up before the last look at the inbox.
            self._waiting = True
            if not inbox and not self._stopping:
                await wake.wait()
            self._waiting = False
            wake.clear()
            for signal, sender, kwargs in self._take():
                await self._send(signal, sender, kwargs)

    async def _send(self, signal: t.Any, sender: t.Any, kwargs: dict[str, t.Any]) -> None:
        for receiver, _ in signal.receivers_in_order(sender):
            try:
                result = receiver(sender, **kwargs)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self._failed(signal, receiver, exc)


def listen(
    transport: Transport,
    /,
    *,
    models: Models,
    name: Namer = table_name,
    own: bool = False,
    max_queued: int = 10000,
) -> Listener:
    """Start re-sending the messages of ``transport`` on ``signals.remote_committed``, on threads.

    Each model of a message is sent once, with sender the mapped class found among ``models``
    (a declarative base, a ``registry`` or mapped classes) by the stable ``name`` the publishers
    use, or the name itself when none has it; keywords ``changes`` (a list of
    :class:`RemoteChange`) and ``message``. Messages of this process's own publishers are left
    out unless ``own`` is true. Whenever messages may have been missed (the first subscription,
    a reconnect, a sequence gap, a publisher's failure or silence, more than ``max_queued``
    messages waiting for slow receivers), ``signals.remote_gap`` is sent instead: flush
    everything then.
    """
    return Listener(transport, models, name, own, max_queued)


def listen_async(
    transport: Transport,
    /,
    *,
    models: Models,
    name: Namer = table_name,
    own: bool = False,
    max_queued: int = 10000,
) -> AsyncListener:
    """Like :func:`listen`, delivering in the running event loop, where coroutine receivers are
    awaited. Call it from a coroutine; ``await listener.stop()`` before the loop closes."""
    return AsyncListener(transport, models, name, own, max_queued)
