"""Testing the shop's on_commit code with the sa_signals pytest fixtures."""

from __future__ import annotations

import shop
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from sa_signals.pytest_plugin import CaptureOnCommit

# The transactional test mode: commit() runs callbacks, everything is rolled back afterwards.


def test_confirmation_sent_after_commit(sa_signals_session: sa_orm.Session) -> None:
    order_id = shop.place_order("tea")
    assert shop.outbox == [f"Order {order_id}: tea"]
    # The callback wrote in its own session, joined to the test's transaction.
    emails = sa_signals_session.scalars(sa.select(shop.Email.subject)).all()
    assert emails == [f"Order {order_id}: tea"]


def test_nothing_sent_when_rolled_back(sa_signals_session: sa_orm.Session) -> None:
    shop.Session.add(shop.Order(item="tea"))
    shop.Session.flush()
    shop.cancel_order(shop.Session.scalars(sa.select(shop.Order.id)).one())
    shop.Session.rollback()
    assert shop.outbox == []


def test_cache_emptied_after_commit(sa_signals_session: sa_orm.Session) -> None:
    assert shop.open_orders() == 0
    shop.place_order("tea")
    assert shop.open_orders() == 1


# Capturing: the callbacks registered in a block, run at its end or not at all.


def test_cancel_queues_a_notice(
    sa_signals_session: sa_orm.Session, sa_signals_capture_on_commit: CaptureOnCommit
) -> None:
    order_id = shop.place_order("tea")
    with sa_signals_capture_on_commit() as callbacks:
        shop.cancel_order(order_id)
    assert len(callbacks) == 1
    assert shop.outbox == [f"Order {order_id}: tea"]  # the notice waits for the commit


def test_cancel_notice_sent(
    sa_signals_session: sa_orm.Session, sa_signals_capture_on_commit: CaptureOnCommit
) -> None:
    order_id = shop.place_order("tea")
    with sa_signals_capture_on_commit(execute=True):
        shop.cancel_order(order_id)
    assert shop.outbox[-1] == f"Order {order_id} cancelled"


def test_capture_alone(sa_signals_capture_on_commit: CaptureOnCommit) -> None:
    # Without the transactional mode nothing is committed here: the test rolls back itself.
    order = shop.Order(item="tea")
    shop.Session.add(order)
    shop.Session.flush()
    with sa_signals_capture_on_commit(execute=True) as callbacks:
        shop.cancel_order(order.id)
    assert len(callbacks) == 1
    assert shop.outbox == [f"Order {order.id} cancelled"]
    shop.Session.rollback()
