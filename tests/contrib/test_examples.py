"""The integration examples run as documented, against the local Redis and RabbitMQ."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_flask_shop_example_runs() -> None:
    """Only the committed price change drops the cache entry and reaches the worker."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "flask_shop.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert result.stdout.splitlines() == [
        "price: {'cached': False, 'price': 3}",
        "price: {'cached': True, 'price': 3}",
        "1. a failing request changes nothing:",
        "  status 500, cached: True",
        "2. a committed change drops the cache entry and enqueues the task:",
        "  status 200, cached: False",
        "  worker: reindexed product 1 at 4",
        "price: {'cached': False, 'price': 4}",
    ]
