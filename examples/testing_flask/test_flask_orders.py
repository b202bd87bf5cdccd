"""Testing the Flask orders app through its test client, in the transactional test mode."""

from __future__ import annotations

import flask.testing
import flask_orders
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm


def test_order_confirmed_once_committed(
    client: flask.testing.FlaskClient, sa_signals_session: sa_orm.Session
) -> None:
    response = client.post("/orders", data={"item": "tea"})
    assert response.status_code == 201
    assert flask_orders.outbox == [f"Order {response.json['id']}: tea"]  # type: ignore[index]
    # The request's commit reached the test's transaction: the test's own session sees it.
    items = sa_signals_session.scalars(sa.select(flask_orders.Order.item)).all()
    assert items == ["tea"]


def test_refused_order_sends_nothing_and_the_next_one_is_served(
    client: flask.testing.FlaskClient,
) -> None:
    assert client.post("/orders", data={"item": "unicorn"}).status_code == 409
    # Each request has its own session: the refused one was rolled back alone.
    assert client.post("/orders", data={"item": "tea"}).status_code == 201
    assert client.get("/orders").json == ["tea"]
    assert len(flask_orders.outbox) == 1


def test_requests_see_what_the_test_committed(
    client: flask.testing.FlaskClient, sa_signals_session: sa_orm.Session
) -> None:
    sa_signals_session.add(flask_orders.Order(item="jam"))
    sa_signals_session.commit()
    assert client.get("/orders").json == ["jam"]


def test_each_test_starts_empty(sa_signals_session: sa_orm.Session) -> None:
    count = sa.select(sa.func.count()).select_from(flask_orders.Order)
    assert sa_signals_session.scalar(count) == 0
