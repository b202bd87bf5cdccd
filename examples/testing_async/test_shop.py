"""Testing the async shop's on_commit code with the sa_signals pytest fixtures."""

from __future__ import annotations

import pytest
import shop
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio

from sa_signals.pytest_plugin import CaptureOnCommit

# The transactional test mode: commit() runs callbacks, everything is rolled back afterwards.


@pytest.mark.asyncio
async def test_confirmation_sent_after_commit(
    sa_signals_async_session: sa_asyncio.AsyncSession,
) -> None:
    order_id = await shop.place_order("tea")
    assert shop.outbox == [f"Order {order_id}: tea"]
    # The callback wrote in its own session, joined to the test's transaction.
    emails = (await sa_signals_async_session.scalars(sa.select(shop.Email.subject))).all()
    assert emails == [f"Order {order_id}: tea"]


@pytest.mark.asyncio
async def test_nothing_sent_when_rolled_back(
    sa_signals_async_session: sa_asyncio.AsyncSession,
) -> None:
    shop.Session.add(shop.Order(item="tea"))
    await shop.Session.flush()
    await shop.cancel_order(await shop.Session.scalar(sa.select(shop.Order.id)))
    await shop.Session.rollback()
    assert shop.outbox == []


@pytest.mark.asyncio
async def test_cache_emptied_after_commit(
    sa_signals_async_transaction: sa_asyncio.AsyncConnection,
) -> None:
    assert await shop.open_orders() == 0
    await shop.place_order("tea")
    assert await shop.open_orders() == 1


# Capturing: the callbacks registered in a block, run at its end or not at all.


@pytest.mark.asyncio
async def test_cancel_queues_a_notice(
    sa_signals_async_session: sa_asyncio.AsyncSession,
    sa_signals_capture_on_commit: CaptureOnCommit,
) -> None:
    order_id = await shop.place_order("tea")
    async with sa_signals_capture_on_commit() as callbacks:
        await shop.cancel_order(order_id)
    assert len(callbacks) == 1
    assert shop.outbox == [f"Order {order_id}: tea"]  # the notice waits for the commit


@pytest.mark.asyncio
async def test_cancel_notice_sent(
    sa_signals_async_session: sa_asyncio.AsyncSession,
    sa_signals_capture_on_commit: CaptureOnCommit,
) -> None:
    order_id = await shop.place_order("tea")
    async with sa_signals_capture_on_commit(execute=True):
        await shop.cancel_order(order_id)
    assert shop.outbox[-1] == f"Order {order_id} cancelled"


@pytest.mark.asyncio
async def test_capture_alone(sa_signals_capture_on_commit: CaptureOnCommit) -> None:
    # Without the transactional mode nothing is committed here: the test rolls back itself.
    order = shop.Order(item="tea")
    shop.Session.add(order)
    await shop.Session.flush()
    async with sa_signals_capture_on_commit(execute=True) as callbacks:
        await shop.cancel_order(order.id)
    assert len(callbacks) == 1
    assert shop.outbox == [f"Order {order.id} cancelled"]
    await shop.Session.rollback()
    await shop.Session.remove()
