"""A shop served by four worker processes, each caching products in memory, kept fresh by the
fan-out.

Every worker is a WSGI application with its own in-process cache of product prices. A worker
that changes a price drops its own entry on ``signals.committed`` and publishes the change set;
every other worker drops the entry on ``signals.remote_committed`` and flushes its whole cache on
``signals.remote_gap``. Refills go through :class:`sa_signals.fanout.Generations`, so a reader
racing a writer never caches the old price.

Run ``python examples/fanout_shop.py [--database URL] [--transport URL] [--workers N]``:
it creates the table, starts the workers on loopback (ports printed) and serves until Ctrl-C.
``--transport`` is ``postgresql://...`` (NOTIFY), ``redis://...`` (pub/sub) or
``redis+stream://...`` (a Redis stream). Defaults: SQLite in a temporary directory and Redis
pub/sub on ``REDIS_URL`` (``redis://127.0.0.1:6379/0``). The table is dropped at the start and
at the end. Then::

    curl http://127.0.0.1:PORT/products/1                       # {"price": 3, "cached": false ...}
    curl -X POST 'http://127.0.0.1:OTHER_PORT/products/1?price=4'
    curl http://127.0.0.1:PORT/products/1                       # {"price": 4 ...}

Under gunicorn the same application runs unchanged: ``gunicorn -w 4
'fanout_shop:create_app("postgresql://...", "postgresql://...")'`` (each worker builds its own
publisher and listener when it imports the application, after the fork).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import typing as t
import urllib.parse
import wsgiref.simple_server

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import fanout
from sa_signals import signals

if t.TYPE_CHECKING:
    from wsgiref.types import StartResponse
    from wsgiref.types import WSGIApplication
    from wsgiref.types import WSGIEnvironment


class Base(sa_orm.DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "fanout_shop_products"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))
    price: sa_orm.Mapped[int]


def make_transport(url: str, channel: str) -> fanout.Transport:
    """The transport named by ``url``: PostgreSQL NOTIFY, Redis pub/sub, or a Redis stream."""
    if url.startswith("postgresql"):
        from sa_signals.fanout.postgresql import PostgresNotify

        return PostgresNotify(url, channel.replace("-", "_"))
    if url.startswith("redis+stream://"):
        from sa_signals.fanout.redis_streams import RedisStream

        return RedisStream(url.replace("redis+stream://", "redis://", 1), channel)
    from sa_signals.fanout.redis_pubsub import RedisPubSub

    return RedisPubSub(url, channel)


class PriceCache:
    """Product prices cached in this process, invalidated locally and across processes."""

    def __init__(self, Session: sa_orm.scoped_session[sa_orm.Session]) -> None:
        self.Session = Session
        self.prices: dict[int, int] = {}
        self.generations = fanout.Generations()
        self.lock = threading.Lock()

    def price(self, product_id: int) -> tuple[int, bool]:
        """Return the price of a product and whether it came from the cache."""
        cached = self.prices.get(product_id)
        if cached is not None:
            return cached, True
        # The token comes before the transaction that loads the price (see docs/fanout.md).
        token = self.generations.token(product_id)
        with sa_signals.session_scope(self.Session) as session:
            price = session.get_one(Product, product_id).price
        self.generations.store(self.prices, product_id, price, token)
        return price, False

    def committed_here(
        self, model: type[Product], *, change: sa_signals.Change, **kw: t.Any
    ) -> None:
        self.drop(change.identity)

    def committed_elsewhere(
        self, model: type[Product], *, changes: list[fanout.RemoteChange], **kw: t.Any
    ) -> None:
        for change in changes:
            self.drop(change.identity)

    def drop(self, identity: tuple[t.Any, ...] | None) -> None:
        if identity is None:  # rows unknown: the whole table may have changed
            self.generations.invalidate_all(self.prices)
        else:
            self.generations.invalidate(identity[0], self.prices)

    def flush(self, listener: object, *, reason: str, **kw: t.Any) -> None:
        self.generations.invalidate_all(self.prices)


def create_app(
    database_url: str, transport_url: str, channel: str = "fanout-shop"
) -> WSGIApplication:
    """Build one worker: its engine, cache, publisher and listener, and the WSGI application."""
    engine = sa.create_engine(database_url)
    Session = sa_orm.scoped_session(sa_orm.sessionmaker(engine))
    sa_signals.install(Session)
    cache = PriceCache(Session)
    signals.committed.connect(cache.committed_here, sender=Product)
    signals.remote_committed.connect(cache.committed_elsewhere, sender=Product)
    signals.remote_gap.connect(cache.flush)
    transport = make_transport(transport_url, channel)
    fanout.publish(Session, transport)  # stopped at exit
    listener = fanout.listen(transport, models=Base)
    listener.wait_ready(10)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        parts = environ["PATH_INFO"].strip("/").split("/")
        if len(parts) != 2 or parts[0] != "products" or not parts[1].isdigit():
            return respond(start_response, "404 Not Found", {"error": "no such page"})
        product_id = int(parts[1])
        if environ["REQUEST_METHOD"] == "POST":
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            with sa_signals.session_scope(Session) as session:
                session.get_one(Product, product_id).price = int(query["price"][0])
            price, cached = int(query["price"][0]), False
        else:
            price, cached = cache.price(product_id)
        body = {"id": product_id, "price": price, "cached": cached, "pid": os.getpid()}
        return respond(start_response, "200 OK", body)

    return app


def respond(start_response: StartResponse, status: str, body: dict[str, t.Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


class QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: t.Any) -> None:
        pass


def serve_worker(database_url: str, transport_url: str, channel: str) -> None:
    """Run one worker on a free loopback port; print the port, serve until stdin closes."""
    app = create_app(database_url, transport_url, channel)
    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    print(server.server_port, flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()
    server.shutdown()
    server.server_close()


class Shop:
    """The workers started by :func:`start`: their URLs, and :meth:`stop`."""

    def __init__(self, workers: list[subprocess.Popen[str]], urls: list[str]) -> None:
        self.workers = workers
        self.urls = urls

    def stop(self) -> None:
        for worker in self.workers:
            assert worker.stdin is not None
            worker.stdin.close()
        for worker in self.workers:
            worker.wait(20)
            assert worker.stdout is not None
            worker.stdout.close()


def start(
    database_url: str, transport_url: str, workers: int = 4, channel: str = "fanout-shop"
) -> Shop:
    """Create and fill the table, then start ``workers`` worker processes."""
    engine = sa.create_engine(database_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with sa_orm.Session(engine) as session, session.begin():
        session.add_all([Product(id=1, name="tea", price=3), Product(id=2, name="jam", price=5)])
    engine.dispose()
    command = [sys.executable, __file__, "--serve", database_url, transport_url, channel]
    processes = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    urls = []
    for process in processes:
        assert process.stdout is not None
        urls.append(f"http://127.0.0.1:{int(process.stdout.readline())}")
    return Shop(processes, urls)


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        serve_worker(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default=None)
    parser.add_argument(
        "--transport", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--workers", type=int, default=4)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        database = arguments.database or f"sqlite:///{directory}/shop.db"
        shop = start(database, arguments.transport, arguments.workers)
        print("workers:", " ".join(shop.urls), flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            shop.stop()
            engine = sa.create_engine(database)
            Base.metadata.drop_all(engine)
            engine.dispose()


if __name__ == "__main__":
    main()
