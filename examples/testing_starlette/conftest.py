"""pytest setup for the FastAPI orders app: its tables, the session factory, a client.

The tests are run by pytest-asyncio, each in an event loop of its own. The client sends requests
through httpx's ASGITransport, in the test's own event loop, where the transactional test mode of
the sa_signals fixtures holds its connection.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import typing as t

import fastapi_orders
import httpx
import pytest
import pytest_asyncio
import sqlalchemy.ext.asyncio as sa_asyncio


async def _create_tables() -> None:
    await fastapi_orders.create_tables()
    await fastapi_orders.engine.dispose()  # its connections belong to this event loop


@pytest.fixture(scope="session", autouse=True)
def _tables() -> None:
    asyncio.run(_create_tables())


@pytest.fixture
def sa_signals_session_factory() -> sa_asyncio.async_scoped_session[t.Any]:
    # The extension's scoped session: one session per request, as in production.
    return fastapi_orders.db.session


@pytest_asyncio.fixture
async def client(
    sa_signals_async_transaction: sa_asyncio.AsyncConnection,
) -> c.AsyncIterator[httpx.AsyncClient]:
    # Every request runs in the test's transaction, rolled back after the test.
    transport = httpx.ASGITransport(app=fastapi_orders.api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest_asyncio.fixture(autouse=True)
async def _fresh_state() -> c.AsyncIterator[None]:
    fastapi_orders.outbox.clear()
    yield
    await fastapi_orders.engine.dispose()  # its connections belong to this test's event loop
