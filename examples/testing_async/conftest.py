"""pytest setup for the async shop: its tables, and the session factory of the fixtures.

The tests are run by pytest-asyncio (``@pytest.mark.asyncio``), each in an event loop of its
own; the sa_signals fixtures work with any plugin that runs ``async def`` tests.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import typing as t

import pytest
import pytest_asyncio
import shop
import sqlalchemy.ext.asyncio as sa_asyncio


async def _create_tables() -> None:
    await shop.create_tables()
    await shop.engine.dispose()  # its connections belong to this event loop


@pytest.fixture(scope="session", autouse=True)
def _tables() -> None:
    asyncio.run(_create_tables())


@pytest.fixture
def sa_signals_session_factory() -> sa_asyncio.async_scoped_session[t.Any]:
    return shop.Session


@pytest_asyncio.fixture(autouse=True)
async def _fresh_state() -> c.AsyncIterator[None]:
    shop.outbox.clear()
    shop.open_orders_cache.clear()
    yield
    await shop.engine.dispose()  # its connections belong to this test's event loop
