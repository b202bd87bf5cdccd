"""A publishing process for the fan-out tests: ``python -m tests.fanout.writer_process KIND NAME
URL DATABASE_URL ID``. Publishes with a 0.2 s heartbeat, commits one ``Item`` with id ``ID``,
prints its publisher id, then waits until its standard input closes and exits normally."""

from __future__ import annotations

import sys

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import fanout
from tests.fanout.transports import make_transport
from tests.models import Item


def main(kind: str, name: str, url: str, database_url: str, item_id: str) -> None:
    Session = sa_orm.sessionmaker(sa.create_engine(database_url))
    sa_signals.install(Session)
    publisher = fanout.publish(Session, make_transport(kind, name, url=url or None), heartbeat=0.2)
    with Session.begin() as session:
        session.add(Item(id=int(item_id), name=f"writer {item_id}"))
    publisher.flush()
    print(publisher.id, flush=True)
    sys.stdin.read()  # exits normally: the publisher is stopped at exit


if __name__ == "__main__":
    main(*sys.argv[1:6])
