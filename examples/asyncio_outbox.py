"""Publish an event only once an order has really committed, from async code.

Run: ``python examples/asyncio_outbox.py`` (needs ``sa-signals[asyncio]`` and aiosqlite).
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals


class Base(sa_orm.DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    item: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))


class Audit(Base):
    __tablename__ = "audits"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    message: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(100))


published: list[str] = []

engine = sa_asyncio.create_async_engine("sqlite+aiosqlite://")
AsyncScoped = sa_asyncio.async_scoped_session(
    sa_asyncio.async_sessionmaker(engine, expire_on_commit=False),
    scopefunc=asyncio.current_task,
)


async def publish(event: str) -> None:
    await asyncio.sleep(0)  # a message broker would be awaited here
    published.append(event)


def order_saved(
    sender: type[Order],
    *,
    instance: Order,
    session: sa_asyncio.AsyncSession,  # the AsyncSession you hold, not its sync session
    created: bool,
    **kwargs: object,
) -> None:
    """On INSERT, queue the event for after the commit (dropped if it rolls back)."""
    if not created:
        return
    event = f"order {instance.id} created: {instance.item}"

    async def notify() -> None:
        await publish(event)
        AsyncScoped().add(Audit(message=f"published {event!r}"))  # the distinct session

    sa_signals.on_commit(notify, session)


async def main() -> None:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    sa_signals.install(AsyncScoped)
    signals.post_save.connect(order_saved, sender=Order)

    async with sa_signals.session_scope(AsyncScoped) as session:
        session.add(Order(item="book"))
    assert published == ["order 1 created: book"]  # awaited before the scope exited

    async with AsyncScoped() as session:
        session.add(Order(item="pen"))
        await session.flush()  # post_save queued the event...
        await session.rollback()  # ...and the rollback dropped it
    await AsyncScoped.remove()
    assert published == ["order 1 created: book"]

    async with sa_signals.session_scope(AsyncScoped) as session:
        audits = (await session.scalars(sa.select(Audit.message))).all()
    assert audits == ["published 'order 1 created: book'"]
    print(published[0])

    signals.post_save.disconnect(order_saved, sender=Order)
    sa_signals.uninstall(AsyncScoped)
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
