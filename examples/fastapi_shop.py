"""A FastAPI shop whose price changes invalidate a Redis cache and enqueue a Celery task on commit.

Each request gets its own ``AsyncSession`` from ``SaSignals``' middleware, committed before a
successful response is sent and removed in every case. A ``post_save`` receiver on ``Product``
registers two commit-time actions: drop the product's cached price from Redis, and send the
``reindex`` task to a Celery worker. A request that fails after changing a price is rolled back,
so neither happens; a committed change always does both, after the COMMIT. The model, the cache,
the Celery app and the demo are those of ``shop_common.py``, shared with ``flask_shop.py``. The
demo starts a worker process on a queue of its own (RabbitMQ broker, Redis result backend:
``BROKER_URL`` and ``REDIS_URL``, local ones by default), drives the app with Starlette's test
client, and stops the worker whatever happens.

Run: ``python examples/fastapi_shop.py [DATABASE_URL]`` (SQLite with aiosqlite in a temporary
directory by default; a PostgreSQL URL is used with asyncpg). The demo drops and creates its table
``shop_products`` and drops it at the end, so it can run again on the same database. To serve the
app instead, run ``uvicorn --factory fastapi_shop:serve`` (``SHOP_DATABASE_URL`` names the
database) and ``celery -A shop_common worker`` from this directory.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import os
import sys
import tempfile

import fastapi
import shop_common as shop
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio
import starlette.testclient

import sa_signals
from sa_signals import signals
from sa_signals.contrib.celery import enqueue_on_commit
from sa_signals.contrib.celery import Enqueued
from sa_signals.contrib.starlette import SaSignals


def async_url(url: str) -> sa.URL:
    """``url`` with an async driver: asyncpg for PostgreSQL, aiosqlite for SQLite."""
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    driver = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}.get(backend)
    return parsed if driver is None else parsed.set(drivername=f"{backend}+{driver}")


def create_app(url: str) -> fastapi.FastAPI:
    engine = sa_asyncio.create_async_engine(async_url(url))

    @contextlib.asynccontextmanager
    async def lifespan(app: fastapi.FastAPI) -> c.AsyncIterator[None]:
        async with engine.begin() as connection:
            await connection.run_sync(shop.Base.metadata.create_all)
        yield
        await engine.dispose()

    app = fastapi.FastAPI(lifespan=lifespan)
    # Committed before the response is sent: a client that got its 200 reads the new price.
    db = SaSignals(sa_asyncio.async_sessionmaker(engine), app)
    sent: dict[int, Enqueued] = {}

    def on_product_saved(
        sender: type[shop.Product], *, instance: shop.Product, **kw: object
    ) -> None:
        product_id = instance.id
        sa_signals.on_commit(lambda: shop.cache.delete(shop.cache_key(product_id)), db.session)
        sent[product_id] = enqueue_on_commit(
            shop.reindex, product_id, instance.price, session=db.session
        )

    signals.post_save.connect(on_product_saved, sender=shop.Product, weak=False)

    @app.get("/products/{product_id}/price")
    async def get_price(product_id: int) -> dict[str, object]:
        cached = shop.cache.get(shop.cache_key(product_id))
        if cached is not None:
            return {"price": int(cached), "cached": True}
        price = (await db.session.get_one(shop.Product, product_id)).price
        shop.cache.set(shop.cache_key(product_id), price)
        return {"price": price, "cached": False}

    @app.put("/products/{product_id}/price")
    async def set_price(product_id: int, value: int) -> dict[str, object]:
        (await db.session.get_one(shop.Product, product_id)).price = value
        await db.session.flush()
        if value < 0:
            raise fastapi.HTTPException(422, "a price cannot be negative")
        return {"price": value, "task_id": sent.pop(product_id).task_id}

    @app.post("/products/{name}", status_code=201)
    async def create(name: str, price: int) -> dict[str, object]:
        product = shop.Product(name=name, price=price)
        db.session.add(product)
        await db.session.flush()
        sent.pop(product.id, None)
        return {"id": product.id}

    return app


def serve() -> fastapi.FastAPI:
    """The app for ``uvicorn --factory``, on ``SHOP_DATABASE_URL`` (default ``shop.db``)."""
    return create_app(os.environ.get("SHOP_DATABASE_URL", "sqlite:///shop.db"))


def main(url: str) -> None:
    with (
        shop.worker(),
        shop.fresh_tables(url),
        starlette.testclient.TestClient(create_app(url)) as client,
    ):

        def request(method: str, path: str) -> tuple[int, dict[str, object]]:
            response = client.request(method, path)
            return response.status_code, response.json()

        shop.demo(request)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as directory:
            main(f"sqlite:///{directory}/shop.db")
