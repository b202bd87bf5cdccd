"""The integration examples run as documented, against the local Redis and RabbitMQ."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import URL_VARIABLES

pytestmark = [
    pytest.mark.services("rabbitmq", "redis"),
    pytest.mark.requires("celery", "fastapi", "flask", "redis"),
]

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.backends("sqlite", "postgresql")
def test_flask_shop_example_runs(backend: str) -> None:
    """Only the committed price change drops the cache entry and reaches the worker."""
    url = [] if backend == "sqlite" else [os.environ[URL_VARIABLES[backend]]]
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "flask_shop.py"), *url],
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


@pytest.mark.backends("sqlite", "postgresql")
def test_fastapi_shop_example_runs(backend: str) -> None:
    """Only the committed price change drops the cache entry and reaches the worker."""
    url = [] if backend == "sqlite" else [os.environ[URL_VARIABLES[backend]]]
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "fastapi_shop.py"), *url],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert result.stdout.splitlines() == [
        "price: {'price': 3, 'cached': False}",
        "price: {'price': 3, 'cached': True}",
        "1. a failing request changes nothing:",
        "  status 422, cached: True",
        "2. a committed change drops the cache entry and enqueues the task:",
        "  status 200, cached: False",
        "  worker: reindexed product 1 at 4",
        "price: {'price': 4, 'cached': False}",
    ]
