"""``python -m benchmarks``: run the benchmarks and print the tables."""

from __future__ import annotations

from benchmarks.run import main

raise SystemExit(main())
