"""A Flask shop whose price changes invalidate a Redis cache and enqueue a Celery task on commit.

A ``post_save`` receiver on ``Product`` registers two commit-time actions: drop the product's
cached price from Redis, and send the ``reindex`` task to a Celery worker. A request that fails
after changing a price is rolled back, so neither happens; a committed change always does both,
after the COMMIT. The model, the cache, the Celery app and the demo are those of
``shop_common.py``, shared with ``fastapi_shop.py``. The demo starts a worker process on a queue
of its own (RabbitMQ broker, Redis result backend: ``BROKER_URL`` and ``REDIS_URL``, local ones by
default), drives the app with Flask's test client, and stops the worker whatever happens.

Run: ``python examples/flask_shop.py [DATABASE_URL]`` (SQLite in a temporary directory by
default). The demo drops and creates its table ``shop_products`` and drops it at the end, so it
can run again on the same database. To serve the app instead, run
``flask --app "flask_shop:create_app('sqlite:///shop.db')" run`` and
``celery -A shop_common worker`` from this directory.
"""

from __future__ import annotations

import sys
import tempfile

import flask
import shop_common as shop
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals
from sa_signals.contrib.celery import enqueue_on_commit
from sa_signals.contrib.flask import SaSignals


def create_app(url: str) -> flask.Flask:
    engine = sa.create_engine(shop.sync_url(url))
    shop.Base.metadata.create_all(engine)
    app = flask.Flask(__name__)
    db = SaSignals(sa_orm.sessionmaker(engine), app, commit=True)
    Session = db.session

    def on_product_saved(
        sender: type[shop.Product], *, instance: shop.Product, **kw: object
    ) -> None:
        product_id = instance.id
        sa_signals.on_commit(lambda: shop.cache.delete(shop.cache_key(product_id)), Session)
        flask.g.task = enqueue_on_commit(shop.reindex, product_id, instance.price, session=Session)

    signals.post_save.connect(on_product_saved, sender=shop.Product, weak=False)

    @app.get("/products/<int:product_id>/price")
    def get_price(product_id: int) -> dict[str, object]:
        cached = shop.cache.get(shop.cache_key(product_id))
        if cached is not None:
            return {"price": int(cached), "cached": True}
        price = Session.get_one(shop.Product, product_id).price
        shop.cache.set(shop.cache_key(product_id), price)
        return {"price": price, "cached": False}

    @app.put("/products/<int:product_id>/price")
    def set_price(product_id: int) -> dict[str, object]:
        price = int(flask.request.args["value"])
        Session.get_one(shop.Product, product_id).price = price
        Session.flush()
        if price < 0:
            raise ValueError("a price cannot be negative")
        return {"price": price, "task_id": flask.g.task.task_id}

    @app.post("/products/<name>")
    def create(name: str) -> tuple[dict[str, object], int]:
        product = shop.Product(name=name, price=int(flask.request.args["price"]))
        Session.add(product)
        Session.flush()
        return {"id": product.id}, 201

    app.extensions["engine"] = engine
    return app


def main(url: str) -> None:
    with shop.worker(), shop.fresh_tables(url):
        app = create_app(url)
        app.logger.disabled = True  # the failing request's traceback is expected
        client = app.test_client()

        def request(method: str, path: str) -> tuple[int, dict[str, object]]:
            response = client.open(path, method=method)
            return response.status_code, response.json or {}

        try:
            shop.demo(request)
        finally:
            app.extensions["engine"].dispose()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as directory:
            main(f"sqlite:///{directory}/shop.db")
