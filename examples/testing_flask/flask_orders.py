"""A Flask app whose orders send a confirmation once committed, tested in ``test_flask_orders.py``.

``SaSignals(commit=True)`` gives each request its own session and commits it after a successful
response; the confirmation is an ``on_commit`` callback, so a refused order sends nothing.
``ORDERS_DATABASE_URL`` picks the database (a SQLite file in the temporary directory by default).
"""

from __future__ import annotations

import os
import tempfile
import typing as t

import flask
import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals.contrib.flask import SaSignals


def make_engine(url: str) -> sa.Engine:
    """Return an engine for ``url``; SQLite gets SQLAlchemy's recipe for working SAVEPOINTs."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":

        @sa_event.listens_for(engine, "connect")
        def _connect(dbapi_connection: t.Any, record: object) -> None:
            dbapi_connection.isolation_level = None

        @sa_event.listens_for(engine, "begin")
        def _begin(connection: sa.Connection) -> None:
            connection.exec_driver_sql("BEGIN")

    return engine


engine = make_engine(
    os.environ.get("ORDERS_DATABASE_URL", f"sqlite:///{tempfile.gettempdir()}/flask_orders.db")
)
db = SaSignals(sa_orm.sessionmaker(engine), commit=True)


class Base(sa_orm.DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "flask_orders"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    item: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))


SOLD_OUT = {"unicorn"}
"""Items that cannot be ordered: the order is written, then refused."""

outbox: list[str] = []
"""What ``deliver()`` sent, in order."""


def deliver(message: str) -> None:
    """Send ``message`` (a stand-in for a mail server)."""
    outbox.append(message)


def create_app() -> flask.Flask:
    """Return the app: ``POST /orders`` (form field ``item``) and ``GET /orders``."""
    app = flask.Flask(__name__)
    db.init_app(app)

    @app.post("/orders")
    def place_order() -> tuple[dict[str, int], int]:
        item = flask.request.form["item"]
        order = Order(item=item)
        db.session.add(order)
        db.session.flush()
        confirmation = f"Order {order.id}: {item}"
        sa_signals.on_commit(lambda: deliver(confirmation), db.session)
        if item in SOLD_OUT:
            flask.abort(409)  # an error status: the request is rolled back
        return {"id": order.id}, 201

    @app.get("/orders")
    def list_orders() -> list[str]:
        return list(db.session.scalars(sa.select(Order.item).order_by(Order.id)))

    return app
