"""Run every workload on every system, interleaved, and print medians, p90 and ratios.

Usage: ``python -m benchmarks [--quick] [--postgresql URL] [--db NAME ...]``; see
``benchmarks/README.md``. The ``aiosqlite-memory`` and ``asyncpg`` databases run the async twins
of the SQLAlchemy systems (:mod:`benchmarks.asystems`) in one event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import statistics
import sys
import tempfile
import time
import typing as t
import warnings

import sqlalchemy as sa

import sa_signals
from benchmarks import django_system
from benchmarks.systems import Layer
from benchmarks.systems import noop
from benchmarks.systems import ROWS
from benchmarks.systems import sqlite_engine
from benchmarks.systems import SYSTEMS
from sa_signals import signals

WORKLOADS = {
    "W1": "insert 10 rows, commit",
    "W2": "W1 + 10 on_commit callbacks",
    "W3": "W1 + 10 post_save receivers (100 calls)",
    "W4": "insert 10, 10 callbacks, roll back",
    "W5": "W1 + savepoint released + one rolled back",
    "W6": "models_committed diffs, 10 updated rows",
    "A-cb": "W1 + {n} on_commit callbacks",
    "A-recv": "W1 + {r} receivers ({n} calls)",
    "A-query": "W1 + {q} callbacks doing 1 query",
    "A-qc": "A-query, each session committed",
}
"""Workload names and what one transaction of each does (A-* are the amplified ones)."""

ASYNC_WORKLOADS = {"A-acb": "W1 + {n} coroutine callbacks"}
"""Workloads of the async systems only: a coroutine function is a callback only there."""

ALL_WORKLOADS = WORKLOADS | ASYNC_WORKLOADS

DATABASES = {
    "sqlite-memory": "SQLite :memory:",
    "sqlite-file": "SQLite file (WAL, synchronous=NORMAL)",
    "postgresql": "PostgreSQL",
    "aiosqlite-memory": "asyncio, aiosqlite :memory:",
    "asyncpg": "asyncio, PostgreSQL (asyncpg)",
}

ASYNC_DATABASES = ("aiosqlite-memory", "asyncpg")
"""The databases the async systems run on, with ``AsyncSession``s."""

SYSTEM_LABELS = ["bare SQLAlchemy", "hand-rolled", "sa_signals", "Django ORM"]

Samples = list[float]


class Settings(t.NamedTuple):
    rounds: int
    batch: int
    amplification: int
    memory: int
    clock: str = "cpu"


CLOCKS: dict[str, t.Callable[[], float]] = {
    "cpu": time.thread_time,
    "process": time.process_time,
    "wall": time.perf_counter,
}
"""``cpu``: this thread's CPU time, blind to other processes competing for the machine (SQLite
runs in-process, so it is all of a transaction's work); ``process``: the CPU time of all this
process's threads (aiosqlite runs SQLite in a thread of its own); ``wall``: elapsed time."""


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the harness")
    parser.add_argument("--rounds", type=int, help="timed batches per system (default 15)")
    parser.add_argument("--batch", type=int, help="transactions per batch (default 20)")
    parser.add_argument(
        "--memory", type=int, help="transactions of the memory check (default 100000)"
    )
    parser.add_argument(
        "--db",
        action="append",
        choices=list(DATABASES),
        help="databases to run (default: both SQLite ones, and PostgreSQL when a URL is given);"
        " aiosqlite-memory and asyncpg run the asyncio systems",
    )
    parser.add_argument(
        "--postgresql",
        default=os.environ.get("SA_SIGNALS_BENCH_POSTGRESQL_URL"),
        help="PostgreSQL URL (default: $SA_SIGNALS_BENCH_POSTGRESQL_URL)",
    )
    parser.add_argument(
        "--workload", action="append", choices=list(ALL_WORKLOADS), help="workloads to run"
    )
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        help="cpu (default on SQLite), process (always used on aiosqlite, whose thread runs"
        " SQLite) or wall (always used on PostgreSQL, whose server works in another process)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        settings = Settings(rounds=2, batch=2, amplification=30, memory=2000)
    else:
        settings = Settings(rounds=15, batch=20, amplification=300, memory=100_000)
    settings = settings._replace(
        rounds=args.rounds or settings.rounds,
        batch=args.batch or settings.batch,
        memory=settings.memory if args.memory is None else args.memory,
        clock=args.clock or "cpu",
    )
    if not args.db:
        args.db = ["sqlite-memory", "sqlite-file"] + (["postgresql"] if args.postgresql else [])
    for db in ("postgresql", "asyncpg"):
        if db in args.db and not args.postgresql:
            parser.error(f"--db {db} needs --postgresql URL")
    return args, settings


def make_systems(
    db: str, url: str | None, directory: str, settings: Settings, runner: asyncio.Runner | None
) -> list[t.Any]:
    if runner is not None:
        # Imported only here: the sync runs never import sqlalchemy.ext.asyncio.
        from benchmarks import asystems

        return asystems.make_systems(db, url, settings.amplification, runner)
    systems: list[t.Any] = []
    for system_class in SYSTEMS:
        if db == "sqlite-memory":
            engine = sqlite_engine("sqlite://", wal=False)
        elif db == "sqlite-file":
            engine = sqlite_engine(f"sqlite:///{directory}/{system_class.prefix}.db", wal=True)
        else:
            engine = sa.create_engine(t.cast(str, url))
        systems.append(system_class(engine, settings.amplification))
    if db.startswith("sqlite") and django_system.AVAILABLE:
        systems.append(
            django_system.DjangoSystem(db.removeprefix("sqlite-"), settings.amplification)
        )
    return systems


Batch = t.Callable[[t.Callable[[], t.Any], Settings], float]
"""Runs a batch of transactions; returns seconds per transaction."""


def measure(
    systems: list[t.Any],
    workload: str,
    settings: Settings,
    rng: random.Random,
    batch: Batch | None = None,
) -> tuple[dict[str, Samples | None], dict[str, Samples]]:
    """Time ``workload`` on every system, interleaving their batches; seconds per transaction.

    For an amplified workload each system also runs a W1 batch right before or after each of its
    batches; the second result holds the per-round differences (amplified - W1), so that the
    per-call figures do not carry the drift of a noisy machine.
    """
    _batch = batch or _run_batch
    samples: dict[str, Samples | None] = {}
    deltas: dict[str, Samples] = {}
    active = []
    for system in systems:
        if system.setup(workload):
            samples[system.label] = []
            base = system.transaction("W1") if workload.startswith("A-") else None
            active.append((system, system.transaction(workload), base))
        else:
            samples[system.label] = None
    try:
        # Round 0 warms caches and the connection pools; it is not recorded.
        for round_ in range(settings.rounds + 1):
            rng.shuffle(active)
            for system, transaction, base in active:
                system.enter()
                try:
                    if base is not None and round_ % 2:
                        floor = _batch(base, settings)
                    system.before_batch(workload)
                    try:
                        elapsed = _batch(transaction, settings)
                    finally:
                        system.after_batch(workload)
                    if base is not None and not round_ % 2:
                        floor = _batch(base, settings)
                finally:
                    system.exit()
                if round_:
                    t.cast(Samples, samples[system.label]).append(elapsed)
                    if base is not None:
                        deltas.setdefault(system.label, []).append(elapsed - floor)
    finally:
        for system in systems:
            system.teardown(workload)
    return samples, deltas


def _run_batch(transaction: t.Callable[[], None], settings: Settings) -> float:
    clock, count = CLOCKS[settings.clock], settings.batch
    start = clock()
    for _ in range(count):
        transaction()
    return (clock() - start) / count


def paired_ratio(values: Samples, floor: Samples) -> float:
    """The median over rounds of ``values`` / ``floor`` measured in the same round.

    Each round runs every system once, so a ratio within a round cancels what the machine did
    to that round (load from other processes, frequency changes) better than a ratio of medians.
    """
    return statistics.median(value / base for value, base in zip(values, floor, strict=True))


def p90(values: Samples) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:9.1f}"


def describe(workload: str, settings: Settings) -> str:
    n = settings.amplification
    return ALL_WORKLOADS[workload].format(n=n, r=n // ROWS, q=n // 10)


def report_table(
    title: str, results: dict[str, dict[str, Samples | None]], settings: Settings
) -> None:
    print(
        f"\n== {title}: {settings.rounds} rounds x {settings.batch} transactions, interleaved,"
        f" {settings.clock} time"
    )
    print(f"{'workload':<52} {'system':<16} {'median us':>9} {'p90 us':>9} {'x bare':>7}")
    for workload, by_system in results.items():
        bare = by_system.get("bare SQLAlchemy")
        name = f"{workload:<8}{describe(workload, settings)}"
        for label in SYSTEM_LABELS:
            if label not in by_system:
                continue
            values = by_system[label]
            if values is None:
                print(f"{name:<52} {label:<16} {'n/a':>9} {'n/a':>9} {'n/a':>7}")
                continue
            median = statistics.median(values)
            ratio = f"{paired_ratio(values, bare):7.3f}" if bare else f"{'n/a':>7}"
            print(f"{name:<52} {label:<16} {us(median)} {us(p90(values))} {ratio}")


def per_call(
    deltas: dict[str, dict[str, Samples]], settings: Settings
) -> dict[str, dict[str, float]]:
    """Microseconds per call: median of (amplified - W1) per round / calls per transaction."""
    calls = {
        "A-cb": ("per on_commit callback (no DB)", settings.amplification),
        "A-acb": ("per coroutine callback (no DB)", settings.amplification),
        "A-recv": ("per post_save receiver call", settings.amplification),
        "A-query": ("per callback doing one query", settings.amplification // 10),
        "A-qc": ("per query callback, committed", settings.amplification // 10),
    }
    figures: dict[str, dict[str, float]] = {}
    for workload, (label, count) in calls.items():
        if workload in deltas:
            figures[label] = {
                system: statistics.median(values) * 1e6 / count
                for system, values in deltas[workload].items()
            }
    return figures


def report_per_call(figures: dict[str, dict[str, float]], settings: Settings) -> None:
    if not figures:
        return
    n = settings.amplification
    print(f"\nPer call, microseconds, from the amplified workloads ({n} calls per transaction,")
    print(f"{n // 10} for the query callbacks): median over rounds of (A-* - W1) / calls")
    print(f"{'':<32}" + "".join(f"{label:>17}" for label in SYSTEM_LABELS))
    for label, row in figures.items():
        cells = "".join(
            f"{row[system]:17.2f}" if system in row else f"{'n/a':>17}" for system in SYSTEM_LABELS
        )
        print(f"{label:<32}{cells}")


def memory_check(transactions: int) -> tuple[list[tuple[int, float, int]], float]:
    """Run ``transactions`` sa_signals transactions; (count, RSS MiB, objects) checkpoints."""
    system = Layer(sqlite_engine("sqlite://", wal=False), 10)
    system.setup("W1")
    system.enter()
    receiver_calls = []

    def receiver(sender: object, **kwargs: object) -> None:
        receiver_calls.append(sender)

    signals.post_save.connect(receiver, sender=system.Item, weak=False)
    Session, Item = system.Session, system.Item
    with system.maker.begin() as session:
        session.add(Item(id=1, name="counter", value=0))
    checkpoints: list[tuple[int, float, int]] = []
    step = max(1, transactions // 10)
    try:
        for n in range(1, transactions + 1):
            session = Session()
            session.get_one(Item, 1).value += 1
            sa_signals.on_commit(noop, session)
            with session.begin_nested():
                sa_signals.on_commit(noop, session)
            session.commit()
            Session.remove()
            receiver_calls.clear()
            if n % step == 0:
                gc.collect()
                checkpoints.append((n, _rss_mib(), len(gc.get_objects())))
    finally:
        signals.post_save.disconnect(receiver)
        system.exit()
        system.close()
    # The kernel updates the high-water mark lazily: the last checkpoint can be above it.
    return checkpoints, max(_peak_mib(), *(rss for _, rss, _ in checkpoints))


def _status(field: str) -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    return _status("VmRSS:")


def _peak_mib() -> float:
    return _status("VmHWM:")


def report_memory(checkpoints: list[tuple[int, float, int]], peak: float) -> bool:
    print(f"\nMemory: sa_signals, {checkpoints[-1][0]} transactions on SQLite :memory:")
    print("(each: get + update 1 row, 1 post_save receiver, 2 callbacks, 1 savepoint)")
    print(f"{'transactions':>12} {'RSS MiB':>9} {'objects':>9}")
    for n, rss, objects in checkpoints:
        print(f"{n:>12} {rss:9.1f} {objects:>9}")
    # Caches fill during the first half; a leak keeps growing through the second.
    first, last = checkpoints[(len(checkpoints) - 1) // 2], checkpoints[-1]
    rss_growth, object_growth = last[1] - first[1], last[2] - first[2]
    print(
        f"growth from {first[0]} to {last[0]}: RSS {rss_growth:+.1f} MiB,"
        f" objects {object_growth:+d}; peak RSS {peak:.1f} MiB"
    )
    return rss_growth < 1.0 and object_growth < max(100, (last[0] - first[0]) // 10)


def report_targets(
    results: dict[str, dict[str, dict[str, Samples | None]]],
    figures: dict[str, dict[str, float]],
    memory_ok: bool | None,
) -> None:
    """Check the targets on the figures measured in this run."""
    print("\nTargets (SQLite :memory: unless named; ratios to bare SQLAlchemy in this run)")

    def ratio(db: str, workload: str) -> float | None:
        by_system = results.get(db, {}).get(workload, {})
        layer, bare = by_system.get("sa_signals"), by_system.get("bare SQLAlchemy")
        if not layer or not bare:
            return None
        return paired_ratio(layer, bare)

    def line(name: str, value: float | None, limit: float, unit: str = "x") -> None:
        if value is None:
            print(f"  {name:<58} {'n/a':>8}")
            return
        verdict = "ok" if value <= limit else "MISSED"
        print(f"  {name:<58} {value:8.3f} {unit:<2} (<= {limit:.3f}) {verdict}")

    line("W1, sa_signals with no receivers", ratio("sqlite-memory", "W1"), 1.04)
    line("W1, sa_signals with no receivers, SQLite file", ratio("sqlite-file", "W1"), 1.03)
    line("W4, rollback", ratio("sqlite-memory", "W4"), 1.04)
    line("W3, 100 receiver calls", ratio("sqlite-memory", "W3"), 1.20)
    callback = figures.get("per on_commit callback (no DB)", {})
    receiver = figures.get("per post_save receiver call", {})
    line("per on_commit callback", callback.get("sa_signals"), 1.0, "us")
    if "Django ORM" in callback:
        line(
            "per on_commit callback, vs Django / 3",
            callback.get("sa_signals"),
            callback["Django ORM"] / 3,
            "us",
        )
    line("per receiver call", receiver.get("sa_signals"), 2.3, "us")
    if "Django ORM" in receiver:
        line(
            "per receiver call, vs Django",
            receiver.get("sa_signals"),
            receiver["Django ORM"],
            "us",
        )
    if "hand-rolled" in receiver:
        line(
            "per receiver call, vs 0.7 x naive blinker",
            receiver.get("sa_signals"),
            receiver["hand-rolled"] * 0.7,
            "us",
        )
    if memory_ok is not None:
        print(f"  {'no memory growth':<58} {'ok' if memory_ok else 'MISSED':>8}")


def main(argv: list[str] | None = None) -> int:
    args, settings = parse(argv)
    rng = random.Random(42)
    workloads = args.workload or list(ALL_WORKLOADS)
    print(
        f"sa_signals benchmarks: Python {sys.version.split()[0]}, SQLAlchemy {sa.__version__}",
        end="",
    )
    if django_system.AVAILABLE:
        print(f", Django {django_system.django.__version__}", end="")
    print(", times per transaction")
    # Long-lived objects (modules, mappers, Django) out of the collector's way: a collection then
    # costs each system what its own garbage costs.
    gc.collect()
    gc.freeze()
    try:
        with warnings.catch_warnings():
            # The other systems' sessions run beside sa_signals' receivers, on purpose.
            warnings.simplefilter("ignore", sa_signals.NotInstalledWarning)
            _run(args, settings, rng, workloads)
    finally:
        gc.unfreeze()
    return 0


def _run(
    args: argparse.Namespace, settings: Settings, rng: random.Random, workloads: list[str]
) -> None:
    results: dict[str, dict[str, dict[str, Samples | None]]] = {}
    figures: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="sa_signals_bench_") as directory:
        for db in args.db:
            figures[db] = _run_database(
                db, args.postgresql, directory, settings, rng, workloads, results
            )
    memory_ok = None
    if settings.memory:
        checkpoints, peak = memory_check(settings.memory)
        memory_ok = report_memory(checkpoints, peak)
    report_targets(results, figures.get("sqlite-memory", {}), memory_ok)


def _run_database(
    db: str,
    url: str | None,
    directory: str,
    settings: Settings,
    rng: random.Random,
    workloads: list[str],
    results: dict[str, dict[str, dict[str, Samples | None]]],
) -> dict[str, dict[str, float]]:
    """Measure every workload on ``db``, print its tables, return its per-call figures."""
    if db not in ASYNC_DATABASES:
        workloads = [workload for workload in workloads if workload not in ASYNC_WORKLOADS]
    if db in ("postgresql", "asyncpg"):
        settings = settings._replace(clock="wall")
    elif db == "aiosqlite-memory":
        settings = settings._replace(clock="process")
    with contextlib.ExitStack() as stack:
        runner = batch = None
        if db in ASYNC_DATABASES:
            # One event loop for every system; each batch runs in it as one task.
            from benchmarks import asystems

            runner = stack.enter_context(asyncio.Runner())
            batch = asystems.batch(runner, CLOCKS[settings.clock])
        systems = make_systems(db, url, directory, settings, runner)
        results[db], deltas = {}, {}
        try:
            # Fill the files, pools and caches of every system first; not recorded.
            measure(systems, "W1", settings._replace(rounds=1), rng, batch)
            for workload in workloads:
                results[db][workload], deltas[workload] = measure(
                    systems, workload, settings, rng, batch
                )
        finally:
            for system in systems:
                system.close()
    figures = per_call(deltas, settings)
    report_table(DATABASES[db], results[db], settings)
    report_per_call(figures, settings)
    return figures
