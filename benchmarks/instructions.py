"""Count the instructions of one transaction of each workload and system, with callgrind.

Usage: ``python -m benchmarks.instructions [--workload W ...] [--db NAME ...] [--system S ...]
[--transactions N] [--layouts K] [--jobs J]``; see ``benchmarks/README.md``.

Each figure comes from runs of this module's worker (``--worker``) under ``valgrind
--tool=callgrind --instr-atstart=no``: the worker warms up, switches the instrumentation on with
``vgdb`` and exits right after its N transactions, so only those are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections.abc as c
import concurrent.futures
import contextlib
import gc
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import typing as t

from benchmarks import django_system
from benchmarks.run import ALL_WORKLOADS
from benchmarks.run import ASYNC_DATABASES
from benchmarks.run import ASYNC_WORKLOADS
from benchmarks.run import DATABASES
from benchmarks.systems import sqlite_engine
from benchmarks.systems import SYSTEMS

AMPLIFICATION = 300
"""Calls per transaction of the amplified workloads, as in a full ``python -m benchmarks``."""

CALLS = {
    "A-cb": AMPLIFICATION,
    "A-acb": AMPLIFICATION,
    "A-recv": AMPLIFICATION,
    "A-query": AMPLIFICATION // 10,
    "A-qc": AMPLIFICATION // 10,
}
"""Calls per transaction of each amplified workload, for the per-call figures."""

WARM_UP = 20
"""Transactions run before counting: they fill SQLAlchemy's caches and the pools."""

LABELS = {cls.prefix: cls.label for cls in SYSTEMS} | {"django": "Django ORM"}
"""System names on the command line, and the label each is printed with."""

UNSUPPORTED = "unsupported"
"""What a worker prints when its system does not run the workload (W6 without diffs)."""

ROOT = pathlib.Path(__file__).resolve().parent.parent

VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null"]
"""Counting starts switched off: the worker switches it on for its transactions."""

COLLECTED = re.compile(r"^==\d+== Collected : (\d+)$", re.MULTILINE)

Key = tuple[str, str, str]
"""(database, workload, system)."""


def make_system(name: str, db: str, directory: str, runner: asyncio.Runner | None = None) -> t.Any:
    """Build system ``name`` on ``db``, as ``benchmarks.run.make_systems`` does."""
    if runner is not None:
        from benchmarks import asystems

        system_class = next(cls for cls in asystems.SYSTEMS if cls.prefix == name)
        return system_class(asystems.make_engine(db), AMPLIFICATION, runner)
    if name == "django":
        return django_system.DjangoSystem(db.removeprefix("sqlite-"), AMPLIFICATION)
    system_class = next(cls for cls in SYSTEMS if cls.prefix == name)
    if db == "sqlite-memory":
        return system_class(sqlite_engine("sqlite://", wal=False), AMPLIFICATION)
    return system_class(sqlite_engine(f"sqlite:///{directory}/{name}.db", wal=True), AMPLIFICATION)


def work(
    name: str, workload: str, db: str, count: int, directory: str, *, counted: bool = False
) -> None:
    """Run ``count`` transactions of ``workload`` after a warm-up, as ``measure()`` runs a batch.

    With ``counted``, callgrind's instrumentation is switched on for those transactions and the
    process exits right after them. An async system runs them all in one task of its event loop.
    """
    runner = asyncio.Runner() if db in ASYNC_DATABASES else None
    with runner or contextlib.nullcontext():
        system = make_system(name, db, directory, runner)
        try:
            if not system.setup(workload):
                print(UNSUPPORTED)
                return
            transaction = system.transaction(workload)
            system.enter()
            system.before_batch(workload)
            try:
                if runner is None:
                    _run(transaction, count, counted)
                else:
                    runner.run(_arun(transaction, count, counted))
            finally:
                gc.unfreeze()
                system.after_batch(workload)
                system.exit()
        finally:
            system.teardown(workload)
            system.close()


def _run(transaction: c.Callable[[], None], count: int, counted: bool) -> None:
    for _ in range(WARM_UP):
        transaction()
    _start(counted)
    for _ in range(count):
        transaction()
    _stop(counted)


async def _arun(transaction: c.Callable[[], c.Awaitable[None]], count: int, counted: bool) -> None:
    for _ in range(WARM_UP):
        await transaction()
    _start(counted)
    for _ in range(count):
        await transaction()
    _stop(counted)


def _start(counted: bool) -> None:
    # As the harness does: the long-lived objects stay out of the collector's way.
    gc.collect()
    gc.freeze()
    if counted:
        # vgdb reaches this process while it waits for vgdb: the return from that wait
        # (about 25,000 instructions) is all that is counted besides the transactions.
        command = ["vgdb", f"--pid={os.getpid()}", "instrumentation", "on"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def _stop(counted: bool) -> None:
    if counted:
        # The clean-up and the interpreter's finalization would be counted too; the parent
        # removes the temporary directory.
        os._exit(0)


def count(key: Key, transactions: int, layout: int) -> int | None:
    """Instructions of ``transactions`` transactions of ``key`` in one callgrind run.

    ``layout`` pads the environment, which shifts where the interpreter allocates its objects:
    CPython's type attribute cache is indexed by string addresses, so each layout has its own
    cache collisions and its own count.
    """
    worker = [sys.executable, "-m", "benchmarks.instructions", "--worker", *key]
    command = [*VALGRIND, *worker, str(transactions)]
    with tempfile.TemporaryDirectory(prefix="sa_signals_instructions_") as directory:
        # The worker's database files, Django's and vgdb's pipes go to this run's own TMPDIR.
        padding = "." * 16 * layout
        env = os.environ | {
            "PYTHONHASHSEED": "0",
            "TMPDIR": directory,
            "SA_SIGNALS_BENCH_LAYOUT": padding,
        }
        result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    found = COLLECTED.search(result.stderr)
    if result.returncode or not found:
        msg = f"callgrind run of {' '.join(key)} failed:\n{result.stderr[-3000:]}"
        raise RuntimeError(msg)
    if result.stdout.strip() == UNSUPPORTED:
        return None
    return int(found.group(1))


def measure(
    keys: list[Key], transactions: int, layouts: int, jobs: int
) -> dict[Key, list[float] | None]:
    """Instructions per transaction of every key, one figure per layout, ``jobs`` at a time."""
    runs = [(key, layout) for key in keys for layout in range(layouts)]
    results: dict[Key, list[float] | None] = {key: [] for key in keys}
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(count, key, transactions, layout): key for key, layout in runs}
        try:
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                key, total = futures[future], future.result()
                figures = results[key]
                if total is None:
                    results[key] = None
                elif figures is not None:
                    figures.append(total / transactions)
                print(f"[{done}/{len(runs)}] {' '.join(key)}", file=sys.stderr, flush=True)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return results


def report(results: dict[Key, list[float] | None], systems: list[str]) -> None:
    """Print one table per database: median per transaction, spread over layouts, ratios."""
    medians = {key: statistics.median(v) for key, v in results.items() if v}
    for db in dict.fromkeys(key[0] for key in results):
        print(f"\n== {DATABASES[db]}: callgrind instructions per transaction")
        print(f"{'workload':<8} {'system':<16} {'instructions':>12} {'spread':>7}", end="")
        print(f" {'x bare':>7} {'per call':>9}")
        for workload in dict.fromkeys(key[1] for key in results if key[0] == db):
            bare = medians.get((db, workload, "bare"))
            for system in systems:
                key = (db, workload, system)
                if key not in results:
                    continue
                line = f"{workload:<8} {LABELS[system]:<16}"
                figures = results[key]
                if not figures:
                    print(f"{line} {'n/a':>12}")
                    continue
                median = medians[key]
                spread = (max(figures) - min(figures)) / median
                line += f" {median:12,.0f} {spread:7.2%} "
                line += f"{median / bare:7.3f}" if bare else f"{'n/a':>7}"
                base = medians.get((db, "W1", system))
                if workload in CALLS and base:
                    line += f" {(median - base) / CALLS[workload]:9,.0f}"
                print(line)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__)
    parser.add_argument("--workload", action="append", choices=list(ALL_WORKLOADS))
    parser.add_argument(
        "--db", action="append", choices=["sqlite-memory", "sqlite-file", "aiosqlite-memory"]
    )
    systems = [name for name in LABELS if name != "django" or django_system.AVAILABLE]
    parser.add_argument("--system", action="append", choices=systems)
    parser.add_argument("--transactions", type=int, default=50, help="counted per run (50)")
    parser.add_argument("--layouts", type=int, default=3, help="runs per figure (3)")
    parser.add_argument("--jobs", type=int, default=2, help="valgrind processes at a time (2)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workload = args.workload or ["W1", "W2", "W4", "W5"]
    args.db = args.db or ["sqlite-memory"]
    args.system = args.system or systems
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        db, workload, system, transactions = args.worker
        directory = tempfile.mkdtemp(prefix="worker_")
        work(system, workload, db, int(transactions), directory, counted=True)
        return 0
    for tool in ("valgrind", "vgdb"):
        if shutil.which(tool) is None:
            msg = f"{tool} was not found on PATH: install valgrind (apt-get install valgrind)"
            raise SystemExit(msg)
    keys = [
        (db, w, s)
        for db in args.db
        for w in args.workload
        for s in args.system
        # Django runs on SQLite only, coroutine callbacks on the async systems only.
        if not (s == "django" and db in ASYNC_DATABASES)
        and not (w in ASYNC_WORKLOADS and db not in ASYNC_DATABASES)
    ]
    print(
        f"sa_signals instructions: {args.transactions} transactions after {WARM_UP} of warm-up,"
        f" median of {args.layouts} memory layouts (spread: (max - min) / median over them);"
        " callgrind counts user-space instructions only"
    )
    report(measure(keys, args.transactions, args.layouts, args.jobs), args.system)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
