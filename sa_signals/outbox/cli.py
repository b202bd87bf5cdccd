"""``python -m sa_signals.outbox``: the worker, and the commands that operate the outbox."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import logging
import signal
import sys
import typing as t

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm

import sa_signals

from . import admin
from .async_worker import AsyncWorker
from .claims import DEFAULT_BATCH
from .claims import DEFAULT_LEASE
from .exceptions import NoTableError
from .table import current_table
from .table import DEFAULT_NAME
from .table import set_keep_done
from .table import standalone
from .worker import DEFAULT_POLL
from .worker import Worker

if t.TYPE_CHECKING:
    import collections.abc as c

logger = logging.getLogger("sa_signals.outbox")


def make_engine(url: str, *, pool_size: int = 5) -> sa.Engine:
    """Return an engine for the worker: on SQLite every transaction is ``BEGIN IMMEDIATE``.

    SQLite lets one writer in at a time; taking the write lock at BEGIN makes a claim wait for
    it instead of failing when its read would have to become a write.
    """
    if sa.make_url(url).get_backend_name() != "sqlite":
        return sa.create_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
        )
    return _begin_immediate(sa.create_engine(url, connect_args={"timeout": 30}))


def make_async_engine(url: str, *, pool_size: int = 5) -> sa_asyncio.AsyncEngine:
    """Return an async engine for the worker, as :func:`make_engine` does."""
    if sa.make_url(url).get_backend_name() != "sqlite":
        return sa_asyncio.create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
        )
    engine = sa_asyncio.create_async_engine(url, connect_args={"timeout": 30})
    _begin_immediate(engine.sync_engine)
    return engine


def _begin_immediate(engine: sa.Engine) -> sa.Engine:
    @sa_event.listens_for(engine, "connect")
    def _connect(dbapi_connection: t.Any, record: object) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN (below) itself

    @sa_event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _table(name: str) -> sa.Table:
    try:
        found = current_table()
    except NoTableError:
        return standalone(name)
    return found if found.name == name else standalone(name)


def _import(modules: c.Sequence[str]) -> None:
    for module in modules:
        importlib.import_module(module)


def _is_async(url: str) -> bool:
    return bool(sa.make_url(url).get_dialect().is_async)


def _stop_on_signals(stop: c.Callable[[], None]) -> None:
    def _stop(signum: int, frame: object) -> None:
        logger.info("outbox worker: %s, finishing the rows at hand", signal.Signals(signum).name)
        stop()
        # A second signal stops at once (the claimed rows come back when their lease ends).
        signal.signal(signum, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


def _options(args: argparse.Namespace, table: sa.Table) -> dict[str, t.Any]:
    """The worker's options from the command line."""
    return {
        "table": table,
        "concurrency": args.concurrency,
        "batch": args.batch,
        "lease": args.lease,
        "poll": args.poll,
    }


def _worker(args: argparse.Namespace) -> int:
    _import(args.imports)
    table = _table(args.table)
    if args.keep_done is not None:
        set_keep_done(table, args.keep_done)
    logger.info(
        "outbox worker on %s (%s), concurrency %s",
        sa.make_url(args.url).render_as_string(hide_password=True),
        table.name,
        args.concurrency,
    )
    if _is_async(args.url):
        asyncio.run(_async_worker(args, table))
        return 0
    engine = make_engine(args.url, pool_size=args.concurrency + 2)
    factory = sa_orm.sessionmaker(engine)
    sa_signals.install(factory)
    worker = Worker(factory, **_options(args, table))
    _stop_on_signals(worker.stop)
    try:
        worker.run()
    finally:
        sa_signals.uninstall(factory)
        engine.dispose()
    return 0


async def _async_worker(args: argparse.Namespace, table: sa.Table) -> None:
    engine = make_async_engine(args.url, pool_size=args.concurrency + 2)
    factory = sa_asyncio.async_sessionmaker(engine)
    sa_signals.install(factory)
    worker = AsyncWorker(factory, **_options(args, table))
    loop = asyncio.get_running_loop()

    def stop_soon() -> None:
        # A signal handler interrupts whatever the loop runs: stop the worker from the loop.
        loop.call_soon_threadsafe(worker.stop)

    _stop_on_signals(stop_soon)
    try:
        await worker.run()
    finally:
        sa_signals.uninstall(factory)
        await engine.dispose()


def _with_connection(args: argparse.Namespace, action: c.Callable[..., t.Any]) -> t.Any:
    engine = make_engine(args.url, pool_size=1)
    try:
        with engine.begin() as connection:
            return action(connection, _table(args.table))
    finally:
        engine.dispose()


def _stats(args: argparse.Namespace) -> int:
    found: admin.Stats = _with_connection(args, admin.stats)
    print("\n".join(found.lines()))
    return 0


def _retry(args: argparse.Namespace) -> int:
    count = _with_connection(
        args, lambda c, tb: admin.retry(c, tb, ids=args.ids, handler=args.handler)
    )
    print(f"{count} dead rows are pending again")
    return 0


def _purge(args: argparse.Namespace) -> int:
    older = datetime.timedelta(seconds=args.older_than)
    count = _with_connection(
        args, lambda c, tb: admin.purge(c, tb, older_than=older, dead=args.dead)
    )
    print(f"{count} rows deleted")
    return 0


def parser() -> argparse.ArgumentParser:
    """Return the command line parser."""
    top = argparse.ArgumentParser(
        prog="python -m sa_signals.outbox", description="Run and operate the sa_signals outbox."
    )
    commands = top.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--url", required=True, help="the database URL (SQLAlchemy form)")
        sub.add_argument("--table", default=DEFAULT_NAME, help="the outbox table's name")
        return sub

    work = command(
        "worker",
        "Run due rows until SIGTERM or SIGINT (with asyncio tasks if the URL names an async"
        " driver, which coroutine handlers need).",
    )
    work.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module registering handlers (repeat for several)",
    )
    work.add_argument("--concurrency", type=int, default=1, help="threads (or tasks) running rows")
    work.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="rows per claim")
    work.add_argument("--lease", type=float, default=DEFAULT_LEASE, help="seconds a claim holds")
    work.add_argument("--poll", type=float, default=DEFAULT_POLL, help="seconds between polls")
    work.add_argument(
        "--keep-done", type=float, default=None, help="keep done rows this many seconds"
    )
    work.set_defaults(run=_worker)
    command("stats", "Print the pending, due, dead and done counts.").set_defaults(run=_stats)
    again = command("retry", "Make dead rows pending again.")
    again.add_argument("--id", dest="ids", type=int, action="append", default=[])
    again.add_argument("--handler", default=None, help="only the dead rows of this handler")
    again.set_defaults(run=_retry)
    purge = command("purge", "Delete done rows (and, with --dead, dead rows) older than a time.")
    purge.add_argument("--older-than", type=float, required=True, metavar="SECONDS")
    purge.add_argument("--dead", action="store_true", help="delete old dead rows too")
    purge.set_defaults(run=_purge)
    return top


def main(argv: c.Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    status: int = args.run(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
