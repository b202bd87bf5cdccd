"""Profile one workload of one system: ``python -m benchmarks.profile [WORKLOAD] [SYSTEM] [DB]``.

Prints the cProfile table (sorted by own time) of 2000 transactions; SYSTEM is ``layer``
(sa_signals, the default), ``hand`` or ``bare``; DB is ``sqlite-memory`` (the default) or
``aiosqlite-memory``, where the async twin runs its transactions in one task of an event loop.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextlib
import cProfile
import os
import pstats
import sys
import typing as t

from benchmarks.instructions import make_system

WARM_UP = 50
TRANSACTIONS = int(os.environ.get("SA_SIGNALS_PROFILE_TRANSACTIONS", "2000"))


def main(argv: list[str]) -> int:
    workload = argv[0] if argv else "A-cb"
    prefix = argv[1] if len(argv) > 1 else "layer"
    db = argv[2] if len(argv) > 2 else "sqlite-memory"
    profiler = cProfile.Profile()
    runner = asyncio.Runner() if db.startswith("aiosqlite") else None
    with runner or contextlib.nullcontext():
        system = make_system(prefix, db, "", runner)
        system.setup(workload)
        transaction = system.transaction(workload)
        system.enter()
        system.before_batch(workload)
        try:
            if runner is None:
                _profile(transaction, profiler)
            else:
                runner.run(_aprofile(transaction, profiler))
        finally:
            system.after_batch(workload)
            system.exit()
            system.teardown(workload)
            system.close()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return 0


def _profile(transaction: c.Callable[[], None], profiler: cProfile.Profile) -> None:
    for _ in range(WARM_UP):
        transaction()
    profiler.enable()
    for _ in range(TRANSACTIONS):
        transaction()
    profiler.disable()


async def _aprofile(transaction: c.Callable[[], t.Any], profiler: cProfile.Profile) -> None:
    for _ in range(WARM_UP):
        await transaction()
    profiler.enable()
    for _ in range(TRANSACTIONS):
        await transaction()
    profiler.disable()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
