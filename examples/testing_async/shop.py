"""The shop of ``examples/testing``, async: an ``async_scoped_session`` and coroutine callbacks.

The code that ``test_shop.py`` (pytest) and ``test_shop_unittest.py`` (unittest's
``IsolatedAsyncioTestCase``) test: ``place_order()`` commits and sends its confirmation from a
coroutine ``on_commit`` callback; ``cancel_order()`` leaves the commit to its caller; an
``after_commit`` receiver empties a cache. ``SHOP_DATABASE_URL`` picks the database, with an
async driver (a SQLite file in the temporary directory by default, through aiosqlite).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import typing as t

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals


def make_engine(url: str) -> sa_asyncio.AsyncEngine:
    """Return an engine for ``url``; SQLite gets SQLAlchemy's recipe for working SAVEPOINTs."""
    engine = sa_asyncio.create_async_engine(url)
    if engine.dialect.name == "sqlite":

        @sa_event.listens_for(engine.sync_engine, "connect")
        def _connect(dbapi_connection: t.Any, record: object) -> None:
            dbapi_connection.isolation_level = None

        @sa_event.listens_for(engine.sync_engine, "begin")
        def _begin(connection: sa.Connection) -> None:
            connection.exec_driver_sql("BEGIN")

    return engine


engine = make_engine(
    os.environ.get(
        "SHOP_DATABASE_URL", f"sqlite+aiosqlite:///{tempfile.gettempdir()}/sa_signals_ashop.db"
    )
)
Session = sa_asyncio.async_scoped_session(
    sa_asyncio.async_sessionmaker(engine, expire_on_commit=False),
    scopefunc=asyncio.current_task,
)
sa_signals.install(Session)


class Base(sa_orm.DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "ashop_orders"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    item: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))
    status: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(20), default="open")


class Email(Base):
    __tablename__ = "ashop_emails"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    order_id: sa_orm.Mapped[int]
    subject: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(100))


outbox: list[str] = []
"""What ``deliver()`` sent, in order."""

open_orders_cache: dict[str, int] = {}
"""Cached count of open orders, emptied after every commit."""


async def create_tables() -> None:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)


async def deliver(message: str) -> None:
    """Send ``message`` (a stand-in for a mail server)."""
    await asyncio.sleep(0)
    outbox.append(message)


async def send_confirmation(order_id: int) -> None:
    """Record and deliver the confirmation of a committed order."""
    order = await Session.get_one(Order, order_id)  # the callback's own session
    subject = f"Order {order.id}: {order.item}"
    Session.add(Email(order_id=order.id, subject=subject))
    await deliver(subject)


async def place_order(item: str) -> int:
    """Place and commit an order; its confirmation is sent once the order is committed."""
    order = Order(item=item)
    Session.add(order)
    await Session.flush()
    order_id = order.id

    async def confirm() -> None:
        await send_confirmation(order_id)

    sa_signals.on_commit(confirm, Session)
    await Session.commit()
    return order_id


async def cancel_order(order_id: int) -> None:
    """Cancel an order in the current transaction; the caller commits."""
    (await Session.get_one(Order, order_id)).status = "cancelled"

    async def notify() -> None:
        await deliver(f"Order {order_id} cancelled")

    sa_signals.on_commit(notify, Session)


async def open_orders() -> int:
    """Return the number of open orders, cached until the next commit."""
    if "open" not in open_orders_cache:
        query = sa.select(sa.func.count()).where(Order.status == "open")
        open_orders_cache["open"] = await Session.scalar(query) or 0
    return open_orders_cache["open"]


@signals.after_commit.connect
def _forget_cached_counts(session: sa_asyncio.AsyncSession, **kwargs: object) -> None:
    open_orders_cache.clear()
