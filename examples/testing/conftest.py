"""pytest setup for the shop: its tables, and the session factory the sa_signals fixtures use."""

from __future__ import annotations

import collections.abc as c

import pytest
import shop
import sqlalchemy.orm as sa_orm


@pytest.fixture(scope="session", autouse=True)
def _tables() -> c.Iterator[None]:
    shop.Base.metadata.create_all(shop.engine)
    yield
    shop.engine.dispose()


@pytest.fixture
def sa_signals_session_factory() -> sa_orm.scoped_session[sa_orm.Session]:
    return shop.Session


@pytest.fixture(autouse=True)
def _fresh_state() -> c.Iterator[None]:
    shop.outbox.clear()
    shop.open_orders_cache.clear()
    yield
    shop.Session.remove()
