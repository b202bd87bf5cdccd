"""The fan-out: commit-to-listener latency, and what publishing adds to a committing transaction.

Usage: ``python -m benchmarks.fanout [--transport KIND ...] [--postgresql URL] [--redis URL]
[--seconds S] [--rate R] [--listeners N] [--rounds N] [--instructions]``; see
``benchmarks/README.md``.

Latency: ``N`` listener processes (default 4) listen on each transport while this process
commits one-row updates at ``R`` commits per second (default 1,000) for ``S`` seconds; each
listener records, for every message, its receive time minus the commit time the message carries
(both ``time.time()`` on this machine), and reports its CPU time per message (with
``--instructions`` also a listener's instructions per message, under callgrind). Overhead:
one-row update transactions on SQLite ``:memory:``, in interleaved rounds, with nothing
published, with a ``models_committed`` receiver that does nothing (the change sets the core
builds for any such receiver), with two references that show what the machine charges any
publisher (a thread woken per commit, a raw send to Redis per commit), and publishing to each
transport; the time of a batch includes waiting for the publisher to send it all.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import itertools
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
import urllib.parse
import uuid

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
import sqlalchemy.pool as sa_pool

import sa_signals
from sa_signals import fanout
from sa_signals import signals

KINDS = ("postgresql", "redis-pubsub", "redis-stream")
"""The transports, as named on the command line."""

BATCH = 200
"""Transactions per timed batch of the overhead benchmark."""

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Base(sa_orm.DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "bench_fanout_rows"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    value: sa_orm.Mapped[int]


def make_transport(kind: str, name: str, args: argparse.Namespace) -> fanout.Transport:
    if kind == "postgresql":
        from sa_signals.fanout.postgresql import PostgresNotify

        return PostgresNotify(args.postgresql, name.replace("-", "_"))
    if kind == "redis-pubsub":
        from sa_signals.fanout.redis_pubsub import RedisPubSub

        return RedisPubSub(args.redis, name)
    from sa_signals.fanout.redis_streams import RedisStream

    return RedisStream(args.redis, name, maxlen=10_000)


def drop_stream(kind: str, name: str, args: argparse.Namespace) -> None:
    """Delete the stream a run wrote to, which would stay in Redis with its entries."""
    if kind == "redis-stream":
        import redis

        with redis.Redis.from_url(args.redis) as client:
            client.delete(name)


def writer(rows: int = 100) -> sa_orm.scoped_session[sa_orm.Session]:
    """An installed scoped_session on a fresh SQLite ``:memory:`` database with ``rows`` rows."""
    engine = sa.create_engine("sqlite://", poolclass=sa_pool.StaticPool)
    Base.metadata.create_all(engine)
    with sa_orm.Session(engine) as session, session.begin():
        session.add_all([Row(id=n, value=-1) for n in range(rows)])
    Session = sa_orm.scoped_session(sa_orm.sessionmaker(engine))
    sa_signals.install(Session)
    return Session


_values = itertools.count()
"""Values of the measured updates: each one differs from what its row holds, so that every
measured transaction writes its row (an update to an equal value writes nothing)."""


def update(Session: sa_orm.scoped_session[sa_orm.Session], row: int, value: int) -> None:
    """One transaction: load a row, change it, commit (a web request's write). The rows start
    at -1, so any ``value`` from 0 on changes them."""
    with Session.begin():
        Session.get_one(Row, row).value = value
    Session.remove()


# Latency.


def listen_process(kind: str, name: str, args: argparse.Namespace) -> None:
    """``--listen``: record the latency of every message until stdin closes, print it as JSON."""
    latencies: list[float] = []
    gaps: list[str] = []

    def heard(sender: t.Any, /, *, changes: list[t.Any], message: t.Any, **kwargs: t.Any) -> None:
        now = time.time()
        if changes[0].identity[0] > 0:  # row 0 is the warm-up's
            latencies.append(now - message.at)

    signals.remote_committed.connect(heard)
    signals.remote_gap.connect(lambda sender, *, reason, **kwargs: gaps.append(reason), weak=False)
    with fanout.listen(make_transport(kind, name, args), models=Base) as listener:
        listener.wait_ready(10)
        print("ready", flush=True)
        cpu = time.process_time()
        sys.stdin.read()
        cpu = time.process_time() - cpu
        received = listener.counters.received
    result = {"latencies": latencies, "gaps": gaps, "cpu": cpu, "received": received}
    print(json.dumps(result), flush=True)


def latency(kind: str, args: argparse.Namespace) -> dict[str, t.Any]:
    """Commit at ``args.rate`` per second for ``args.seconds``; gather the listeners' latencies."""
    name = f"sa-signals-bench-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "benchmarks.fanout", "--listen", kind, name]
    command += ["--postgresql", args.postgresql, "--redis", args.redis]
    listeners = [
        subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(args.listeners)
    ]
    for process in listeners:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise SystemExit(f"a listener on {kind} did not start")
    Session = writer()
    transport = make_transport(kind, name, args)
    commits = int(args.seconds * args.rate)
    with fanout.publish(Session, transport, write=args.write) as publisher:
        for n in range(200):  # warm-up, on row 0
            update(Session, 0, n)
        publisher.flush()
        time.sleep(0.2)
        interval = 1.0 / args.rate
        started = time.perf_counter()
        due = started
        for n in range(commits):
            update(Session, 1 + n % 99, n)
            due += interval
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        elapsed = time.perf_counter() - started
        publisher.flush()
        counters = publisher.counters
    time.sleep(0.5)  # let the listeners take the last messages
    latencies: list[float] = []
    gaps: list[str] = []
    cpu = received = 0.0
    for process in listeners:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.close()
        result = json.loads(process.stdout.read().splitlines()[-1])
        process.stdout.close()
        process.wait()
        latencies.extend(result["latencies"])
        gaps.extend(gap for gap in result["gaps"] if gap != "subscribed")
        cpu += result["cpu"]
        received += result["received"]
    sa_signals.uninstall(Session)
    drop_stream(kind, name, args)
    latencies.sort()
    return {
        "transport": kind,
        "rate": commits / elapsed,
        "expected": commits * args.listeners,
        "delivered": len(latencies),
        "p50": latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan"),
        "max": latencies[-1] * 1000 if latencies else float("nan"),
        "gaps": len(gaps),
        "failed": counters.failed,
        "cpu": cpu / received * 1e6 if received else float("nan"),
    }


# Overhead.


class Config:
    """One way of committing: what is connected while the batch runs."""

    def __init__(
        self, label: str, kind: str | None = None, receiver: bool = False, write: bool = False
    ) -> None:
        self.label = label
        self.kind = kind
        self.receiver = receiver
        self.write = write
        self.publisher: fanout.Publisher | None = None
        self.name = ""
        """The channel or stream of the batch under way."""
        self.args: argparse.Namespace | None = None

    def enter(self, Session: t.Any, args: argparse.Namespace) -> None:
        if self.receiver:
            signals.models_committed.connect(_nothing)
        if self.kind is not None:
            self.name = name = f"sa-signals-bench-{uuid.uuid4().hex[:8]}"
            self.args = args
            transport = make_transport(self.kind, name, args)
            self.publisher = fanout.publish(Session, transport, write=self.write)
            for n in range(20):  # connects the sender
                update(Session, 0, n)
            self.publisher.flush()

    def settle(self) -> None:
        """Wait for what the batch left to do (the publisher's sends)."""
        if self.publisher is not None:
            self.publisher.flush()

    def exit(self) -> None:
        signals.models_committed.disconnect(_nothing)
        if self.publisher is not None:
            self.publisher.stop()
            self.publisher = None
            assert self.kind is not None
            assert self.args is not None
            drop_stream(self.kind, self.name, self.args)


def _nothing(sender: t.Any, /, **kwargs: t.Any) -> None:
    pass


class WakeThread(Config):
    """Reference, no fan-out: a ``models_committed`` receiver that hands each change set to a
    thread of its own, woken by each commit, which drops it. What any publisher with a thread
    of its own pays on this machine at least."""

    def __init__(self) -> None:
        super().__init__("ref.: thread woken per commit")
        self._queue: collections.deque[object] = collections.deque()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def _receive(self, sender: t.Any, /, *, changes: list[t.Any], **kwargs: t.Any) -> None:
        self._queue.append(changes)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            while self._queue:
                self._queue.popleft()

    def enter(self, Session: t.Any, args: argparse.Namespace) -> None:
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        signals.models_committed.connect(self._receive)

    def exit(self) -> None:
        signals.models_committed.disconnect(self._receive)
        self._stop = True
        self._wake.set()
        assert self._thread is not None
        self._thread.join()


class RawSend(Config):
    """Reference, no fan-out: a ``models_committed`` receiver that writes a 200-byte
    ``PUBLISH`` to Redis on a non-blocking socket, from the committing thread, and reads
    whatever answers arrived. What any publisher that sends each commit as it happens pays on
    this machine at least."""

    COMMAND = b"*3\r\n$7\r\nPUBLISH\r\n$12\r\nsa-signals-x\r\n$200\r\n" + b"x" * 200 + b"\r\n"

    def __init__(self) -> None:
        super().__init__("ref.: raw send per commit")
        self._socket: socket.socket | None = None

    def _receive(self, sender: t.Any, /, **kwargs: t.Any) -> None:
        assert self._socket is not None
        self._socket.send(self.COMMAND)
        with contextlib.suppress(BlockingIOError):
            while self._socket.recv(65536):
                pass

    def enter(self, Session: t.Any, args: argparse.Namespace) -> None:
        url = urllib.parse.urlsplit(args.redis)
        self._socket = socket.create_connection((url.hostname, url.port or 6379))
        self._socket.setblocking(False)
        signals.models_committed.connect(self._receive)

    def exit(self) -> None:
        signals.models_committed.disconnect(self._receive)
        assert self._socket is not None
        self._socket.close()


def configs(kinds: list[str]) -> list[Config]:
    redis = any(kind.startswith("redis") for kind in kinds)
    return [
        Config("nothing published"),
        Config("a models_committed receiver"),
        WakeThread(),
        *([RawSend()] if redis else []),
        *(Config(f"publishing to {kind}", kind) for kind in kinds),
        *(
            Config(f"{kind}, write=True", kind, write=True)
            for kind in kinds
            if kind.startswith("redis")
        ),
    ]


def overhead(kinds: list[str], args: argparse.Namespace) -> list[dict[str, t.Any]]:
    """Per transaction: the committing thread's wall time (median) and CPU time, and the
    process's CPU time including the publisher's sends; each paired per round with the
    baseline's batch."""
    Session = writer()
    all_configs = configs(kinds)
    all_configs[1].receiver = True
    times: dict[str, list[tuple[float, float, float]]] = {c.label: [] for c in all_configs}
    for _ in range(args.rounds):
        order = all_configs[:]
        random.shuffle(order)
        for config in order:
            config.enter(Session, args)
            gc.collect()
            durations = []
            cpu, thread = time.process_time(), time.thread_time()
            for n in range(args.batch):
                started = time.perf_counter()
                update(Session, 1 + n % 99, next(_values))
                durations.append(time.perf_counter() - started)
            thread = time.thread_time() - thread
            config.settle()
            cpu = time.process_time() - cpu
            config.exit()
            batch = args.batch
            times[config.label].append((statistics.median(durations), thread / batch, cpu / batch))
    sa_signals.uninstall(Session)
    base = times[all_configs[0].label]
    rows = []
    for config in all_configs:
        figures = times[config.label]
        row: dict[str, t.Any] = {"label": config.label}
        for index, key in enumerate(("commit", "thread", "cpu")):
            row[key] = statistics.median(f[index] for f in figures) * 1e6
            row[key + "+"] = (
                statistics.median(f[index] - b[index] for f, b in zip(figures, base, strict=True))
                * 1e6
            )
        rows.append(row)
    return rows


# Instructions.

VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null"]
COLLECTED = re.compile(r"^==\d+== Collected : (\d+)$", re.MULTILINE)
COUNTED = 200
"""Transactions counted per callgrind run."""


def count_worker(label: str, kinds: list[str], args: argparse.Namespace) -> None:
    """``--count``: warm up, switch callgrind on, run the transactions, exit at once."""
    config = next(c for c in configs(kinds) if c.label == label)
    config.receiver = label == "a models_committed receiver"
    Session = writer()
    config.enter(Session, args)
    for n in range(50):
        update(Session, 1 + n % 99, next(_values))
    config.settle()
    gc.collect()
    gc.freeze()
    subprocess.run(["vgdb", f"--pid={os.getpid()}", "instrumentation", "on"], check=True)
    for n in range(COUNTED):
        update(Session, 1 + n % 99, next(_values))
    config.settle()  # the publisher's thread is counted too: its work is the cost
    os._exit(0)


def instructions(kinds: list[str], args: argparse.Namespace) -> dict[str, float]:
    counts: dict[str, float] = {}
    for config in configs(kinds):
        figures = []
        for layout in range(2):
            command = [
                *VALGRIND,
                sys.executable,
                "-m",
                "benchmarks.fanout",
                "--count",
                config.label,
            ]
            command += ["--postgresql", args.postgresql, "--redis", args.redis]
            command += [option for kind in kinds for option in ("--transport", kind)]
            with tempfile.TemporaryDirectory() as directory:
                env = os.environ | {
                    "PYTHONHASHSEED": "0",
                    "TMPDIR": directory,
                    "SA_SIGNALS_BENCH_LAYOUT": "." * 16 * layout,
                }
                result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
            found = COLLECTED.search(result.stderr)
            if result.returncode or not found:
                raise SystemExit(
                    f"callgrind run of {config.label} failed:\n{result.stderr[-2000:]}"
                )
            figures.append(int(found.group(1)) / COUNTED)
        counts[config.label] = statistics.median(figures)
        print(f"[instructions] {config.label}", file=sys.stderr, flush=True)
    return counts


LISTENED = 100
"""Messages counted per callgrind run of a listener."""
LISTEN_WARM_UP = 20
LISTEN_PACE = 0.02
"""Seconds between two counted messages: the listener, slowed down by callgrind, reads each one
on its own, as a listener keeping up with its publishers does."""


def count_listener(kind: str, name: str, args: argparse.Namespace) -> None:
    """``--count-listener``: listen (``listen_async()`` with ``--count-async``), switch callgrind
    on once the warm-up's messages arrived, exit at once after the counted ones."""
    received = 0
    warmed, counted = threading.Event(), threading.Event()

    def heard(sender: t.Any, /, **kwargs: t.Any) -> None:
        nonlocal received
        received += 1
        if received == LISTEN_WARM_UP:
            warmed.set()
        elif received == LISTEN_WARM_UP + LISTENED:
            counted.set()

    def count() -> t.NoReturn:
        gc.collect()
        gc.freeze()
        subprocess.run(["vgdb", f"--pid={os.getpid()}", "instrumentation", "on"], check=True)
        print("counting", flush=True)
        counted.wait(300)
        os._exit(0)

    signals.remote_committed.connect(heard)
    transport = make_transport(kind, name, args)
    if not args.count_async:
        fanout.listen(transport, models=Base).wait_ready(60)
        print("ready", flush=True)
        warmed.wait(120)
        count()

    async def in_a_loop() -> None:
        await fanout.listen_async(transport, models=Base).wait_ready(60)
        print("ready", flush=True)
        await asyncio.to_thread(warmed.wait, 120)
        await asyncio.to_thread(count)  # the loop goes on delivering meanwhile

    asyncio.run(in_a_loop())


def listener_instructions(kind: str, args: argparse.Namespace, aio: bool = False) -> float:
    """Instructions one listener process (``listen_async()`` if ``aio``) spends per message it
    delivers, all threads."""
    name = f"sa-signals-bench-{uuid.uuid4().hex[:8]}"
    command = [*VALGRIND, sys.executable, "-m", "benchmarks.fanout", "--count-listener", kind]
    command += [name, "--postgresql", args.postgresql, "--redis", args.redis]
    command += ["--count-async"] if aio else []
    env = os.environ | {"PYTHONHASHSEED": "0"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    try:
        if process.stdout.readline().strip() != "ready":
            raise SystemExit(f"the callgrind listener on {kind} did not start")
        Session = writer()
        with fanout.publish(Session, make_transport(kind, name, args)) as publisher:
            for n in range(LISTEN_WARM_UP + LISTENED):
                if n == LISTEN_WARM_UP and process.stdout.readline().strip() != "counting":
                    raise SystemExit(f"the callgrind listener on {kind} did not count")
                update(Session, 1 + n % 99, next(_values))
                publisher.flush()
                time.sleep(LISTEN_PACE)
        sa_signals.uninstall(Session)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
        drop_stream(kind, name, args)
    found = COLLECTED.search(stderr)
    if process.returncode or not found:
        raise SystemExit(f"callgrind run of a listener on {kind} failed:\n{stderr[-2000:]}")
    return int(found.group(1)) / LISTENED


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__)
    parser.add_argument("--transport", action="append", choices=KINDS)
    parser.add_argument(
        "--postgresql",
        default=os.environ.get(
            "SA_SIGNALS_BENCH_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument(
        "--redis", default=os.environ.get("SA_SIGNALS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="of committing, per transport (5)"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="commits per second (1000)")
    parser.add_argument("--listeners", type=int, default=4, help="listener processes (4)")
    parser.add_argument("--rounds", type=int, default=15, help="of the overhead benchmark (15)")
    parser.add_argument("--instructions", action="store_true", help="count them with callgrind")
    parser.add_argument(
        "--no-write",
        dest="write",
        action="store_false",
        help="latency: send every message from the publisher's thread (publish(write=False))",
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the harness")
    parser.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    parser.add_argument("--listen", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--count", help=argparse.SUPPRESS)
    parser.add_argument("--count-listener", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--count-async", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.transport = args.transport or list(KINDS)
    if args.quick:
        args.seconds, args.rounds, args.listeners, args.batch = 0.2, 1, 1, 20
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.listen:
        listen_process(*args.listen, args)
        return 0
    if args.count:
        count_worker(args.count, args.transport, args)
        return 0
    if args.count_listener:
        count_listener(*args.count_listener, args)
        return 0
    if args.instructions and (shutil.which("valgrind") is None or shutil.which("vgdb") is None):
        raise SystemExit("valgrind and vgdb were not found on PATH: apt-get install valgrind")
    print(f"Python {sys.version.split()[0]}, SQLAlchemy {sa.__version__}, {os.cpu_count()} cores")
    print(
        f"\n== commit-to-listener latency: {args.listeners} listener processes,"
        f" {args.rate:,.0f} commits/s for {args.seconds:g} s per transport"
    )
    print(
        f"{'transport':<14} {'commits/s':>9} {'delivered':>12} {'p50 ms':>7} {'p99 ms':>7}", end=""
    )
    print(f" {'max ms':>7} {'gaps':>5} {'cpu us/msg':>10}", end="")
    print(f" {'instr/msg':>10} {'asyncio':>10}" if args.instructions else "")
    for kind in args.transport:
        row = latency(kind, args)
        delivered = f"{row['delivered']}/{row['expected']}"
        line = f"{kind:<14} {row['rate']:9,.0f} {delivered:>12} {row['p50']:7.2f}"
        line += f" {row['p99']:7.2f} {row['max']:7.2f} {row['gaps']:5} {row['cpu']:10.1f}"
        if args.instructions:
            line += f" {listener_instructions(kind, args):10,.0f}"
            line += f" {listener_instructions(kind, args, aio=True):10,.0f}"
        print(line, flush=True)
    print(
        f"\n== what publishing adds to a committing transaction (one-row update, SQLite :memory:,"
        f" {args.rounds} interleaved rounds of {args.batch}; medians; + is paired per round with"
        " the first row)"
    )
    counts = instructions(args.transport, args) if args.instructions else {}
    header = f"{'':<30} {'commit us':>9} {'+':>6} {'thread cpu':>10} {'+':>6}"
    header += f" {'all cpu':>8} {'+':>6}"
    print(header + (f" {'instructions':>12} {'+':>8}" if counts else ""))
    base = counts.get("nothing published", 0.0)
    for row in overhead(args.transport, args):
        line = f"{row['label']:<30} {row['commit']:9.1f} {row['commit+']:6.1f}"
        line += (
            f" {row['thread']:10.1f} {row['thread+']:6.1f} {row['cpu']:8.1f} {row['cpu+']:6.1f}"
        )
        if counts:
            line += f" {counts[row['label']]:12,.0f} {counts[row['label']] - base:8,.0f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
