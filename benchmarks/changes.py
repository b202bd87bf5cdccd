"""What change tracking costs a flush and commit, and what it costs when nobody listens.

Each round inserts ``ROWS`` objects, commits, updates them all, commits, deletes them, commits,
then runs a few ORM SELECTs. Four set-ups: SQLAlchemy alone (not installed), installed with no
change receivers (the opt-in path must cost what the core costs), installed with a
``models_committed`` receiver, and the same plus a ``committed`` receiver per model.

Run: ``python benchmarks/changes.py [DATABASE_URL]`` (default: an in-memory SQLite database).
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import gc
import sys
import time
import typing as t

import blinker
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals

ROWS = 200
ROUNDS = 30


class Base(sa_orm.DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "bench_rows"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))
    value: sa_orm.Mapped[int]


def one_round(maker: sa_orm.sessionmaker[sa_orm.Session]) -> float:
    gc.collect()  # as timeit does: no collection of an earlier round's garbage in this one
    gc.disable()
    try:
        return _timed_round(maker)
    finally:
        gc.enable()


def _timed_round(maker: sa_orm.sessionmaker[sa_orm.Session]) -> float:
    start = time.perf_counter()
    with maker() as session:
        rows = [Row(name=f"r{i}", value=i) for i in range(ROWS)]
        session.add_all(rows)
        session.commit()
        for row in rows:
            row.value += 1
        session.commit()
        for row in rows:
            session.delete(row)
        session.commit()
        for _ in range(20):
            session.scalars(sa.select(Row).limit(1)).all()
    return time.perf_counter() - start


def noop(sender: object, **kwargs: t.Any) -> None:
    pass


@contextlib.contextmanager
def receivers(*pairs: tuple[t.Any, t.Any]) -> c.Iterator[None]:
    for signal, sender in pairs:
        signal.connect(noop, sender=sender)
    try:
        yield
    finally:
        for signal, _ in pairs:
            # Without a sender: blinker keeps a receiver disconnected from one sender listed.
            signal.disconnect(noop)


def main(url: str) -> None:
    engine = sa.create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    plain = sa_orm.sessionmaker(engine)
    maker = sa_orm.sessionmaker(engine)
    sa_signals.install(maker)
    setups: dict[str, tuple[sa_orm.sessionmaker[sa_orm.Session], tuple[t.Any, ...]]] = {
        "SQLAlchemy alone": (plain, ()),
        "installed, no change receivers": (maker, ()),
        "+ models_committed receiver": (maker, ((signals.models_committed, blinker.ANY),)),
        "+ committed receiver": (
            maker,
            ((signals.models_committed, blinker.ANY), (signals.committed, Row)),
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in setups}
    try:
        # Rounds are interleaved so that a busy machine disturbs every set-up alike.
        for _ in range(ROUNDS + 1):
            for name, (factory, pairs) in setups.items():
                with receivers(*pairs):
                    times[name].append(one_round(factory))
    finally:
        sa_signals.uninstall(maker)
        Base.metadata.drop_all(engine)
        engine.dispose()
    # The first round warms the compiled-statement caches; the least disturbed run counts.
    results = {name: min(values[1:]) for name, values in times.items()}
    base = results["SQLAlchemy alone"]
    print(f"{ROWS} rows inserted, updated, deleted (3 commits), best of {ROUNDS} rounds")
    for name, seconds in results.items():
        print(f"  {name:34} {seconds * 1000:8.2f} ms  {seconds / base:5.2f}x")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sqlite://")
