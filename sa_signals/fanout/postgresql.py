"""PostgreSQL ``LISTEN`` / ``NOTIFY`` as a fan-out transport (needs psycopg 3).

The publisher sends its ``NOTIFY`` on a connection of its own, after the business transaction
committed, never inside it: a ``NOTIFY`` in the committing transaction serializes every commit
of the database on the notification queue's lock. Payloads must be shorter than 8000 bytes.
"""

from __future__ import annotations

import collections.abc as c
import typing as t

import sqlalchemy as sa

try:
    import psycopg
    import psycopg.sql
except ImportError as exc:  # pragma: no cover - depends on the environment
    msg = 'sa_signals.fanout.postgresql needs psycopg 3: pip install "sa-signals[postgresql]"'
    raise ImportError(msg) from exc

from .transport import Missed

MAX_PAYLOAD: t.Final = 7999
"""PostgreSQL refuses a ``NOTIFY`` payload of 8000 bytes or more."""

MAX_CHANNEL: t.Final = 63
"""PostgreSQL cuts longer identifiers, so a longer channel would never match its own name."""


class PostgresNotify:
    """Messages as ``NOTIFY`` on ``channel`` of the database at ``url``.

    ``url`` is a SQLAlchemy URL (its driver part is ignored: psycopg is used), a libpq
    connection string, or an ``Engine``. Connections are made by this transport, not taken from
    an engine's pool, with ``timeout`` seconds to connect and TCP timeouts that notice a dead
    server within a few seconds; ``pg_stat_activity`` shows them as ``sa_signals fan-out
    publisher <channel>`` and ``sa_signals fan-out listener <channel>``. Delivery is at most
    once; a listener reports a gap after it reconnects.
    """

    def __init__(
        self,
        url: str | sa.URL | sa.Engine,
        channel: str = "sa_signals",
        *,
        timeout: float = 2.0,
    ) -> None:
        if len(channel.encode()) > MAX_CHANNEL:
            msg = (
                f"the channel name {channel!r} is longer than PostgreSQL's {MAX_CHANNEL}-byte"
                " identifiers; use a shorter one."
            )
            raise ValueError(msg)
        if isinstance(url, sa.Engine):
            url = url.url
        if isinstance(url, str) and "://" not in url:
            self._conninfo = url  # a libpq key=value string
        else:
            parsed = sa.make_url(url)
            self._conninfo = parsed.set(drivername="postgresql").render_as_string(
                hide_password=False
            )
        self.channel = channel
        self._options: dict[str, t.Any] = {
            "autocommit": True,
            "connect_timeout": max(2, round(timeout)),
            "tcp_user_timeout": int(timeout * 1000),
            "keepalives": 1,
            "keepalives_idle": max(1, round(timeout)),
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "options": "-c standard_conforming_strings=on",
        }

    def __repr__(self) -> str:
        return f"PostgresNotify(channel={self.channel!r})"

    @property
    def max_bytes(self) -> int:
        """The largest payload ``NOTIFY`` accepts."""
        return MAX_PAYLOAD

    def connect(self, role: str) -> psycopg.Connection[t.Any]:
        """Return a new autocommit connection, named for ``role`` in ``pg_stat_activity``."""
        # application_name: "sa_signals fan-out publisher <channel>", at most 63 bytes.
        name = f"sa_signals fan-out {role} {self.channel}"[:63]
        return psycopg.connect(self._conninfo, application_name=name, **self._options)

    def sender(self) -> NotifySender:
        """Return a sender that connects on first use."""
        return NotifySender(self)

    def subscribe(self) -> ListenSubscription:
        """Return a subscription to the channel."""
        return ListenSubscription(self)


class NotifySender:
    """Sends each batch of payloads as ``NOTIFY`` statements in one simple query: one round
    trip, one transaction, in order."""

    def __init__(self, transport: PostgresNotify) -> None:
        self._transport = transport
        self._connection: psycopg.Connection[t.Any] | None = None
        self._cursor: psycopg.Cursor[t.Any] | None = None
        self._prefix = ""

    def send(self, payloads: c.Sequence[bytes], /) -> None:
        """Notify the channel of ``payloads``, in order."""
        if self._cursor is None:
            self._connection = self._transport.connect("publisher")
            self._cursor = self._connection.cursor()
            channel = psycopg.sql.Identifier(self._transport.channel)
            self._prefix = f"NOTIFY {channel.as_string(self._connection)}, '"
        # Literals, not parameters: a statement without parameters is sent as a simple query,
        # several at once. The connection has standard_conforming_strings on, so doubling the
        # quotes is the whole escaping of an ASCII payload.
        prefix = self._prefix
        self._cursor.execute(
            ";".join(
                prefix + payload.decode("ascii").replace("'", "''") + "'" for payload in payloads
            )
        )

    def close(self) -> None:
        """Close the connection."""
        connection, self._connection, self._cursor = self._connection, None, None
        if connection is not None:
            connection.close()


class ListenSubscription:
    """A connection that ``LISTEN``s to the channel."""

    def __init__(self, transport: PostgresNotify) -> None:
        self._transport = transport
        self._connection: psycopg.Connection[t.Any] | None = None
        self.backend_pid: int | None = None
        """The server process of the listening connection, while it is open."""

    def open(self) -> bool:
        """Connect and ``LISTEN``; what was notified meanwhile is lost, so return False."""
        connection = self._transport.connect("listener")
        try:
            connection.execute(
                psycopg.sql.SQL("LISTEN {}").format(
                    psycopg.sql.Identifier(self._transport.channel)
                )
            )
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        self.backend_pid = connection.info.backend_pid
        return False

    def read(self, timeout: float, /) -> list[bytes | Missed]:
        """Return the notifications that arrive within ``timeout`` seconds."""
        assert self._connection is not None, "read() before open()"
        channel = self._transport.channel
        return [
            notify.payload.encode("ascii")
            for notify in self._connection.notifies(timeout=timeout, stop_after=1)
            if notify.channel == channel
        ]

    def close(self) -> None:
        """Close the connection."""
        connection, self._connection = self._connection, None
        self.backend_pid = None
        if connection is not None:
            connection.close()
