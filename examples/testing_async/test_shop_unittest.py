# ruff: noqa: PT009 - unittest style, on purpose
"""Testing the async shop with unittest's IsolatedAsyncioTestCase and sa_signals.testing."""

from __future__ import annotations

import asyncio
import contextlib
import unittest

import shop
import sqlalchemy as sa

from sa_signals import signals
from sa_signals import testing


async def create_tables() -> None:
    await shop.create_tables()
    await shop.engine.dispose()  # its connections belong to this event loop


def setUpModule() -> None:
    asyncio.run(create_tables())


class PlaceOrderTests(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        # Each test has an event loop of its own: its pooled connections go with it, last.
        self.addAsyncCleanup(shop.engine.dispose)
        stack = contextlib.AsyncExitStack()
        self.addAsyncCleanup(stack.aclose)
        # Rolled back at the end; session.commit() runs callbacks as in production.
        self.connection = await stack.enter_async_context(testing.transactional(shop.Session))
        # A callback that fails (robustly, so only logged) fails the test.
        stack.enter_context(testing.raise_failures())
        shop.outbox.clear()
        shop.open_orders_cache.clear()

    async def test_confirmation_sent_after_commit(self) -> None:
        order_id = await shop.place_order("tea")
        self.assertEqual(shop.outbox, [f"Order {order_id}: tea"])
        emails = (await shop.Session.scalars(sa.select(shop.Email.subject))).all()
        self.assertEqual(emails, [f"Order {order_id}: tea"])

    async def test_commit_signals(self) -> None:
        with testing.capture_signals(signals.after_commit) as records:
            await shop.place_order("tea")
        self.assertEqual([record.sender for record in records], [shop.Session()])

    async def test_cancel_queues_a_notice(self) -> None:
        order_id = await shop.place_order("tea")
        async with testing.capture_on_commit(shop.Session) as callbacks:
            await shop.cancel_order(order_id)
        self.assertEqual(len(callbacks), 1)
        self.assertEqual(shop.outbox, [f"Order {order_id}: tea"])

    async def test_cancel_notice_sent(self) -> None:
        order_id = await shop.place_order("tea")
        async with testing.capture_on_commit(shop.Session, execute=True):
            await shop.cancel_order(order_id)
        self.assertEqual(shop.outbox[-1], f"Order {order_id} cancelled")


if __name__ == "__main__":
    unittest.main()
