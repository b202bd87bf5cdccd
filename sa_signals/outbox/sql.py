"""Every statement the outbox runs, per table and database, built once.

The claim is the only statement that differs by database: ``UPDATE ... WHERE id IN (SELECT ...
FOR UPDATE SKIP LOCKED) RETURNING`` on PostgreSQL, ``SELECT ... FOR UPDATE SKIP LOCKED`` then
``UPDATE`` on MariaDB/MySQL (no ``UPDATE ... RETURNING``), and one ``UPDATE ... RETURNING`` on
SQLite, whose single writer makes it atomic. A row leased by a claim is due again when its lease
ends: the lease moves ``run_at`` forward.
"""

from __future__ import annotations

import datetime
import functools
import typing as t

import sqlalchemy as sa
import sqlalchemy.dialects.postgresql as sa_postgresql
import sqlalchemy.dialects.sqlite as sa_sqlite

from .table import DONE
from .table import PENDING

MYSQL_DUPLICATE_KEY = 1062
"""MySQL/MariaDB's error number for a duplicate key (the statement alone is rolled back)."""


def utcnow() -> datetime.datetime:
    """Return the current UTC time, naive, as the table stores it."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class Row(t.NamedTuple):
    """A claimed row: what running it needs."""

    id: int
    handler: str
    payload: str
    attempts: int
    """Runs so far, this one included."""


class Statements:
    """The statements of one outbox table on one database (``dialect`` as SQLAlchemy names it)."""

    def __init__(self, table: sa.Table, dialect: str) -> None:
        self.table = table
        self.dialect = dialect
        self.mysql = dialect in ("mysql", "mariadb")
        c_ = table.c
        pending = c_.state == PENDING
        # The new id: RETURNING on PostgreSQL, the cursor's lastrowid elsewhere (cheaper).
        self.returning = dialect == "postgresql"
        self.insert = table.insert().returning(c_.id) if self.returning else table.insert()
        """Params: handler, payload, state, attempts, run_at, created_at, dedup_key."""
        self.insert_dedup: sa.Executable = self.insert
        if dialect == "postgresql":
            self.insert_dedup = (
                sa_postgresql.insert(table)
                .on_conflict_do_nothing(index_elements=[c_.dedup_key])
                .returning(c_.id)
            )
        elif dialect == "sqlite":
            self.insert_dedup = (
                sa_sqlite.insert(table)
                .on_conflict_do_nothing(index_elements=[c_.dedup_key])
                .returning(c_.id)
            )
        find = sa.select(c_.id).where(c_.dedup_key == sa.bindparam("dedup_key"))
        # A locking read sees the latest committed row under REPEATABLE READ (MariaDB's default).
        self.find_dedup = find.with_for_update(read=True) if self.mysql else find
        due = sa.and_(pending, c_.run_at <= sa.bindparam("now"))
        # A run finishes its row first, in its own transaction: the DELETE (or the UPDATE to
        # done) takes the row's lock, the handler runs, and the COMMIT settles both; a handler
        # that raises rolls the row back with its own writes. One statement, not lock + finish.
        # The committer's own row, unless a worker leased it (its grace ran out first).
        fresh = sa.and_(c_.id == sa.bindparam("row_id"), pending, c_.locked_by.is_(None))
        held = sa.and_(
            c_.id == sa.bindparam("row_id"), c_.locked_by == sa.bindparam("token"), pending
        )
        done: dict[str, t.Any] = {
            "state": DONE,
            "done_at": sa.bindparam("now"),
            "locked_by": None,
            "dedup_key": None,
        }
        self.finish_fresh = table.delete().where(fresh)
        """Finish a row by id: the fast path, which claimed nothing before."""
        self.finish_held = table.delete().where(held)
        """Finish a row claimed by ``token``, if its lease is still ours."""
        self.keep_fresh = table.update().where(fresh).values(done)
        self.keep_held = table.update().where(held).values(done)
        self.fail = (
            table.update()
            .where(c_.id == sa.bindparam("row_id"), pending)
            .values(
                state=sa.bindparam("new_state"),
                run_at=sa.bindparam("run_at"),
                attempts=sa.bindparam("attempts"),
                last_error=sa.bindparam("error"),
                locked_by=None,
                dedup_key=None,
            )
        )
        self.release = (
            table.update()
            .where(c_.id.in_(sa.bindparam("ids", expanding=True)))
            .where(c_.locked_by == sa.bindparam("token"), pending)
            .values(run_at=sa.bindparam("now"), locked_by=None, attempts=c_.attempts - 1)
        )
        self.next_due = sa.select(sa.func.min(c_.run_at)).where(pending)
        self._due_ids = (
            sa.select(c_.id)
            .where(due)
            .order_by(c_.run_at, c_.id)
            .limit(sa.bindparam("limit", type_=sa.Integer(), literal_execute=True))
        )
        self._lease = {
            "attempts": c_.attempts + 1,
            "run_at": sa.bindparam("lease_end"),
            "locked_by": sa.bindparam("token"),
            "dedup_key": None,
        }
        self._claimed = (c_.id, c_.handler, c_.payload, c_.attempts)

    @functools.cached_property
    def fail_leased(self) -> sa.Update:
        """:attr:`fail`, if the row is still leased to ``guard`` (a worker's claim)."""
        return self.fail.where(self.table.c.locked_by == sa.bindparam("guard"))

    @functools.cached_property
    def fail_unleased(self) -> sa.Update:
        """:attr:`fail`, if no worker leased the row since the fast path's run rolled back."""
        return self.fail.where(self.table.c.locked_by.is_(None))

    def claim(
        self,
        connection: sa.Connection,
        *,
        now: datetime.datetime,
        lease_end: datetime.datetime,
        token: str,
        limit: int,
    ) -> list[Row]:
        """Lease up to ``limit`` due rows to ``token`` in ``connection``'s transaction."""
        params = {"now": now, "lease_end": lease_end, "token": token, "limit": limit}
        if self.mysql:
            found = connection.execute(self._mysql_pick, params).all()
            if not found:
                return []
            connection.execute(self._mysql_lease, {**params, "ids": [r.id for r in found]})
            return [Row(r.id, r.handler, r.payload, r.attempts + 1) for r in found]
        statement = self._claim_postgresql if self.dialect == "postgresql" else self._claim_plain
        # RETURNING gives the rows in no particular order: run them in the order written.
        return sorted(Row(*r) for r in connection.execute(statement, params))

    @functools.cached_property
    def _mysql_pick(self) -> sa.Select[t.Any]:
        c_ = self.table.c
        return (
            sa.select(*self._claimed)
            .where(c_.state == PENDING, c_.run_at <= sa.bindparam("now"))
            .order_by(c_.run_at, c_.id)
            .limit(sa.bindparam("limit", type_=sa.Integer(), literal_execute=True))
            .with_for_update(skip_locked=True)
        )

    @functools.cached_property
    def _mysql_lease(self) -> sa.Update:
        return (
            self.table.update()
            .where(self.table.c.id.in_(sa.bindparam("ids", expanding=True)))
            .values(**self._lease)
        )

    @functools.cached_property
    def _claim_postgresql(self) -> sa.UpdateBase:
        picked = self._due_ids.with_for_update(skip_locked=True).scalar_subquery()
        return (
            self.table.update()
            .where(self.table.c.id.in_(picked))
            .values(**self._lease)
            .returning(*self._claimed)
        )

    @functools.cached_property
    def _claim_plain(self) -> sa.UpdateBase:
        return (
            self.table.update()
            .where(self.table.c.id.in_(self._due_ids.scalar_subquery()))
            .values(**self._lease)
            .returning(*self._claimed)
        )


_cache: dict[tuple[sa.Table, str], Statements] = {}


def statements(table: sa.Table, dialect: str) -> Statements:
    """Return the :class:`Statements` of ``table`` on ``dialect``, built on first use."""
    key = (table, dialect)
    found = _cache.get(key)
    if found is None:
        found = _cache[key] = Statements(table, dialect)
    return found
