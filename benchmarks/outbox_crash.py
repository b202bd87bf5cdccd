"""Crash test of the outbox: producers and workers killed with SIGKILL, then every effect counted.

Usage: ``python -m benchmarks.outbox_crash --url URL [--kills 100] [--worker-kills 20]``.

1. A producer process commits transactions that each insert an ``outbox_crash_accounts`` row and
   enqueue a handler writing an ``outbox_crash_effects`` row with the same tag. Some transactions
   roll back, some roll back a savepoint holding a second enqueue. The producer is killed with
   SIGKILL: at a random time by this script, or by itself at a chosen point (just before the
   COMMIT, right after it before the callbacks, or inside the fast path's handler after its
   write). It is started again until ``--kills`` kills are done.
2. Worker processes (``python -m sa_signals.outbox worker``) whose handler kills its process
   after its write with probability 0.3 drain what is left, started again when killed.
3. The check: every committed account has exactly one effect, no effect exists for a rolled-back
   transaction or savepoint, and nothing is pending or dead.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import time
import typing as t

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

import sa_signals
from benchmarks.outbox_workers import stop
from benchmarks.outbox_workers import worker_command
from sa_signals import outbox
from sa_signals.outbox.cli import make_engine

metadata = sa.MetaData()
table = outbox.table(metadata, "outbox_crash")
accounts = sa.Table(
    "outbox_crash_accounts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tag", sa.String(64), nullable=False, unique=True),
)
effects = sa.Table(
    "outbox_crash_effects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tag", sa.String(64), nullable=False),
)

KILL_IN_HANDLER = float(os.environ.get("OUTBOX_CRASH_HANDLER_KILL", "0"))
"""Probability that the handler kills its own process after its write (set per process)."""

POINTS = ("before_commit", "after_commit", "in_handler")
"""Where a producer may kill itself; otherwise this script kills it at a random time."""


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@outbox.handler("crash.record", max_attempts=1000, retry=outbox.Backoff(base=0.05, cap=0.2))
def record(tag: str) -> None:
    """Write the effect of ``tag``; maybe die before the write commits."""
    sa_signals.current_session().execute(effects.insert().values(tag=tag))
    if KILL_IN_HANDLER and random.random() < KILL_IN_HANDLER:
        _die()


def produce(url: str, base: int, point: str | None) -> None:
    """Commit transactions forever (until killed), reporting readiness on stdout."""
    engine = make_engine(url)
    factory = sa_orm.sessionmaker(engine)
    sa_signals.install(factory)
    state = {"armed": False}
    global KILL_IN_HANDLER

    @sa_event.listens_for(engine, "commit")
    def _before(connection: sa.Connection) -> None:
        if state["armed"] and point == "before_commit":
            _die()

    @sa_event.listens_for(factory, "after_commit", insert=True)
    def _after(session: sa_orm.Session) -> None:
        if state["armed"] and point == "after_commit":
            _die()

    print("ready", flush=True)
    rng = random.Random(base)
    for i in range(base, base + 100_000):
        tag = f"t{i}"
        state["armed"] = point is not None and rng.random() < 0.1
        if state["armed"] and point == "in_handler":
            KILL_IN_HANDLER = 1.0
        try:
            with factory.begin() as session:
                session.execute(accounts.insert().values(tag=tag))
                outbox.enqueue(session, record, tag)
                if i % 3 == 0:
                    try:
                        with session.begin_nested():
                            outbox.enqueue(session, record, f"sp{i}")
                            raise _Rollback
                    except _Rollback:
                        pass
                if i % 5 == 0:
                    outbox.enqueue(session, record, f"rb{i}")
                    raise _Rollback
        except _Rollback:
            pass


class _Rollback(Exception):
    pass


def reset(url: str) -> None:
    """Create the crash test's tables empty."""
    engine = make_engine(url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    engine.dispose()


def kill_producers(url: str, kills: int, seed: int) -> collections.Counter[str]:
    """Start and kill producers ``kills`` times; return the kills by point."""
    rng = random.Random(seed)
    counts: collections.Counter[str] = collections.Counter()
    for k in range(kills):
        point = rng.choice((*POINTS, "timer", "timer"))
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.outbox_crash",
                "--produce",
                str(k * 100_000),
                "--url",
                url,
                "--point",
                point,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        if point == "timer":
            time.sleep(rng.uniform(0.0, 0.15))
            process.send_signal(signal.SIGKILL)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # the point was never reached in time
            process.kill()
            process.wait()
        assert process.returncode == -signal.SIGKILL, process.returncode
        counts[point] += 1
    return counts


def pending(url: str) -> int:
    """Return how many rows are still pending (dead ones aside)."""
    engine = make_engine(url)
    with engine.connect() as connection:
        found = connection.scalar(
            sa.select(sa.func.count()).select_from(table).where(table.c.state != "dead")
        )
    engine.dispose()
    return found or 0


def drain_with_killed_workers(url: str, workers: int, kills: int) -> int:
    """Run workers whose handler dies with probability 0.3 until nothing is pending."""
    env = {**os.environ, "OUTBOX_CRASH_HANDLER_KILL": "0.3", "PYTHONWARNINGS": "ignore"}
    command = worker_command(
        url,
        table.name,
        "benchmarks.outbox_crash",
        "--lease",
        "1",
        "--poll",
        "0.1",
        "--batch",
        "5",
    )
    running = [
        subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL) for _ in range(workers)
    ]
    killed = 0
    deadline = time.monotonic() + 600
    while pending(url) and time.monotonic() < deadline:
        time.sleep(0.2)
        for n, process in enumerate(running):
            if process.poll() is not None:
                killed += process.returncode == -signal.SIGKILL
                if killed >= kills:
                    env["OUTBOX_CRASH_HANDLER_KILL"] = "0"
                running[n] = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    stop(running)
    return killed


def check(url: str) -> dict[str, int]:
    """Assert the guarantees; return the counts they were checked on."""
    engine = make_engine(url)
    with engine.connect() as connection:
        committed = set(connection.scalars(sa.select(accounts.c.tag)))
        done = collections.Counter(connection.scalars(sa.select(effects.c.tag)))
        left = connection.execute(sa.select(table.c.state, table.c.last_error)).all()
    engine.dispose()
    twice = {tag: n for tag, n in done.items() if n > 1}
    missing = committed - set(done)
    ghosts = set(done) - committed
    assert not twice, f"effects written more than once: {sorted(twice)[:10]}"
    assert not missing, f"committed without an effect: {sorted(missing)[:10]}"
    assert not ghosts, f"effects of rolled-back work: {sorted(ghosts)[:10]}"
    assert not left, f"rows left in the outbox: {left[:5]}"
    return {"committed": len(committed), "effects": sum(done.values())}


def run(url: str, kills: int, worker_kills: int, seed: int = 1) -> dict[str, t.Any]:
    """The whole crash test on ``url``; return its figures."""
    reset(url)
    started = time.monotonic()
    points = kill_producers(url, kills, seed)
    left_by_producers = pending(url)
    killed_workers = drain_with_killed_workers(url, 2, worker_kills)
    figures = check(url)
    return {
        **figures,
        "producer_kills": dict(points),
        "left_to_workers": left_by_producers,
        "worker_kills": killed_workers,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--worker-kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--produce", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--point", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.produce is not None:
        produce(args.url, args.produce, None if args.point == "timer" else args.point)
        return
    print(run(args.url, args.kills, args.worker_kills, args.seed))


if __name__ == "__main__":
    main()
