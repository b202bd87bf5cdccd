# ruff: noqa: PT009 - unittest style, on purpose
"""Testing the shop's on_commit code with unittest and sa_signals.testing (no pytest needed)."""

from __future__ import annotations

import contextlib
import unittest

import shop
import sqlalchemy as sa

from sa_signals import signals
from sa_signals import testing


def setUpModule() -> None:
    shop.Base.metadata.create_all(shop.engine)


class PlaceOrderTests(unittest.TestCase):
    def setUp(self) -> None:
        stack = contextlib.ExitStack()
        self.addCleanup(stack.close)
        # Rolled back at the end; session.commit() runs callbacks as in production.
        self.connection = stack.enter_context(testing.transactional(shop.Session))
        # A callback that fails (robustly, so only logged) fails the test.
        stack.enter_context(testing.raise_failures())
        shop.outbox.clear()
        shop.open_orders_cache.clear()

    def test_confirmation_sent_after_commit(self) -> None:
        order_id = shop.place_order("tea")
        self.assertEqual(shop.outbox, [f"Order {order_id}: tea"])
        emails = shop.Session.scalars(sa.select(shop.Email.subject)).all()
        self.assertEqual(emails, [f"Order {order_id}: tea"])

    def test_commit_signals(self) -> None:
        with testing.capture_signals(signals.after_commit) as records:
            shop.place_order("tea")
        self.assertEqual([record.sender for record in records], [shop.Session()])

    def test_cancel_queues_a_notice(self) -> None:
        order_id = shop.place_order("tea")
        with testing.capture_on_commit(shop.Session) as callbacks:
            shop.cancel_order(order_id)
        self.assertEqual(len(callbacks), 1)
        self.assertEqual(shop.outbox, [f"Order {order_id}: tea"])

    def test_cancel_notice_sent(self) -> None:
        order_id = shop.place_order("tea")
        with testing.capture_on_commit(shop.Session, execute=True):
            shop.cancel_order(order_id)
        self.assertEqual(shop.outbox[-1], f"Order {order_id} cancelled")


if __name__ == "__main__":
    unittest.main()
