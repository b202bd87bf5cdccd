"""Operating the outbox: counts, and putting dead rows back or deleting old ones."""

from __future__ import annotations

import dataclasses
import datetime
import typing as t

import sqlalchemy as sa

from .sql import utcnow
from .table import DEAD
from .table import DONE
from .table import PENDING

if t.TYPE_CHECKING:
    import collections.abc as c


@dataclasses.dataclass(frozen=True)
class Stats:
    """What the outbox table holds now."""

    pending: int
    """Rows waiting or running."""
    due: int
    """Pending rows due now (not leased, not delayed)."""
    dead: int
    done: int
    """Done rows kept for the retention period."""
    oldest_pending_age: float | None
    """Seconds since the oldest pending row was written (None: nothing pending)."""

    def lines(self) -> list[str]:
        """Return the stats as ``name value`` lines."""
        age = "-" if self.oldest_pending_age is None else f"{self.oldest_pending_age:.1f}s"
        return [
            f"pending {self.pending}",
            f"due {self.due}",
            f"dead {self.dead}",
            f"done {self.done}",
            f"oldest_pending_age {age}",
        ]


def stats(connection: sa.Connection, table: sa.Table) -> Stats:
    """Count the rows of ``table`` by state."""
    c_ = table.c
    now = utcnow()
    by_state = sa.select(c_.state, sa.func.count()).group_by(c_.state)
    counts: dict[str, int] = {state: n for state, n in connection.execute(by_state)}
    due = connection.scalar(
        sa.select(sa.func.count()).where(c_.state == PENDING, c_.run_at <= now)
    )
    oldest = connection.scalar(sa.select(sa.func.min(c_.created_at)).where(c_.state == PENDING))
    return Stats(
        pending=counts.get(PENDING, 0),
        due=due or 0,
        dead=counts.get(DEAD, 0),
        done=counts.get(DONE, 0),
        oldest_pending_age=None if oldest is None else (now - oldest).total_seconds(),
    )


def retry(
    connection: sa.Connection,
    table: sa.Table,
    *,
    ids: c.Sequence[int] = (),
    handler: str | None = None,
) -> int:
    """Make dead rows pending again, due now, with no attempts; return how many.

    All dead rows, or those among ``ids``, or those of ``handler``.
    """
    c_ = table.c
    statement = (
        table.update()
        .where(c_.state == DEAD)
        .values(state=PENDING, attempts=0, run_at=utcnow(), locked_by=None)
    )
    if ids:
        statement = statement.where(c_.id.in_(ids))
    if handler is not None:
        statement = statement.where(c_.handler == handler)
    return connection.execute(statement).rowcount


def purge(
    connection: sa.Connection,
    table: sa.Table,
    *,
    older_than: datetime.timedelta,
    dead: bool = False,
) -> int:
    """Delete done (with ``dead``, also dead) rows older than ``older_than``; return how many."""
    c_ = table.c
    cutoff = utcnow() - older_than
    states = [DONE, DEAD] if dead else [DONE]
    statement = table.delete().where(
        c_.state.in_(states), sa.func.coalesce(c_.done_at, c_.run_at) < cutoff
    )
    return connection.execute(statement).rowcount
