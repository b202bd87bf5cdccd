"""Profile one workload of one system: ``python -m benchmarks.profile [WORKLOAD] [SYSTEM]``.

Prints the cProfile table (sorted by own time) of 2000 transactions on SQLite ``:memory:``;
SYSTEM is ``layer`` (sa_signals, the default), ``hand`` or ``bare``.
"""

from __future__ import annotations

import cProfile
import pstats
import sys

from benchmarks.systems import sqlite_engine
from benchmarks.systems import SYSTEMS


def main(argv: list[str]) -> int:
    workload = argv[0] if argv else "A-cb"
    prefix = argv[1] if len(argv) > 1 else "layer"
    system_class = next(s for s in SYSTEMS if s.prefix == prefix)
    system = system_class(sqlite_engine("sqlite://", wal=False), 300)
    system.setup(workload)
    transaction = system.transaction(workload)
    system.enter()
    system.before_batch(workload)
    try:
        for _ in range(50):
            transaction()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(2000):
            transaction()
        profiler.disable()
    finally:
        system.after_batch(workload)
        system.exit()
        system.teardown(workload)
        system.close()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
