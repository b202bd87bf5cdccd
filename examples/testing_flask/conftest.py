"""pytest setup for the Flask orders app: its tables, the session factory, a test client."""

from __future__ import annotations

import collections.abc as c
import typing as t

import flask.testing
import flask_orders
import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm


@pytest.fixture(scope="session", autouse=True)
def _tables() -> c.Iterator[None]:
    flask_orders.Base.metadata.create_all(flask_orders.engine)
    yield
    flask_orders.engine.dispose()


@pytest.fixture
def sa_signals_session_factory() -> sa_orm.scoped_session[t.Any]:
    # The extension's scoped session: one session per request, as in production.
    return flask_orders.db.session


@pytest.fixture
def client(sa_signals_transaction: sa.Connection) -> flask.testing.FlaskClient:
    # Every request runs in the test's transaction, rolled back after the test.
    return flask_orders.create_app().test_client()


@pytest.fixture(autouse=True)
def _empty_outbox() -> None:
    flask_orders.outbox.clear()
