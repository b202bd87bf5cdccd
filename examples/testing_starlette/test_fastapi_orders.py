"""Testing the FastAPI orders app through httpx, in the transactional test mode."""

from __future__ import annotations

import fastapi_orders
import httpx
import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio


@pytest.mark.asyncio
async def test_order_confirmed_once_committed(
    client: httpx.AsyncClient, sa_signals_async_session: sa_asyncio.AsyncSession
) -> None:
    response = await client.post("/orders", params={"item": "tea"})
    assert response.status_code == 201
    assert fastapi_orders.outbox == [f"Order {response.json()['id']}: tea"]
    # The request's commit reached the test's transaction: the test's own session sees it.
    items = (await sa_signals_async_session.scalars(sa.select(fastapi_orders.Order.item))).all()
    assert items == ["tea"]


@pytest.mark.asyncio
async def test_refused_order_sends_nothing_and_the_next_one_is_served(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/orders", params={"item": "unicorn"})).status_code == 409
    # Each request has its own session: the refused one was rolled back alone.
    assert (await client.post("/orders", params={"item": "tea"})).status_code == 201
    assert (await client.get("/orders")).json() == ["tea"]
    assert len(fastapi_orders.outbox) == 1


@pytest.mark.asyncio
async def test_requests_see_what_the_test_committed(
    client: httpx.AsyncClient, sa_signals_async_session: sa_asyncio.AsyncSession
) -> None:
    sa_signals_async_session.add(fastapi_orders.Order(item="jam"))
    await sa_signals_async_session.commit()
    assert (await client.get("/orders")).json() == ["jam"]


@pytest.mark.asyncio
async def test_each_test_starts_empty(sa_signals_async_session: sa_asyncio.AsyncSession) -> None:
    count = sa.select(sa.func.count()).select_from(fastapi_orders.Order)
    assert await sa_signals_async_session.scalar(count) == 0
