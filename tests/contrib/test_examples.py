"""The integration examples run as documented, against the local Redis and RabbitMQ."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import uuid

import kombu
import pytest
import sqlalchemy as sa

from tests.conftest import URL_VARIABLES

pytestmark = [
    pytest.mark.services("rabbitmq", "redis"),
    pytest.mark.requires("celery", "fastapi", "flask", "redis"),
]

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_example(name: str, *args: str, run: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>.py`` on the test servers, as a user would; ``run`` names its queue."""
    env = {
        **os.environ,
        "REDIS_URL": os.environ["SA_SIGNALS_TEST_REDIS_URL"],
        "BROKER_URL": os.environ["SA_SIGNALS_TEST_BROKER_URL"],
        "SHOP_RUN": run or f"sa-signals-test-shop-{uuid.uuid4().hex}",
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


def leave_a_product_behind(backend: str) -> list[str]:
    """A ``shop_products`` table holding a row, as an interrupted run leaves it; the URL args."""
    if backend == "sqlite":
        return []
    url = os.environ[URL_VARIABLES[backend]]
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS shop_products")
            connection.exec_driver_sql(
                "CREATE TABLE shop_products (id INTEGER PRIMARY KEY, name VARCHAR(50),"
                " price INTEGER NOT NULL)"
            )
            connection.exec_driver_sql("INSERT INTO shop_products VALUES (1, 'left', 9)")
    finally:
        engine.dispose()
    return [url]


@pytest.mark.backends("sqlite", "postgresql")
def test_flask_shop_example_runs(backend: str) -> None:
    """Only the committed price change drops the cache entry and reaches the worker.

    A table left by an interrupted run is dropped first, and the demo's own at the end.
    """
    result = run_example("flask_shop", *leave_a_product_behind(backend))
    assert result.returncode == 0, result.stderr
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
    if backend != "sqlite":
        engine = sa.create_engine(os.environ[URL_VARIABLES[backend]])
        try:
            assert not sa.inspect(engine).has_table("shop_products")
        finally:
            engine.dispose()


@pytest.mark.backends("sqlite", "postgresql")
def test_fastapi_shop_example_runs(backend: str) -> None:
    """Only the committed price change drops the cache entry and reaches the worker."""
    result = run_example("fastapi_shop", *leave_a_product_behind(backend))
    assert result.returncode == 0, result.stderr
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


@pytest.mark.parametrize("name", ["flask_shop", "fastapi_shop"])
def test_failed_set_up_leaves_no_worker_nor_queue(name: str) -> None:
    """A database that cannot be reached fails the demo; its worker and queue are gone too."""
    run = f"sa-signals-test-shop-{uuid.uuid4().hex}"
    result = run_example(name, "postgresql://nobody@127.0.0.1:9/nothing", run=run)
    assert result.returncode != 0
    assert "OperationalError" in result.stderr
    assert [
        path for path in pathlib.Path("/proc").glob("[0-9]*/cmdline") if running(path, run)
    ] == []
    with kombu.Connection(os.environ["SA_SIGNALS_TEST_BROKER_URL"]) as connection:
        channel = connection.channel()
        with pytest.raises(connection.channel_errors, match="NOT_FOUND"):
            channel.queue_declare(run, passive=True)


def running(cmdline: pathlib.Path, run: str) -> bool:
    """Whether the process of ``cmdline`` (a /proc entry) names ``run`` in its command line."""
    try:
        return run in cmdline.read_bytes().decode(errors="replace")
    except OSError:  # the process ended meanwhile
        return False
