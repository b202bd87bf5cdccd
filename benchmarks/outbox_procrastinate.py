"""The procrastinate application the outbox benchmark compares with (PostgreSQL).

Its worker runs as ``procrastinate --app=benchmarks.outbox_procrastinate.app worker``; the URL
comes from ``SA_SIGNALS_BENCH_POSTGRESQL_URL`` (a SQLAlchemy URL, its driver part dropped).
"""

from __future__ import annotations

import os
import time

import procrastinate
import sqlalchemy as sa


def conninfo() -> str:
    """The libpq connection string of the benchmark's PostgreSQL database."""
    url = sa.make_url(
        os.environ.get(
            "SA_SIGNALS_BENCH_POSTGRESQL_URL",
            "postgresql+psycopg://postgres@127.0.0.1:5432/test_bench",
        )
    )
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo()))


@app.task(name="bench.noop")
def noop() -> None:
    """Do nothing: the throughput runs count the queue's own work."""


@app.task(name="bench.stamp")
def stamp(seq: int) -> None:
    """Append ``seq`` and the wall-clock time the job started to the stamps file."""
    now = time.time()
    with open(os.environ["OUTBOX_BENCH_STAMPS"], "a") as file:
        file.write(f"{seq} {now}\n")
