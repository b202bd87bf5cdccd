"""A Flask shop whose price changes invalidate a Redis cache and enqueue a Celery task on commit.

A ``post_save`` receiver on ``Product`` registers two commit-time actions: drop the product's
cached price from Redis, and send the ``reindex`` task to a Celery worker. A request that fails
after changing a price is rolled back, so neither happens; a committed change always does both,
after the COMMIT. The demo starts a worker process on its own queue (RabbitMQ broker, Redis
result backend, both local), drives the app with Flask's test client and stops the worker.

Run: ``python examples/flask_shop.py [DATABASE_URL]`` (SQLite in a temporary directory by
default); the demo creates its table ``shop_products`` afresh and drops it at the end. To serve
the app instead, run ``flask --app "flask_shop:create_app('sqlite:///shop.db')" run`` and
``celery -A flask_shop worker`` from this directory.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import uuid

import celery
import flask
import redis
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals
from sa_signals.contrib.celery import enqueue_on_commit
from sa_signals.contrib.flask import SaSignals

BROKER_URL = os.environ.get("SHOP_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("SHOP_REDIS_URL", "redis://127.0.0.1:6379/4")
PREFIX = os.environ.get("SHOP_CACHE_PREFIX", "shop")

tasks = celery.Celery("flask_shop", broker=BROKER_URL, backend=REDIS_URL)
tasks.conf.update(broker_connection_retry_on_startup=True, result_expires=600)
cache = redis.Redis.from_url(REDIS_URL, decode_responses=True)


@tasks.task(name="flask_shop.reindex")
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


def create_app(url: str) -> flask.Flask:
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    app = flask.Flask(__name__)
    db = SaSignals(sa_orm.sessionmaker(engine), app, commit=True)
    Session = db.session

    def on_product_saved(sender: type[Product], *, instance: Product, **kw: object) -> None:
        product_id = instance.id
        sa_signals.on_commit(lambda: cache.delete(cache_key(product_id)), Session)
        flask.g.task = enqueue_on_commit(reindex, product_id, instance.price, session=Session)

    signals.post_save.connect(on_product_saved, sender=Product, weak=False)

    @app.get("/products/<int:product_id>/price")
    def get_price(product_id: int) -> dict[str, object]:
        cached = cache.get(cache_key(product_id))
        if cached is not None:
            return {"price": int(cached), "cached": True}
        price = Session.get_one(Product, product_id).price
        cache.set(cache_key(product_id), price)
        return {"price": price, "cached": False}

    @app.put("/products/<int:product_id>/price")
    def set_price(product_id: int) -> dict[str, object]:
        price = int(flask.request.args["value"])
        Session.get_one(Product, product_id).price = price
        Session.flush()
        if price < 0:
            raise ValueError("a price cannot be negative")
        return {"price": price, "task_id": flask.g.task.task_id}

    @app.post("/products/<name>")
    def create(name: str) -> tuple[dict[str, object], int]:
        product = Product(name=name, price=int(flask.request.args["price"]))
        Session.add(product)
        Session.flush()
        return {"id": product.id}, 201

    app.extensions["engine"] = engine
    return app


def main(url: str) -> None:
    queue = f"flask_shop_{uuid.uuid4().hex}"
    tasks.conf.task_default_queue = queue
    here = pathlib.Path(__file__).resolve().parent
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "flask_shop", "worker", "--pool=solo"),
            *(f"--queues={queue}", f"--hostname={queue}@%h", "--loglevel=WARNING"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ],
        cwd=here,
        env={**os.environ, "SHOP_CACHE_PREFIX": PREFIX},
        stdout=subprocess.DEVNULL,
    )
    fresh = sa.create_engine(url)
    Base.metadata.drop_all(fresh)  # the demo starts from an empty table, and drops it at the end
    fresh.dispose()
    app = create_app(url)
    app.logger.disabled = True
    client = app.test_client()
    try:
        product_id = client.post("/products/tea?price=3").json["id"]  # type: ignore[index]
        print(f"price: {client.get(f'/products/{product_id}/price').json}")
        print(f"price: {client.get(f'/products/{product_id}/price').json}")

        print("1. a failing request changes nothing:")
        response = client.put(f"/products/{product_id}/price?value=-1")
        print(
            f"  status {response.status_code}, cached: {cache.exists(cache_key(product_id)) == 1}"
        )

        print("2. a committed change drops the cache entry and enqueues the task:")
        response = client.put(f"/products/{product_id}/price?value=4")
        print(
            f"  status {response.status_code}, cached: {cache.exists(cache_key(product_id)) == 1}"
        )
        result = tasks.AsyncResult(response.json["task_id"])  # type: ignore[index]
        print(f"  worker: {result.get(timeout=30)}")
        print(f"price: {client.get(f'/products/{product_id}/price').json}")
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
        engine = app.extensions["engine"]
        Base.metadata.drop_all(engine)
        engine.dispose()


if __name__ == "__main__":
    PREFIX = f"shop_{uuid.uuid4().hex}"
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as directory:
            main(f"sqlite:///{directory}/shop.db")
