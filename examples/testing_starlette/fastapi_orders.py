"""A FastAPI app whose orders send a confirmation once committed, tested in
``test_fastapi_orders.py``.

``SaSignals`` gives each request its own ``AsyncSession`` (``Depends(db.dependency)``) and
commits it after a successful response; the confirmation is a coroutine ``on_commit`` callback,
so a refused order sends nothing. ``ORDERS_DATABASE_URL`` picks the database, with an async
driver (a SQLite file in the temporary directory by default, through aiosqlite).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import typing as t

import fastapi
import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals.contrib.starlette import SaSignals


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
        "ORDERS_DATABASE_URL", f"sqlite+aiosqlite:///{tempfile.gettempdir()}/fastapi_orders.db"
    )
)
api = fastapi.FastAPI()
db = SaSignals(sa_asyncio.async_sessionmaker(engine, expire_on_commit=False), api)


class Base(sa_orm.DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "fastapi_orders"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    item: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))


SOLD_OUT = {"unicorn"}
"""Items that cannot be ordered: the order is written, then refused."""

outbox: list[str] = []
"""What ``deliver()`` sent, in order."""


async def create_tables() -> None:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)


async def deliver(message: str) -> None:
    """Send ``message`` (a stand-in for a mail server)."""
    await asyncio.sleep(0)
    outbox.append(message)


Session = t.Annotated[sa_asyncio.AsyncSession, fastapi.Depends(db.dependency)]
"""The request's session, for handlers."""


@api.post("/orders", status_code=201)
async def place_order(item: str, session: Session) -> dict[str, int]:
    order = Order(item=item)
    session.add(order)
    await session.flush()
    confirmation = f"Order {order.id}: {item}"

    async def confirm() -> None:
        await deliver(confirmation)

    sa_signals.on_commit(confirm, session)
    if item in SOLD_OUT:
        raise fastapi.HTTPException(409, f"{item} is sold out")  # the request is rolled back
    return {"id": order.id}


@api.get("/orders")
async def list_orders(session: Session) -> list[str]:
    return list(await session.scalars(sa.select(Order.item).order_by(Order.id)))
