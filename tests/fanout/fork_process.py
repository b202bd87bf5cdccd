"""A publisher that forks: ``python -m tests.fanout.fork_process KIND NAME DATABASE_URL``.

The parent commits item 1, forks; the child commits item 2, stops its publisher and exits; then
the parent commits item 3 through its own connection, which the child must have left alone. Prints
the parent's and the child's publisher ids."""

from __future__ import annotations

import os
import sys

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import fanout
from tests.fanout.transports import make_transport
from tests.models import Item


def commit(Session: sa_orm.sessionmaker[sa_orm.Session], item_id: int) -> None:
    with Session.begin() as session:
        session.add(Item(id=item_id, name=f"item {item_id}"))


def main(kind: str, name: str, database_url: str) -> None:
    engine = sa.create_engine(database_url)
    Session = sa_orm.sessionmaker(engine)
    sa_signals.install(Session)
    publisher = fanout.publish(Session, make_transport(kind, name))
    commit(Session, 1)
    assert publisher.flush()
    parent = publisher.id
    child = os.fork()
    if child == 0:
        engine.dispose(close=False)  # the parent's pooled connections stay the parent's
        commit(Session, 2)
        assert publisher.flush()
        print(publisher.id, flush=True)
        publisher.stop()
        sys.exit(0)  # a normal exit: the child frees what it inherited
    _, status = os.waitpid(child, 0)
    assert status == 0
    commit(Session, 3)
    assert publisher.flush()
    assert publisher.counters.failed == 0
    print(parent, flush=True)
    publisher.stop()


if __name__ == "__main__":
    main(*sys.argv[1:4])
