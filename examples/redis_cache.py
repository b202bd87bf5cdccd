"""Redis cache invalidation from commit-time change sets.

Product prices are cached in Redis, read through. A receiver of ``signals.committed`` deletes the
cached key of every product a transaction changed, after the COMMIT only: a rolled-back change,
or one inside a rolled-back savepoint, never invalidates; a committed one, including an ORM bulk
UPDATE, always does.

Run: ``python examples/redis_cache.py [DATABASE_URL [REDIS_URL]]`` (defaults: a temporary
SQLite file, and the ``REDIS_URL`` environment variable or ``redis://127.0.0.1:6379/0``). Its
table is dropped and created at the start and dropped at the end, so it can run again on the same
database. Needs the ``redis`` extra.
"""

from __future__ import annotations

import os
import sys
import tempfile
import typing as t
import uuid

import redis
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals


class Base(sa_orm.DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "redis_example_products"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))
    price: sa_orm.Mapped[int]


class PriceCache:
    """A read-through cache of product prices in Redis, under one key prefix."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.invalidated: list[int | None] = []

    def key(self, product_id: int) -> str:
        return f"{self.prefix}product:{product_id}:price"

    def price(self, session: sa_orm.Session, product_id: int) -> int:
        cached = self.client.get(self.key(product_id))
        if cached is not None:
            return int(cached)
        price = session.get_one(Product, product_id).price
        self.client.set(self.key(product_id), price)
        return price

    def is_cached(self, product_id: int) -> bool:
        return bool(self.client.exists(self.key(product_id)))

    def on_committed(
        self, model: type[Product], *, change: sa_signals.Change, **kw: t.Any
    ) -> None:
        """Delete the cached entry of a committed change (all entries if the rows are unknown)."""
        if change.identity is None:  # a bulk statement whose rows the database did not return
            keys = list(self.client.scan_iter(f"{self.prefix}product:*"))
            if keys:
                self.client.delete(*keys)
            self.invalidated.append(None)
            return
        (product_id,) = change.identity
        self.client.delete(self.key(product_id))
        self.invalidated.append(product_id)

    def clear(self) -> None:
        keys = list(self.client.scan_iter(f"{self.prefix}*"))
        if keys:
            self.client.delete(*keys)


def main(database_url: str, redis_url: str, prefix: str | None = None) -> PriceCache:
    engine = sa.create_engine(database_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    Session = sa_orm.scoped_session(sa_orm.sessionmaker(engine))
    sa_signals.install(Session)
    cache = PriceCache(redis.Redis.from_url(redis_url), prefix or f"example:{uuid.uuid4().hex}:")
    signals.committed.connect(cache.on_committed, sender=Product)
    try:
        with sa_signals.session_scope(Session) as session:
            session.add_all(
                [Product(id=1, name="tea", price=3), Product(id=2, name="jam", price=5)]
            )
        assert cache.invalidated == [1, 2]  # the inserts committed: nothing was cached yet
        cache.invalidated.clear()
        with sa_signals.session_scope(Session) as session:
            print(f"tea costs {cache.price(session, 1)}, jam costs {cache.price(session, 2)}")

        print("1. a change that rolls back never invalidates:")
        with Session() as session:
            session.get_one(Product, 1).price = 100
            session.flush()
            session.rollback()
        assert cache.is_cached(1)
        assert cache.invalidated == []
        print("   tea is still cached")

        print("2. a change inside a rolled-back savepoint never invalidates:")
        with Session() as session, session.begin():
            savepoint = session.begin_nested()
            session.get_one(Product, 1).price = 200
            session.flush()
            savepoint.rollback()
        assert cache.is_cached(1)
        assert cache.invalidated == []
        print("   tea is still cached")

        print("3. a committed change always invalidates, after the COMMIT:")
        with sa_signals.session_scope(Session) as session:
            session.get_one(Product, 1).price = 4
            session.flush()
            assert cache.is_cached(1)  # not committed yet
        assert not cache.is_cached(1)
        assert cache.invalidated == [1]
        with sa_signals.session_scope(Session) as session:
            print(f"   tea now costs {cache.price(session, 1)}")

        print("4. a committed bulk UPDATE invalidates too:")
        with sa_signals.session_scope(Session) as session:
            session.execute(sa.update(Product).where(Product.name == "jam").values(price=6))
        assert not cache.is_cached(2)
        with sa_signals.session_scope(Session) as session:
            print(f"   jam now costs {cache.price(session, 2)}")
            assert cache.price(session, 2) == 6
        print(f"invalidated: {cache.invalidated}")
        return cache
    finally:
        signals.committed.disconnect(cache.on_committed, sender=Product)
        cache.clear()
        Session.remove()
        sa_signals.uninstall(Session)
        Base.metadata.drop_all(engine)
        engine.dispose()


if __name__ == "__main__":
    default = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = sys.argv[2] if len(sys.argv) > 2 else default
    if len(sys.argv) > 1:
        main(sys.argv[1], redis_url)
    else:
        with tempfile.TemporaryDirectory() as directory:
            main(f"sqlite:///{directory}/shop.db", redis_url)
