"""The shop of ``flask_shop.py`` and ``fastapi_shop.py``: its model, cache, Celery app and demo.

Products have a price, cached in Redis and read through. Both apps register the same two
commit-time actions when a price changes: drop the cached price, and send the ``reindex`` task to
a Celery worker. This module holds what they share: the model, the cache, the Celery app and its
task, the worker process of a demo run, and the demo itself.

The servers are read from the environment: ``REDIS_URL`` (Redis: the cache and Celery's result
backend; default ``redis://127.0.0.1:6379/0``) and ``BROKER_URL`` (Celery's broker; default
``amqp://guest:guest@127.0.0.1:5672//``, a local RabbitMQ). ``SHOP_RUN`` names a demo run: its
Celery queue and its cache keys (default: ``shop-`` and a random suffix). To serve an app, run
``celery -A shop_common worker`` from this directory next to it.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import os
import pathlib
import subprocess
import sys
import uuid

import celery
import redis
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

BROKER_URL = os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
RUN = os.environ.get("SHOP_RUN") or f"shop-{uuid.uuid4().hex}"
"""The name of this run: its Celery queue, and the prefix of its cache keys."""

tasks = celery.Celery("shop", broker=BROKER_URL, backend=REDIS_URL)
tasks.conf.update(
    broker_connection_retry_on_startup=True, result_expires=600, task_default_queue=RUN
)
cache = redis.Redis.from_url(REDIS_URL, decode_responses=True)


@tasks.task(name="shop.reindex")
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
    return f"{RUN}:price:{product_id}"


def sync_url(url: str) -> sa.URL:
    """``url`` with a sync driver: psycopg for PostgreSQL."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    return parsed


@contextlib.contextmanager
def worker() -> c.Iterator[None]:
    """Run a Celery worker process on this run's queue for the block.

    Whatever happens, also when the block fails before the worker is up, the worker is stopped,
    the queue deleted and the run's cache keys removed.
    """
    process = None
    try:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "shop_common", "worker", "--pool=solo"),
                *(f"--queues={RUN}", f"--hostname={RUN}@%h", "--loglevel=WARNING"),
                *("--without-gossip", "--without-mingle", "--without-heartbeat"),
            ],
            cwd=pathlib.Path(__file__).resolve().parent,
            env={**os.environ, "SHOP_RUN": RUN},
            stdout=subprocess.DEVNULL,
        )
        yield
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        with tasks.connection_for_write() as connection:
            connection.default_channel.queue_delete(RUN)
        for key in cache.scan_iter(f"{RUN}:*"):
            cache.delete(key)


@contextlib.contextmanager
def fresh_tables(url: str) -> c.Iterator[None]:
    """Drop the shop's tables before the block (left by an interrupted run) and after it."""
    engine = sa.create_engine(sync_url(url))
    try:
        Base.metadata.drop_all(engine)
        try:
            yield
        finally:
            Base.metadata.drop_all(engine)
    finally:
        engine.dispose()


Request = c.Callable[[str, str], tuple[int, dict[str, object]]]
"""Sends ``(method, path)`` to the app under test; returns the status and the JSON body."""


def demo(request: Request) -> None:
    """Show that only a committed price change drops the cache entry and reaches the worker."""
    _, created = request("POST", "/products/tea?price=3")
    product_id = created["id"]
    assert isinstance(product_id, int)
    print(f"price: {request('GET', f'/products/{product_id}/price')[1]}")
    print(f"price: {request('GET', f'/products/{product_id}/price')[1]}")

    print("1. a failing request changes nothing:")
    status, _ = request("PUT", f"/products/{product_id}/price?value=-1")
    print(f"  status {status}, cached: {cache.exists(cache_key(product_id)) == 1}")

    print("2. a committed change drops the cache entry and enqueues the task:")
    status, changed = request("PUT", f"/products/{product_id}/price?value=4")
    print(f"  status {status}, cached: {cache.exists(cache_key(product_id)) == 1}")
    print(f"  worker: {tasks.AsyncResult(str(changed['task_id'])).get(timeout=30)}")
    print(f"price: {request('GET', f'/products/{product_id}/price')[1]}")
