"""The application the outbox tests run: its tables, and handlers that record their runs.

Importable by a worker process (``--import tests.outbox.app``). Each handler writes one row to
``effects`` through ``current_session()``, so a test reads from the database what ran, and how
many times.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import os
import threading
import time

import sqlalchemy as sa

import sa_signals
from sa_signals import outbox

metadata = sa.MetaData()
outbox_table = outbox.table(metadata)
effects = sa.Table(
    "outbox_effects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tag", sa.String(100), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)
accounts = sa.Table(
    "outbox_accounts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tag", sa.String(100), nullable=False),
)

started = threading.Event()
"""Set when :func:`slow` begins (in this process)."""

failures: dict[str, int] = {}
"""Tag -> runs of :func:`flaky` still to fail (in this process)."""

waiting = threading.Event()
"""Set when :func:`wait_forever` has written and begins to wait (in this process)."""


def _record(tag: str) -> None:
    sa_signals.current_session().execute(effects.insert().values(tag=tag, pid=os.getpid()))


@outbox.handler
def record(tag: str) -> None:
    """Write ``tag`` to ``effects``."""
    _record(tag)


@outbox.handler(inline=False)
def record_later(tag: str) -> None:
    """Write ``tag`` to ``effects``; left to the workers."""
    _record(tag)


@outbox.handler(max_attempts=3, retry=lambda attempt: 0.0)
def flaky(tag: str) -> None:
    """Write ``tag``, then raise while ``failures[tag]`` says so (the write is rolled back)."""
    _record(tag)
    left = failures.get(tag, 0)
    if left:
        failures[tag] = left - 1
        raise RuntimeError(f"flaky {tag} failed")


blocked_runs: list[str] = []
"""Tags :func:`blocked` ran for (in this process)."""

block: list[c.Callable[[], None]] = []
"""What :func:`blocked` calls on its first run, before it raises (set by the test)."""


@outbox.handler(retry=lambda attempt: 0.0)
def blocked(tag: str) -> None:
    """Write ``tag``; on the first run call ``block`` (which gets another transaction to wait
    for this row's lock) and raise, so that the failure cannot be recorded at once."""
    _record(tag)
    blocked_runs.append(tag)
    if len(blocked_runs) == 1:
        for function in block:
            function()
        raise RuntimeError(f"blocked {tag} failed")


@outbox.handler(max_attempts=2, retry=lambda attempt: 0.0)
def always_fails(tag: str) -> None:
    """Write ``tag``, then raise."""
    _record(tag)
    raise ValueError(f"always_fails {tag}")


@outbox.handler
def slow(tag: str, seconds: float) -> None:
    """Sleep ``seconds`` (a worker stopped meanwhile), then write ``tag``."""
    started.set()
    time.sleep(seconds)
    _record(tag)


@outbox.handler(max_attempts=3)
def dangling(tag: str) -> None:
    """Write ``tag``, and a row breaking a deferred foreign key: its COMMIT fails.

    ``outbox_links`` is made by the test that runs it (PostgreSQL)."""
    _record(tag)
    sa_signals.current_session().execute(
        sa.text("INSERT INTO outbox_links (effect_id) VALUES (-1)")
    )


@outbox.handler
async def arecord(tag: str) -> None:
    """Write ``tag`` through the distinct ``AsyncSession`` (a coroutine handler)."""
    await asyncio.sleep(0)
    session = sa_signals.current_async_session()
    await session.execute(effects.insert().values(tag=tag, pid=os.getpid()))


met: list[str] = []
"""Tags :func:`ameet` ran for (in this process)."""


@outbox.handler(inline=False)
async def ameet(tag: str) -> None:
    """Wait (up to 10 s) until two runs of this handler are under way, then write ``tag``
    through the distinct ``AsyncSession``: two rows run at once."""
    met.append(tag)
    deadline = time.monotonic() + 10
    while len(met) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    session = sa_signals.current_async_session()
    await session.execute(effects.insert().values(tag=tag, pid=os.getpid()))


@outbox.handler(inline=False)
async def wait_forever(tag: str) -> None:
    """Write ``tag`` through the distinct ``AsyncSession``, then wait until cancelled."""
    session = sa_signals.current_async_session()
    await session.execute(effects.insert().values(tag=tag, pid=os.getpid()))
    waiting.set()
    await asyncio.Event().wait()
