"""On-commit cache invalidation, end to end, on SQLite.

A read-through cache holds product prices. Changing a price registers an ``on_commit`` callback
that drops the cached entry: only once the change truly committed, never for a rollback or a
rolled-back savepoint. A ``post_save`` receiver writes an audit row in the callback's distinct
session. Run: ``python examples/cache_invalidation.py [DATABASE_URL]`` (SQLite in a temporary
directory by default); its tables ``products`` and ``audit`` are dropped and created at the start
and dropped at the end, so it can run again on the same database.
"""

from __future__ import annotations

import sys
import tempfile

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals


class Base(sa_orm.DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))
    price: sa_orm.Mapped[int]


class AuditRow(Base):
    __tablename__ = "audit"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    message: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(200))


cache: dict[int, int] = {}


def cached_price(Session: sa_orm.scoped_session[sa_orm.Session], product_id: int) -> int:
    if product_id not in cache:
        cache[product_id] = Session.get_one(Product, product_id).price
        print(f"  cache fill  product {product_id} -> {cache[product_id]}")
    return cache[product_id]


def main(url: str) -> None:
    engine = sa.create_engine(url)
    Base.metadata.drop_all(engine)  # left by an interrupted run
    Base.metadata.create_all(engine)
    try:
        demo(engine)
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


def demo(engine: sa.Engine) -> None:
    Session = sa_orm.scoped_session(sa_orm.sessionmaker(engine))
    sa_signals.install(Session)

    def on_product_saved(
        sender: type[Product], *, instance: Product, created: bool, **kw: object
    ) -> None:
        product_id, price = instance.id, instance.price

        def invalidate() -> None:
            cache.pop(product_id, None)
            Session.add(AuditRow(message=f"product {product_id} now costs {price}"))
            print(f"  committed   product {product_id} price {price}: cache entry dropped")

        sa_signals.on_commit(invalidate, Session)

    # A nested function: connected strongly, or blinker would let it be garbage-collected.
    signals.post_save.connect(on_product_saved, sender=Product, weak=False)

    with sa_signals.session_scope(Session) as session:
        session.add(Product(id=1, name="tea", price=3))
    print(f"price read through the cache: {cached_price(Session, 1)}")

    print("1. a change that rolls back never invalidates:")
    with Session() as session:
        session.get_one(Product, 1).price = 100
        session.flush()
        session.rollback()
    print(f"  cached price is still {cache[1]}")

    print("2. a change inside a rolled-back savepoint never invalidates:")
    session = Session()
    with session.begin():
        savepoint = session.begin_nested()
        session.get_one(Product, 1).price = 200
        session.flush()
        savepoint.rollback()
    print(f"  cached price is still {cache[1]}")

    print("3. a committed change always invalidates, after the COMMIT:")
    with sa_signals.session_scope(Session) as session:
        session.get_one(Product, 1).price = 4
    print(f"price read through the cache: {cached_price(Session, 1)}")

    with Session() as session:
        for message in session.scalars(sa.select(AuditRow.message)):
            print(f"audit: {message}")
    assert cached_price(Session, 1) == 4
    Session.remove()
    signals.post_save.disconnect(on_product_saved)
    sa_signals.uninstall(Session)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as directory:
            main(f"sqlite:///{directory}/shop.db")
