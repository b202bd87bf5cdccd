"""Benchmark of the outbox, side by side with a plain on_commit callback and procrastinate.

Usage: ``python -m benchmarks.outbox [--quick] [--db sqlite|postgresql|mariadb ...]
[--postgresql URL] [--mariadb URL] [--part enqueue|latency|throughput|instructions ...]``;
see ``benchmarks/README.md`` (section "Outbox").

- enqueue: what one ``enqueue()`` (and one ``on_commit()``, one procrastinate ``defer()``, one
  more ``INSERT`` of the producer's own as the yardstick) adds to a producer's transaction that
  inserts a row: the call itself, and the whole transaction against the bare one.
- latency: from the COMMIT (SQLAlchemy's ``after_commit``; for procrastinate, the return of
  ``defer()``, which commits) to the start of the handler: on the fast path, for a plain
  on_commit callback, through a separate outbox worker woken by NOTIFY, and through a
  procrastinate worker (PostgreSQL).
- throughput: rows per second drained by 1, 4 and 8 worker processes (and as many
  procrastinate workers on PostgreSQL).
- instructions: callgrind counts of one transaction with and without an enqueue (SQLite).

The systems run interleaved, round by round, in one run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from benchmarks.outbox_workers import stop
from benchmarks.outbox_workers import wait_for
from benchmarks.outbox_workers import worker_command
from benchmarks.systems import sqlite_engine
from sa_signals import outbox

ROOT = pathlib.Path(__file__).resolve().parent.parent

metadata = sa.MetaData()
table = outbox.table(metadata, "outbox_bench")
orders = sa.Table(
    "outbox_bench_orders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("note", sa.String(50), nullable=False),
)

URLS = {
    "sqlite": "sqlite:///{tmp}/outbox_bench.db",
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test_bench",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test_bench",
}

STAMPS: dict[int, float] = {}
"""Sequence number -> ``perf_counter()`` when an in-process handler or callback started."""

COMMITTED: dict[str, t.Any] = {"armed": False, "wall": 0.0, "perf": 0.0}
"""When the producer's last COMMIT returned (``after_commit``), wall-clock and perf counter."""


def _committed(session: sa_orm.Session) -> None:
    # Armed for the producer's own commit only: the fast path's run commits too.
    if COMMITTED["armed"]:
        COMMITTED.update(armed=False, wall=time.time(), perf=time.perf_counter())


@outbox.handler("bench.noop_later", inline=False)
def noop_later() -> None:
    """Do nothing, in a worker."""


@outbox.handler("bench.stamp")
def stamp(seq: int) -> None:
    """Note when the fast path started the handler."""
    STAMPS[seq] = time.perf_counter()


@outbox.handler("bench.stamp_later", inline=False)
def stamp_later(seq: int) -> None:
    """Append ``seq`` and the wall-clock time the handler started to the stamps file."""
    now = time.time()
    with open(os.environ["OUTBOX_BENCH_STAMPS"], "a") as file:
        file.write(f"{seq} {now}\n")


def _noop() -> None:
    pass


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:7.2f}"


class Bench:
    """One database: its engine, an installed factory, and the tables."""

    def __init__(self, db: str, url: str) -> None:
        self.db = db
        self.url = url
        # SQLite in WAL mode with synchronous=NORMAL, as the main harness runs it.
        self.engine = sqlite_engine(url, wal=True) if db == "sqlite" else sa.create_engine(url)
        self.factory = sa_orm.sessionmaker(self.engine)
        sa_signals.install(self.factory)
        # Before the installation's own listener: the time the COMMIT returned.
        sa.event.listen(self.factory, "after_commit", _committed, insert=True)
        metadata.drop_all(self.engine)
        metadata.create_all(self.engine)

    def clear(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(table.delete())
            connection.execute(orders.delete())

    def pending(self) -> int:
        with self.engine.connect() as connection:
            return connection.scalar(sa.select(sa.func.count()).select_from(table)) or 0

    def close(self) -> None:
        sa_signals.uninstall(self.factory)
        metadata.drop_all(self.engine)
        self.engine.dispose()


# -- enqueue ------------------------------------------------------------------------------------


def enqueue_costs(bench: Bench, rounds: int, batch: int, app: t.Any) -> dict[str, list[float]]:
    """Per-call and per-transaction times of each system, ``rounds`` interleaved rounds."""
    systems = ["bare", "insert", "on_commit", "enqueue"] + (["procrastinate"] if app else [])
    times: dict[str, list[float]] = {f"{s}:{k}": [] for s in systems for k in ("call", "tx")}
    factory = bench.factory
    clock = time.perf_counter

    def one(system: str) -> tuple[float, float]:
        start = clock()
        with factory.begin() as session:
            session.execute(orders.insert(), {"note": "x"})
            before = clock()
            if system == "on_commit":
                sa_signals.on_commit(_noop, session)
            elif system == "insert":  # a second row of the producer's own: the yardstick
                session.execute(orders.insert(), {"note": "y"})
            elif system == "enqueue":
                outbox.enqueue(session, noop_later)
            elif system == "procrastinate":
                app.tasks["bench.noop"].defer()
            after = clock()
        return after - before, clock() - start

    for system in systems:  # warm-up: caches, pools, prepared plans
        for _ in range(50):
            one(system)
    for _ in range(rounds):
        random.shuffle(systems)
        for system in systems:
            for _ in range(batch):
                call, tx = one(system)
                times[f"{system}:call"].append(call)
                times[f"{system}:tx"].append(tx)
        bench.clear()
        if app:
            _clear_procrastinate(app)
    return times


def _clear_procrastinate(app: t.Any) -> None:
    with app.connector.get_sync_connector().pool.connection() as connection:
        connection.execute("DELETE FROM procrastinate_jobs")


def report_enqueue(db: str, times: dict[str, list[float]]) -> list[str]:
    lines = []
    bare = statistics.median(times["bare:tx"])
    for key in ("insert", "on_commit", "enqueue", "procrastinate"):
        if f"{key}:call" not in times:
            continue
        call = times[f"{key}:call"]
        tx = statistics.median(times[f"{key}:tx"])
        lines.append(
            f"| {db} | {key} | {us(statistics.median(call))} | {us(percentile(call, 0.99))}"
            f" | {us(tx)} | {us(tx - bare)} |"
        )
    lines.append(f"| {db} | bare transaction | | | {us(bare)} | |")
    return lines


# -- latency ------------------------------------------------------------------------------------


def start_worker(url: str, stamps: str, *args: str) -> subprocess.Popen[bytes]:
    """An outbox worker process with this module's handlers."""
    command = worker_command(url, table.name, "benchmarks.outbox", *args)
    env = {**os.environ, "OUTBOX_BENCH_STAMPS": stamps}
    log = open(os.environ.get("OUTBOX_BENCH_WORKER_LOG", os.devnull), "a")  # noqa: SIM115
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=log)


def start_procrastinate(url: str, stamps: str, concurrency: int = 1) -> subprocess.Popen[bytes]:
    """A procrastinate worker process on the benchmark's app."""
    command = [
        sys.executable,
        "-m",
        "procrastinate",
        "--app=benchmarks.outbox_procrastinate.app",
        "worker",
        f"--concurrency={concurrency}",
        "--delete-jobs=always",
    ]
    env = {**os.environ, "OUTBOX_BENCH_STAMPS": stamps, "SA_SIGNALS_BENCH_POSTGRESQL_URL": url}
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)


def read_stamps(path: str) -> dict[int, float]:
    found: dict[int, float] = {}
    if os.path.exists(path):
        for line in pathlib.Path(path).read_text().splitlines():
            seq, when = line.split()
            found[int(seq)] = float(when)
    return found


def latencies(bench: Bench, count: int, app: t.Any) -> dict[str, list[float]]:
    """Commit-to-handler latencies of each path, interleaved in rounds of 20."""
    factory = bench.factory
    result: dict[str, list[float]] = {"fast path": [], "on_commit": []}
    with tempfile.TemporaryDirectory() as directory:
        stamps = f"{directory}/stamps"
        workers = []
        if bench.db == "postgresql":
            result["worker (NOTIFY)"] = []
            workers.append(start_worker(bench.url, stamps, "--poll", "30"))
            if app:
                result["procrastinate"] = []
                workers.append(start_procrastinate(bench.url, stamps))
            time.sleep(3)  # both listening
        sent: dict[int, tuple[str, float]] = {}
        seq = 0
        paths = list(result)
        try:
            for _ in range(max(1, count // 20)):
                random.shuffle(paths)
                for path in paths:
                    for _ in range(20):
                        seq += 1
                        if path == "procrastinate":
                            app.tasks["bench.stamp"].defer(seq=seq)  # commits, then returns
                            sent[seq] = (path, time.time())
                        else:
                            with factory() as session:
                                session.execute(orders.insert(), {"note": "x"})
                                if path == "fast path":
                                    outbox.enqueue(session, stamp, seq)
                                elif path == "on_commit":
                                    n = seq
                                    sa_signals.on_commit(
                                        lambda n=n: STAMPS.__setitem__(n, time.perf_counter()),
                                        session,
                                    )
                                else:
                                    outbox.enqueue(session, stamp_later, seq)
                                COMMITTED["armed"] = True
                                session.commit()
                                start = COMMITTED["wall" if path.startswith("worker") else "perf"]
                                sent[seq] = (path, start)
                        if path in ("procrastinate", "worker (NOTIFY)"):
                            # The worker is idle when the next one is sent: wake-up latency,
                            # not queueing.
                            wait_for(lambda s=seq: s in read_stamps(stamps))
                    bench.clear()
            remote = read_stamps(stamps)
        finally:
            stop(workers)
        for n, (path, start) in sent.items():
            end = STAMPS.get(n) if path in ("fast path", "on_commit") else remote.get(n)
            if end is None:
                raise RuntimeError(f"{path} never ran {n}")
            result[path].append(end - start)
    return result


# -- throughput ---------------------------------------------------------------------------------


def throughput(bench: Bench, rows: int, workers: int, system: str, app: t.Any) -> float:
    """Rows per second that ``workers`` processes of ``system`` drain from a full queue."""
    with tempfile.TemporaryDirectory() as directory:
        stamps = f"{directory}/stamps"
        if system == "outbox":
            poll = "0.05"
            processes = [
                start_worker(bench.url, stamps, "--poll", poll, "--batch", "50")
                for _ in range(workers)
            ]
        else:
            processes = [start_procrastinate(bench.url, stamps) for _ in range(workers)]
        try:
            time.sleep(3)  # started and idle
            start = time.perf_counter()
            if system == "outbox":
                with bench.factory.begin() as session:
                    for _ in range(rows):
                        outbox.enqueue(session, noop_later)
                wait_for(lambda: bench.pending() == 0, 600)
            else:
                app.tasks["bench.noop"].batch_defer(*({} for _ in range(rows)))
                wait_for(lambda: _procrastinate_left(app) == 0, 600)
            return rows / (time.perf_counter() - start)
        finally:
            stop(processes)


def _procrastinate_left(app: t.Any) -> int:
    with app.connector.get_sync_connector().pool.connection() as connection:
        row = connection.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
        ).fetchone()
        return int(row[0]) if row else 0


# -- instructions -------------------------------------------------------------------------------


def count_instructions(system: str, transactions: int) -> int:
    """Instructions of ``transactions`` transactions on SQLite, counted by callgrind."""
    from benchmarks.instructions import COLLECTED
    from benchmarks.instructions import VALGRIND

    command = [
        *VALGRIND,
        sys.executable,
        "-m",
        "benchmarks.outbox",
        "--count",
        system,
        str(transactions),
    ]
    with tempfile.TemporaryDirectory() as directory:
        env = os.environ | {"PYTHONHASHSEED": "0", "TMPDIR": directory}
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    found = COLLECTED.search(done.stderr)
    if done.returncode or not found:
        raise RuntimeError(f"callgrind run failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def counted(system: str, transactions: int) -> None:
    """The callgrind worker: warm up, switch counting on, run, exit at once."""
    import gc

    with tempfile.TemporaryDirectory() as directory:
        bench = Bench("sqlite", f"sqlite:///{directory}/count.db")
        factory = bench.factory

        def one() -> None:
            with factory.begin() as session:
                session.execute(orders.insert(), {"note": "x"})
                if system == "on_commit":
                    sa_signals.on_commit(_noop, session)
                elif system == "enqueue":
                    outbox.enqueue(session, noop_later)
                elif system == "enqueue+run":
                    outbox.enqueue(session, stamp, 1)

        for _ in range(20):
            one()
        gc.collect()
        gc.freeze()
        subprocess.run(
            ["vgdb", f"--pid={os.getpid()}", "instrumentation", "on"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(transactions):
            one()
        os._exit(0)


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the harness")
    parser.add_argument("--db", action="append", choices=list(URLS), default=[])
    parser.add_argument("--postgresql", default=URLS["postgresql"])
    parser.add_argument("--mariadb", default=URLS["mariadb"])
    parser.add_argument(
        "--part",
        action="append",
        choices=["enqueue", "latency", "throughput", "instructions"],
        default=[],
    )
    parser.add_argument("--count", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count:
        counted(args.count[0], int(args.count[1]))
        return
    dbs = args.db or list(URLS)
    parts = args.part or ["enqueue", "latency", "throughput", "instructions"]
    quick = args.quick
    urls = {**URLS, "postgresql": args.postgresql, "mariadb": args.mariadb}
    app = None
    if "postgresql" in dbs:
        os.environ["SA_SIGNALS_BENCH_POSTGRESQL_URL"] = urls["postgresql"]
        from benchmarks.outbox_procrastinate import app as procrastinate_app

        app = procrastinate_app
        app.open()
        with app.connector.get_sync_connector().pool.connection() as connection:
            exists = connection.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()
        if not exists or exists[0] is None:
            app.schema_manager.apply_schema()
        _clear_procrastinate(app)  # jobs an interrupted run left would stamp this run's numbers
    with tempfile.TemporaryDirectory() as tmp:
        for db in dbs:
            bench = Bench(db, urls[db].format(tmp=tmp))
            db_app = app if db == "postgresql" else None
            try:
                if "enqueue" in parts:
                    rounds, batch = (2, 20) if quick else (15, 200)
                    times = enqueue_costs(bench, rounds, batch, db_app)
                    print(
                        "| db | system | call median us | call p99 us | tx median us | "
                        "tx minus bare us |"
                    )
                    print("\n".join(report_enqueue(db, times)), flush=True)
                if "latency" in parts:
                    found = latencies(bench, 40 if quick else 400, db_app)
                    print("| db | path | p50 ms | p99 ms | n |")
                    for path, values in found.items():
                        print(
                            f"| {db} | {path} | {ms(percentile(values, 0.5))}"
                            f" | {ms(percentile(values, 0.99))} | {len(values)} |",
                            flush=True,
                        )
                if "throughput" in parts:
                    rows = int(os.environ.get("OUTBOX_BENCH_ROWS", 200 if quick else 5000))
                    print("| db | system | workers | rows/s |")
                    systems = ["outbox"] + (["procrastinate"] if db_app else [])
                    for workers in (1, 4, 8):
                        for system in systems:
                            rate = throughput(bench, rows, workers, system, db_app)
                            print(f"| {db} | {system} | {workers} | {rate:8.0f} |", flush=True)
            finally:
                bench.close()
    if "instructions" in parts and "sqlite" in dbs:
        n = 10 if quick else 50
        print("| SQLite file | instructions per transaction |")
        base = None
        for system in ("bare", "on_commit", "enqueue", "enqueue+run"):
            per = count_instructions(system, n) / n
            base = base or per
            print(f"| {system} | {per:,.0f} (+{per - base:,.0f}) |", flush=True)
    if app is not None:
        app.close()


if __name__ == "__main__":
    main()
