"""Fixtures of the outbox tests: the outbox tables on each backend, and reading ``effects``."""

from __future__ import annotations

import collections.abc as c
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals.outbox import table as outbox_table
from sa_signals.outbox.notify import close_notifiers
from tests.outbox import app

_created: set[str] = set()


@pytest.fixture
def ob(engine: sa.Engine) -> c.Iterator[Outbox]:
    """The outbox tables on ``engine``'s database, emptied after the test."""
    key = str(engine.url)
    if key not in _created:
        app.metadata.drop_all(engine)
        app.metadata.create_all(engine)
        # A pooled SQLite connection keeps the schema it read before: one that then times out
        # waiting for a lock reports "no such table" rather than "database is locked".
        engine.dispose()
        _created.add(key)
    outbox_table(app.metadata)  # a test may have declared another table: use this one again
    yield Outbox(engine)
    close_notifiers()  # their connections would count against other tests' servers
    app.failures.clear()
    with engine.begin() as connection:
        for table in app.metadata.sorted_tables:
            connection.execute(table.delete())


@pytest.fixture
def factory(ob: Outbox) -> c.Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    """An installed ``sessionmaker`` on the test's database; uninstalled afterwards."""
    maker = sa_orm.sessionmaker(ob.engine)
    sa_signals.install(maker)
    yield maker
    sa_signals.uninstall(maker)


class Outbox:
    """Reads the outbox and the effects of its handlers on a connection of its own."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.table = app.outbox_table

    def effects(self) -> list[str]:
        """Tags written by handlers, in order."""
        with self.engine.connect() as connection:
            return list(
                connection.scalars(sa.select(app.effects.c.tag).order_by(app.effects.c.id))
            )

    def rows(self) -> list[t.Any]:
        """The outbox rows, by id."""
        with self.engine.connect() as connection:
            return list(connection.execute(sa.select(self.table).order_by(self.table.c.id)))

    def states(self) -> list[str]:
        """The state of each outbox row, by id."""
        return [row.state for row in self.rows()]
