"""A FastAPI shop whose price changes invalidate a Redis cache and enqueue a Celery task on commit.

Each request gets its own ``AsyncSession`` from ``SaSignals``' middleware, committed before a
successful response is sent and removed in every case. A ``post_save`` receiver on ``Product``
registers two commit-time actions: drop the product's cached price from Redis, and send the
``reindex`` task to a Celery worker. A request that fails after changing a price is rolled back,
so neither happens; a committed change always does both, after the COMMIT. The demo starts a
worker process on its own queue (RabbitMQ broker, Redis result backend, both local), drives the
app with Starlette's test client and stops the worker.

Run: ``python examples/fastapi_shop.py [DATABASE_URL]`` (SQLite with aiosqlite in a temporary
directory by default; a PostgreSQL URL is used with asyncpg). The demo creates its table
``shop_products`` afresh and drops it at the end. To serve the app instead, run
``uvicorn --factory fastapi_shop:serve`` (``SHOP_DATABASE_URL`` names the database) and
``celery -A fastapi_shop worker`` from this directory.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import os
import pathlib
import subprocess
import sys
import tempfile
import uuid

import celery
import fastapi
import redis
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm
import starlette.testclient

import sa_signals
from sa_signals import signals
from sa_signals.contrib.celery import enqueue_on_commit
from sa_signals.contrib.celery import Enqueued
from sa_signals.contrib.starlette import SaSignals

BROKER_URL = os.environ.get("SHOP_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("SHOP_REDIS_URL", "redis://127.0.0.1:6379/4")
PREFIX = os.environ.get("SHOP_CACHE_PREFIX", "shop")

tasks = celery.Celery("fastapi_shop", broker=BROKER_URL, backend=REDIS_URL)
tasks.conf.update(broker_connection_retry_on_startup=True, result_expires=600)
cache = redis.Redis.from_url(REDIS_URL, decode_responses=True)


@tasks.task(name="fastapi_shop.reindex")
def reindex(product_id: int, price: int) -> str:
    """Stand-in for a search-index update, done by the worker."""
    return f"reindexed product {product_id} at {price}"


class Base(sa_orm.DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "shop_products"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))
    price: sa_orm.Mapped[int]


def cache_key(product_id: int) -> str:
    return f"{PREFIX}:price:{product_id}"


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
            await connection.run_sync(Base.metadata.create_all)
        yield
        await engine.dispose()

    app = fastapi.FastAPI(lifespan=lifespan)
    # Commit before the response is sent: a client that got its 200 reads the new price.
    db = SaSignals(sa_asyncio.async_sessionmaker(engine), app)
    sent: dict[int, Enqueued] = {}

    def on_product_saved(sender: type[Product], *, instance: Product, **kw: object) -> None:
        product_id = instance.id
        sa_signals.on_commit(lambda: cache.delete(cache_key(product_id)), db.session)
        sent[product_id] = enqueue_on_commit(
            reindex, product_id, instance.price, session=db.session
        )

    signals.post_save.connect(on_product_saved, sender=Product, weak=False)

    @app.get("/products/{product_id}/price")
    async def get_price(product_id: int) -> dict[str, object]:
        cached = cache.get(cache_key(product_id))
        if cached is not None:
            return {"price": int(cached), "cached": True}
        price = (await db.session.get_one(Product, product_id)).price
        cache.set(cache_key(product_id), price)
        return {"price": price, "cached": False}

    @app.put("/products/{product_id}/price")
    async def set_price(product_id: int, value: int) -> dict[str, object]:
        (await db.session.get_one(Product, product_id)).price = value
        await db.session.flush()
        if value < 0:
            raise fastapi.HTTPException(422, "a price cannot be negative")
        return {"price": value, "task_id": sent.pop(product_id).task_id}

    @app.post("/products/{name}", status_code=201)
    async def create(name: str, price: int) -> dict[str, object]:
        product = Product(name=name, price=price)
        db.session.add(product)
        await db.session.flush()
        sent.pop(product.id, None)
        return {"id": product.id}

    return app


def serve() -> fastapi.FastAPI:
    """The app for ``uvicorn --factory``, on ``SHOP_DATABASE_URL`` (default ``shop.db``)."""
    return create_app(os.environ.get("SHOP_DATABASE_URL", "sqlite:///shop.db"))


def main(url: str) -> None:
    queue = f"fastapi_shop_{uuid.uuid4().hex}"
    tasks.conf.task_default_queue = queue
    here = pathlib.Path(__file__).resolve().parent
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "fastapi_shop", "worker", "--pool=solo"),
            *(f"--queues={queue}", f"--hostname={queue}@%h", "--loglevel=WARNING"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ],
        cwd=here,
        env={**os.environ, "SHOP_CACHE_PREFIX": PREFIX},
        stdout=subprocess.DEVNULL,
    )
    sync_url = sa.make_url(url)
    if sync_url.get_backend_name() == "postgresql":
        sync_url = sync_url.set(drivername="postgresql+psycopg")
    fresh = sa.create_engine(sync_url)
    Base.metadata.drop_all(fresh)  # the demo starts from an empty table, and drops it at the end
    app = create_app(url)
    try:
        with starlette.testclient.TestClient(app) as client:
            product_id = client.post("/products/tea?price=3").json()["id"]
            print(f"price: {client.get(f'/products/{product_id}/price').json()}")
            print(f"price: {client.get(f'/products/{product_id}/price').json()}")

            print("1. a failing request changes nothing:")
            response = client.put(f"/products/{product_id}/price?value=-1")
            cached = cache.exists(cache_key(product_id)) == 1
            print(f"  status {response.status_code}, cached: {cached}")

            print("2. a committed change drops the cache entry and enqueues the task:")
            response = client.put(f"/products/{product_id}/price?value=4")
            cached = cache.exists(cache_key(product_id)) == 1
            print(f"  status {response.status_code}, cached: {cached}")
            result = tasks.AsyncResult(response.json()["task_id"])
            print(f"  worker: {result.get(timeout=30)}")
            print(f"price: {client.get(f'/products/{product_id}/price').json()}")
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=2)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=5)
        with tasks.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)
        for key in cache.scan_iter(f"{PREFIX}:*"):
            cache.delete(key)
        Base.metadata.drop_all(fresh)
        fresh.dispose()


if __name__ == "__main__":
    PREFIX = f"shop_{uuid.uuid4().hex}"
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as directory:
            main(f"sqlite:///{directory}/shop.db")
