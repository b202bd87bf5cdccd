"""``publish()``: send what each transaction committed to the other processes, after the COMMIT.

A receiver of ``signals.models_committed`` appends each change set to an in-memory queue that a
thread of the publisher encodes and sends; that thread also sends heartbeats and retries a
failed transport. With ``publish(write=True)`` and a sender that is a
:class:`~sa_signals.fanout.transport.Writer` (the Redis transports) with an open connection,
the committing thread encodes the message and writes it itself when nothing is queued before
it, without waiting for the answer, which the publisher's thread reads later. A commit never
waits for the network, and a transport that is down costs it nothing: the failure is logged,
counted, and announced to the listeners by the next message that gets through.
"""

from __future__ import annotations

import atexit
import collections
import collections.abc as c
import dataclasses
import logging
import math
import sys
import threading
import time
import typing as t
import weakref

import sqlalchemy.orm as sa_orm

from .. import signals
from . import _process
from .message import construct
from .message import encode
from .message import Message
from .message import records_of
from .names import cached
from .names import Namer
from .names import table_name
from .transport import Writer

if t.TYPE_CHECKING:
    from ..typing import InstallTarget
    from .transport import Sender
    from .transport import Transport

logger = logging.getLogger("sa_signals.fanout")

MIN_BYTES: t.Final = 512
"""The smallest ``max_bytes`` a publisher accepts: room for a message that says "anything"."""

MAX_BATCH: t.Final = 256
"""Messages sent in one call of the transport, at most."""

READ_ANSWERS: t.Final = 0.02
"""Seconds between two reads of a writer's answers while some are due."""

WAKE_AT: t.Final = 64
"""Unanswered writes at which a committing thread stops writing and wakes the publisher's
thread to wait for the answers: so few bytes in flight never fill a socket's buffer, so a
write never blocks."""

STALL: t.Final = 1.0
"""Seconds without an answer to a write after which the publisher's thread waits for it (up to
the transport's timeout, then the connection counts as lost)."""

BACKOFF: t.Final = (0.05, 5.0)
"""Seconds a publisher waits before it tries a failed transport again: the first wait, the
longest (doubling in between)."""

_live: weakref.WeakSet[Publisher] = weakref.WeakSet()


class PublisherCounters(t.NamedTuple):
    """What a publisher did since it started (or since the fork that made this process)."""

    published: int
    """Change sets sent."""
    failed: int
    """Messages lost to a failed send (heartbeats included)."""
    dropped: int
    """Change sets dropped because the queue was full."""
    degraded: int
    """Change sets sent without some or all of their identities, to fit the size limit."""
    heartbeats: int
    """Messages sent without changes: heartbeats, failure notices, the last one."""
    pending: int
    """Change sets waiting to be sent."""


class Publisher:
    """The handle :func:`publish` returns: counters, :meth:`flush` and :meth:`stop`.

    Also a context manager that stops it on exit. Publishers still running when the
    interpreter exits are stopped then (so listeners see their last message), within a second.
    """

    def __init__(
        self,
        session_class: c.Callable[[], type[sa_orm.Session]],
        transport: Transport,
        *,
        name: Namer,
        max_bytes: int,
        max_pending: int,
        heartbeat: float,
        write: bool = False,
    ) -> None:
        self._session_class = session_class
        self._transport = transport
        self._name = cached(name)
        self._max_bytes = max_bytes
        self._max_pending = max_pending
        self._heartbeat = heartbeat
        self._write_enabled = write
        self._stopped = False
        self._reset()
        signals.models_committed.connect(self._committed, weak=False)
        _live.add(self)
        _process.on_fork(self)

    def _reset(self) -> None:
        self.id = _process.new_publisher_id()
        """This publisher's id in the messages: unique per process and handle."""
        self._pending: collections.deque[tuple[float, list[t.Any] | None]] = collections.deque()
        self._wake = threading.Event()
        self._asleep = False
        self._idle = threading.Condition()
        self._sending = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._drop_lock = threading.Lock()
        self._sender: Sender | None = None
        self._writer: Writer | None = None
        self._io = threading.Lock()
        """Held while messages are numbered and sent, so that they leave in number order."""
        self._flushing = 0
        self._last_sent = 0.0
        self._writes = 0
        """Change sets written from committing threads."""
        self._polling = False
        """Whether the thread sleeps only until its next look at the answers."""
        self._stalled_since: float | None = None
        self._sequence = 0
        self._lost = 0
        self._dropped = 0
        self._dropped_seen = 0
        self._published = 0
        self._failed = 0
        self._degraded = 0
        self._heartbeats = 0

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "publishing"
        return f"<Publisher {self.id} {state} to {self._transport!r}>"

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def counters(self) -> PublisherCounters:
        """What this publisher did so far."""
        return PublisherCounters(
            published=self._published,
            failed=self._failed,
            dropped=self._dropped,
            degraded=self._degraded,
            heartbeats=self._heartbeats,
            pending=len(self._pending),
        )

    def _committed(self, sender: t.Any, /, *, changes: list[t.Any], **kwargs: t.Any) -> None:
        # Runs on the committing thread, after its COMMIT: nothing here may block or raise.
        session = getattr(sender, "sync_session", sender)  # an AsyncSession's own Session
        if not isinstance(session, self._session_class()):
            return
        writer = self._writer
        if (
            writer is not None
            and not self._pending
            and writer.unanswered < WAKE_AT
            and self._io.acquire(blocking=False)
        ):
            try:
                if writer is self._writer and not self._pending:
                    self._write(writer, changes)
                    return
            finally:
                self._io.release()
        if len(self._pending) >= self._max_pending:
            with self._drop_lock:
                self._dropped += 1
            return
        self._pending.append((time.time(), changes))
        if self._thread is None:
            self._start()
        if self._asleep:  # a busy thread takes it anyway: no wake-up call
            self._wake.set()

    def _write(self, writer: Writer, changes: list[t.Any]) -> None:
        """Write one change set from the committing thread; ``_io`` is held."""
        (message,) = self._messages([(time.time(), changes)], end=False)
        payload, degraded = encode(message, self._max_bytes)
        try:
            writer.write([payload])
        except Exception:
            self._lose(1)
            if self._asleep:
                self._wake.set()
            return
        self._lost = 0
        self._published += 1
        self._degraded += degraded
        self._last_sent = time.monotonic()
        self._writes += 1
        # The thread reads the answers: it polls while writes come, and is woken by the first
        # write after a pause, or to wait for answers when too many are due (change sets are
        # queued meanwhile).
        if self._asleep and (not self._polling or writer.unanswered >= WAKE_AT):
            self._wake.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name=f"sa_signals fan-out publisher {self.id}", daemon=True
                )
                self._thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every change set so far was sent and answered (or failed); False on
        timeout."""
        with self._idle:
            self._flushing += 1
        try:
            self._wake.set()
            with self._idle:
                return self._idle.wait_for(self._flushed, timeout)
        finally:
            with self._idle:
                self._flushing -= 1

    def _flushed(self) -> bool:
        writer = self._writer
        unanswered = 0 if writer is None else writer.unanswered
        return not (self._pending or self._sending or unanswered)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop publishing: send what is queued and a last message, within ``timeout`` seconds.

        Commits made after this are not published. Stopping twice does nothing.
        """
        if self._stopped:
            return
        self._stopped = True
        signals.models_committed.disconnect(self._committed)
        _live.discard(self)
        with self._start_lock:
            thread = self._thread
        if thread is None:  # never published anything: no listener knows this publisher
            return
        self._stopping = True
        self._wake.set()
        thread.join(timeout)
        if thread.is_alive():
            logger.warning(
                "fan-out publisher %s did not finish sending within %s s; %d change sets are"
                " abandoned",
                self.id,
                timeout,
                len(self._pending),
            )

    def after_fork(self) -> None:
        """Start afresh in a forked child: a new id, an empty queue, no inherited connection.

        The parent's sender is dropped, never closed: closing it would end the parent's
        session on the server too (psycopg and redis-py leave a connection made by another
        process alone when they free it).
        """
        self._reset()

    def _run(self) -> None:
        heartbeat = self._heartbeat or math.inf
        self._last_sent = time.monotonic()
        retry_at = 0.0
        backoff = BACKOFF[0]
        timeout: float | None = heartbeat
        writes = self._writes
        while True:
            if timeout != 0.0:
                # The flag goes up before the last look at the queue: a change set appended
                # before the look is sent now, one appended after it sees the flag and wakes
                # this thread (the committing threads call set() only then).
                self._asleep = True
                due = self._pending and retry_at <= time.monotonic()
                # A write after the decision to sleep long: poll instead.
                missed = not self._polling and self._writes != writes
                if not (due or self._stopping or missed):
                    self._wake.wait(None if timeout == math.inf else timeout)
                self._asleep = False
                self._wake.clear()
            stopping = self._stopping
            now = time.monotonic()
            if now < retry_at and not stopping:
                timeout = retry_at - now
                continue
            with self._idle:
                self._sending = True
            try:
                ok = self._turn(now, heartbeat, stopping)
            finally:
                with self._idle:
                    self._sending = False
                    self._idle.notify_all()
            if ok:
                retry_at, backoff = 0.0, BACKOFF[0]
            else:
                retry_at, backoff = now + backoff, min(backoff * 2, BACKOFF[1])
            if stopping and (not self._pending or not ok):
                break
            writer = self._writer
            # Poll for answers while writes come or answers are due; sleep long once they stop.
            self._polling = writer is not None and (
                bool(writer.unanswered) or self._writes != writes
            )
            writes = self._writes
            if self._pending:
                timeout = 0.0
            elif self._polling:
                timeout = READ_ANSWERS
            else:
                timeout = min(self._last_sent + heartbeat, retry_at or math.inf) - now
        with self._io:
            self._close_sender()
        if self._pending:
            logger.error(
                "fan-out publisher %s stopped with %d change sets unsent",
                self.id,
                len(self._pending),
            )

    def _turn(self, now: float, heartbeat: float, stopping: bool) -> bool:
        """Read the writes' answers, then send what is queued, a notice or a heartbeat."""
        with self._io:
            writer = self._writer
            if writer is not None and writer.unanswered:
                try:
                    self._read_answers(writer, now, stopping)
                except Exception:
                    self._lose(0)
                    return False
            batch = [self._pending.popleft() for _ in range(min(MAX_BATCH, len(self._pending)))]
            if (
                batch
                or self._lost
                or self._dropped > self._dropped_seen
                or stopping
                or now >= self._last_sent + heartbeat
            ):
                return self._send(batch, end=stopping and not self._pending)
            return True

    def _messages(self, batch: list[tuple[float, list[t.Any] | None]], end: bool) -> list[Message]:
        dropped = self._dropped - self._dropped_seen
        self._dropped_seen += dropped
        self._sequence += dropped  # a dropped change set takes its number: listeners see a gap
        self._lost += dropped
        messages = []
        lost = self._lost
        for at, changes in batch or [(time.time(), None)]:
            self._sequence += 1
            messages.append(
                construct(
                    Message,
                    publisher=self.id,
                    sequence=self._sequence,
                    lost=lost,
                    at=at,
                    heartbeat=self._heartbeat,
                    models={} if changes is None else records_of(changes, self._name),
                    end=False,
                )
            )
            lost = 0
        if end:
            messages[-1] = dataclasses.replace(messages[-1], end=True)
        return messages

    def _read_answers(self, writer: Writer, now: float, stopping: bool) -> None:
        """Read the answers that arrived; wait for all of them when asked to flush or stop,
        when too many are due, or when none came for :data:`STALL` seconds."""
        due = writer.unanswered
        stalled = self._stalled_since is not None and now - self._stalled_since > STALL
        writer.drain(wait=self._flushing > 0 or stopping or due >= WAKE_AT or stalled)
        if not writer.unanswered or writer.unanswered < due:
            self._stalled_since = None
        elif self._stalled_since is None:
            self._stalled_since = now

    def _send(self, batch: list[tuple[float, list[t.Any] | None]], end: bool) -> bool:
        messages = self._messages(batch, end)
        payloads = []
        degraded = 0
        for message in messages:
            payload, was_degraded = encode(message, self._max_bytes)
            payloads.append(payload)
            degraded += was_degraded
        try:
            if self._sender is None:
                self._sender = self._transport.sender()
            self._sender.send(payloads)
        except Exception:
            self._lose(len(messages))
            return False
        if self._lost:
            logger.info(
                "fan-out publisher %s sends again after losing %d messages", self.id, self._lost
            )
        self._lost = 0
        self._published += len(batch)
        self._heartbeats += len(messages) - len(batch)
        self._degraded += degraded
        self._last_sent = time.monotonic()
        if self._write_enabled and isinstance(self._sender, Writer):
            self._writer = self._sender
        return True

    def _lose(self, count: int) -> None:
        """Count ``count`` messages, and the writes still unanswered, as lost; drop the sender.

        The next message that gets through tells the listeners. Called with ``_io`` held.
        """
        writer = self._writer
        count += 0 if writer is None else writer.unanswered
        first = self._lost == 0
        self._lost += count
        self._failed += count
        self._close_sender()
        logger.log(
            logging.ERROR if first else logging.WARNING,
            "fan-out publisher %s could not send %d messages through %r; listeners will see a gap",
            self.id,
            count,
            self._transport,
            exc_info=first,
        )

    def _close_sender(self) -> None:
        sender, self._sender, self._writer = self._sender, None, None
        if sender is not None:
            try:
                sender.close()
            except Exception:
                logger.exception("closing the fan-out sender %r failed", sender)


def publish(
    target: InstallTarget,
    transport: Transport,
    /,
    *,
    name: Namer = table_name,
    max_bytes: int = 65536,
    max_pending: int = 10000,
    heartbeat: float = 10.0,
    write: bool = False,
) -> Publisher:
    """Send one message per transaction of ``target``'s sessions that committed changes.

    ``target`` is what :func:`sa_signals.install` takes, and must be installed. Each message
    lists per model (named by ``name``, the table name by default) the operations, identities
    and changed field names of the rows the transaction committed, deduplicated. A message
    larger than ``max_bytes`` (or than the transport carries) loses identities until it fits:
    the listeners then learn which tables changed. At most ``max_pending`` change sets wait for
    the transport; more are dropped and announced as lost. Every ``heartbeat`` seconds without a
    message a heartbeat is sent (0: none), so that listeners notice a publisher that vanished.

    Commits made by commit-time work (an ``on_commit`` callback's distinct session) are
    published too, as every commit that sends ``models_committed``. A commit never waits for the
    network: the publisher's thread sends the messages. With ``write=True`` and a transport
    whose sender is a :class:`~sa_signals.fanout.transport.Writer` (the Redis transports), the
    committing thread writes each message itself when the connection is open and nothing is
    queued, without waiting for the answer: no hand-off, a lower median latency, but the
    committing thread pays the write (see ``docs/fanout.md``).
    """
    session_class = _session_class_of(target)
    limit = min(max_bytes, transport.max_bytes)
    if limit < MIN_BYTES:
        msg = (
            f"publish() needs max_bytes of at least {MIN_BYTES}, got {limit}; raise max_bytes"
            " or use a transport that carries larger messages."
        )
        raise ValueError(msg)
    if max_pending < 1:
        msg = f"publish() needs max_pending of at least 1, got {max_pending}."
        raise ValueError(msg)
    if not 0 <= heartbeat < math.inf:
        msg = f"publish() needs a heartbeat of 0 (none) or more seconds, got {heartbeat}."
        raise ValueError(msg)
    return Publisher(
        session_class,
        transport,
        name=name,
        max_bytes=limit,
        max_pending=max_pending,
        heartbeat=heartbeat,
        write=write,
    )


def _session_class_of(target: object) -> c.Callable[[], type[sa_orm.Session]]:
    """Return how to find the session class of ``target``'s sessions (async: at each commit,
    since ``install()`` gives an ``async_sessionmaker`` its own class)."""
    if isinstance(target, sa_orm.scoped_session):
        target = target.session_factory
    if isinstance(target, sa_orm.sessionmaker):
        session_class: type[sa_orm.Session] = target.class_
        return lambda: session_class
    if isinstance(target, type) and issubclass(target, sa_orm.Session):
        given: type[sa_orm.Session] = target
        return lambda: given
    asyncio_api = sys.modules.get("sqlalchemy.ext.asyncio")
    if asyncio_api is not None:
        if isinstance(target, asyncio_api.async_scoped_session):
            target = target.session_factory
        if isinstance(target, asyncio_api.async_sessionmaker):
            maker = target

            def installed_class() -> type[sa_orm.Session]:
                # install() gives the async_sessionmaker a class of its own.
                found: type[sa_orm.Session] = (
                    maker.kw.get("sync_session_class") or maker.class_.sync_session_class
                )
                return found

            return installed_class
    msg = (
        "publish() takes what sa_signals.install() takes: a scoped_session, a sessionmaker, a"
        f" Session subclass, an async_scoped_session or an async_sessionmaker, got {target!r}."
    )
    raise TypeError(msg)


@atexit.register
def _stop_all() -> None:
    for publisher in list(_live):
        publisher.stop(timeout=1.0)
