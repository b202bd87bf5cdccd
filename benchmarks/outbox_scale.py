"""Many workers on one database: no row runs twice, none is missed.

Usage: ``python -m benchmarks.outbox_scale [--url URL] [--rows 100000] [--workers 8]``.

``--workers`` worker processes (``python -m sa_signals.outbox worker``) run while a producer
enqueues ``--rows`` rows in transactions of 1,000. Each run of the handler appends its row's tag
to its process's own file before it writes its effect row (so a run that was rolled back is
counted too); at the end every tag must appear exactly once in the files and in the effects, and
the outbox must be empty.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import subprocess
import tempfile
import time

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from benchmarks.outbox_workers import stop
from benchmarks.outbox_workers import worker_command
from sa_signals import outbox

ROOT = pathlib.Path(__file__).resolve().parent.parent

metadata = sa.MetaData()
table = outbox.table(metadata, "outbox_scale")
effects = sa.Table(
    "outbox_scale_effects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tag", sa.Integer, nullable=False),
)


@outbox.handler("scale.record", inline=False)
def record(tag: int) -> None:
    """Note the run in this process's file, then write the effect."""
    with open(f"{os.environ['OUTBOX_SCALE_RUNS']}/{os.getpid()}", "a") as file:
        file.write(f"{tag}\n")
    sa_signals.current_session().execute(effects.insert().values(tag=tag))


def run(url: str, rows: int, workers: int) -> dict[str, object]:
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    factory = sa_orm.sessionmaker(engine)
    sa_signals.install(factory)
    with tempfile.TemporaryDirectory() as runs:
        command = worker_command(
            url,
            table.name,
            "benchmarks.outbox_scale",
            "--batch",
            "50",
        )
        env = {**os.environ, "OUTBOX_SCALE_RUNS": runs}
        processes = [
            subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
            for _ in range(workers)
        ]
        time.sleep(3)
        start = time.perf_counter()
        for first in range(0, rows, 1000):
            with factory.begin() as session:
                for tag in range(first, min(first + 1000, rows)):
                    outbox.enqueue(session, record, tag)
        produced = time.perf_counter() - start
        while True:
            with engine.connect() as connection:
                left = connection.scalar(sa.select(sa.func.count()).select_from(table))
            if not left:
                break
            time.sleep(0.1)
        drained = time.perf_counter() - start
        stop(processes)
        runs_by_tag: collections.Counter[int] = collections.Counter()
        per_worker = []
        for path in pathlib.Path(runs).iterdir():
            tags = [int(line) for line in path.read_text().split()]
            per_worker.append(len(tags))
            runs_by_tag.update(tags)
    with engine.connect() as connection:
        done = collections.Counter(connection.scalars(sa.select(effects.c.tag)))
    metadata.drop_all(engine)
    engine.dispose()
    twice = [tag for tag, n in runs_by_tag.items() if n > 1]
    missed = [tag for tag in range(rows) if runs_by_tag[tag] == 0 or done[tag] != 1]
    assert not twice, f"rows run more than once: {twice[:10]}"
    assert not missed, f"rows missed or without exactly one effect: {missed[:10]}"
    return {
        "rows": rows,
        "workers": workers,
        "runs": sum(runs_by_tag.values()),
        "run_twice": len(twice),
        "missed": len(missed),
        "runs_per_worker": sorted(per_worker),
        "produce_seconds": round(produced, 1),
        "drain_seconds": round(drained, 1),
        "rows_per_second": round(rows / drained),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test_bench")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    print(run(args.url, args.rows, args.workers))


if __name__ == "__main__":
    main()
