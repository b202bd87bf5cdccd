"""A small shop whose orders send a confirmation once they are committed.

The code that ``test_shop.py`` (pytest) and ``test_shop_unittest.py`` (unittest) test:
``place_order()`` commits and sends its confirmation from an ``on_commit`` callback;
``cancel_order()`` leaves the commit to its caller; an ``after_commit`` receiver empties a cache.
``SHOP_DATABASE_URL`` picks the database (a SQLite file in the temporary directory by default).
"""

from __future__ import annotations

import os
import tempfile
import typing as t

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals


def make_engine(url: str) -> sa.Engine:
    """Return an engine for ``url``; SQLite gets SQLAlchemy's recipe for working SAVEPOINTs."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":

        @sa_event.listens_for(engine, "connect")
        def _connect(dbapi_connection: t.Any, record: object) -> None:
            dbapi_connection.isolation_level = None

        @sa_event.listens_for(engine, "begin")
        def _begin(connection: sa.Connection) -> None:
            connection.exec_driver_sql("BEGIN")

    return engine


engine = make_engine(
    os.environ.get("SHOP_DATABASE_URL", f"sqlite:///{tempfile.gettempdir()}/sa_signals_shop.db")
)
Session = sa_orm.scoped_session(sa_orm.sessionmaker(engine))
sa_signals.install(Session)


class Base(sa_orm.DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "shop_orders"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    item: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))
    status: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(20), default="open")


class Email(Base):
    __tablename__ = "shop_emails"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    order_id: sa_orm.Mapped[int]
    subject: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(100))


outbox: list[str] = []
"""What ``deliver()`` sent, in order."""

open_orders_cache: dict[str, int] = {}
"""Cached count of open orders, emptied after every commit."""


def deliver(message: str) -> None:
    """Send ``message`` (a stand-in for a mail server)."""
    outbox.append(message)


def send_confirmation(order_id: int) -> None:
    """Record and deliver the confirmation of a committed order."""
    order = Session.get_one(Order, order_id)  # the callback's own session
    subject = f"Order {order.id}: {order.item}"
    Session.add(Email(order_id=order.id, subject=subject))
    deliver(subject)


def place_order(item: str) -> int:
    """Place and commit an order; its confirmation is sent once the order is committed."""
    order = Order(item=item)
    Session.add(order)
    Session.flush()
    order_id = order.id
    sa_signals.on_commit(lambda: send_confirmation(order_id), Session)
    Session.commit()
    return order_id


def cancel_order(order_id: int) -> None:
    """Cancel an order in the current transaction; the caller commits."""
    Session.get_one(Order, order_id).status = "cancelled"
    sa_signals.on_commit(lambda: deliver(f"Order {order_id} cancelled"), Session)


def open_orders() -> int:
    """Return the number of open orders, cached until the next commit."""
    if "open" not in open_orders_cache:
        query = sa.select(sa.func.count()).where(Order.status == "open")
        open_orders_cache["open"] = Session.scalar(query) or 0
    return open_orders_cache["open"]


@signals.after_commit.connect
def _forget_cached_counts(session: sa_orm.Session, **kwargs: object) -> None:
    open_orders_cache.clear()
