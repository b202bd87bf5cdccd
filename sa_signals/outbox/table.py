"""The outbox table: one row per unit of durable work, written in the producer's transaction."""

from __future__ import annotations

import datetime

import sqlalchemy as sa
import sqlalchemy.dialects.mysql as sa_mysql

from .exceptions import NoTableError

DEFAULT_NAME = "sa_signals_outbox"
"""The table's name unless ``table()`` is given another."""

PENDING = "pending"
"""State of a row waiting for its run (or running, while its lease holds)."""

DONE = "done"
"""State of a row kept after a successful run (only with a retention period)."""

DEAD = "dead"
"""State of a row whose handler failed ``max_attempts`` times; kept for inspection."""

KEEP_DONE = "sa_signals_outbox_keep_done"
"""Key of ``Table.info`` holding how long done rows are kept (a ``timedelta``; absent: deleted)."""

_current: list[sa.Table] = []


def _timestamp() -> sa.types.TypeEngine[datetime.datetime]:
    # MariaDB's DATETIME keeps whole seconds unless told otherwise.
    return sa.DateTime().with_variant(sa_mysql.DATETIME(fsp=6), "mysql", "mariadb")


def table(
    metadata: sa.MetaData,
    name: str = DEFAULT_NAME,
    *,
    keep_done: float | datetime.timedelta | None = None,
) -> sa.Table:
    """Add the outbox table to ``metadata`` and make it the one ``enqueue()`` writes to.

    ``metadata.create_all()`` and Alembic's autogenerate then include it. Called again for the
    same ``metadata`` and name, it returns the table already there.

    A row is deleted once its handler succeeded, so the table holds only the work in flight
    and the dead rows. With ``keep_done`` (seconds or a ``timedelta``) it is marked done
    instead, and workers delete it after that long.
    """
    existing = metadata.tables.get(name)
    new = existing if existing is not None else _build(metadata, name)
    set_keep_done(new, keep_done)
    _current[:] = [new]
    return new


def set_keep_done(table: sa.Table, keep_done: float | datetime.timedelta | None) -> None:
    """Keep done rows of ``table`` for ``keep_done`` (None: delete them at once)."""
    if keep_done is None:
        table.info.pop(KEEP_DONE, None)
        return
    if not isinstance(keep_done, datetime.timedelta):
        keep_done = datetime.timedelta(seconds=keep_done)
    table.info[KEEP_DONE] = keep_done


def _build(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("handler", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(8), nullable=False, default=PENDING),
        sa.Column("attempts", sa.Integer(), nullable=False, default=0),
        # Due time; a lease moves it forward, so an expired lease makes the row due again.
        sa.Column("run_at", _timestamp(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("done_at", _timestamp(), nullable=True),
        sa.Column("locked_by", sa.String(36), nullable=True),
        # Set while the row waits for its first run: NULLs never collide, so the unique
        # constraint holds only between waiting rows, on every backend.
        sa.Column("dedup_key", sa.String(200), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.UniqueConstraint("dedup_key", name=f"uq_{name}_dedup_key"),
        sa.Index(f"ix_{name}_state_run_at", "state", "run_at"),
        # Ids are never reused (SQLite would reuse the largest after a delete): a late runner
        # of a deleted row must not find a new row under its id.
        sqlite_autoincrement=True,
    )


def current_table() -> sa.Table:
    """Return the table the last ``table()`` call declared."""
    if not _current:
        msg = (
            "no outbox table is declared: call sa_signals.outbox.table(metadata) next to your"
            " models (and create it, or add its Alembic migration)."
        )
        raise NoTableError(msg)
    return _current[0]


def standalone(name: str = DEFAULT_NAME) -> sa.Table:
    """Return the outbox table named ``name`` on a metadata of its own, for the CLI."""
    return _build(sa.MetaData(), name)
