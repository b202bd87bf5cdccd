"""The test suites of the Flask and FastAPI examples, run as users run them (``pytester``)."""

from __future__ import annotations

import os
import pathlib
import shutil

# The drivers and dialects are imported here, before pytester's snapshots of sys.modules drop
# what a test imported: an in-process run must not import one a second time.
import aiomysql  # noqa: F401
import aiosqlite  # noqa: F401
import asyncpg  # noqa: F401
import fastapi  # noqa: F401
import flask  # noqa: F401
import httpx  # noqa: F401
import psycopg  # noqa: F401
import pymysql  # noqa: F401
import pytest
import pytest_asyncio  # noqa: F401
import sqlalchemy as sa
import sqlalchemy.dialects.mysql
import sqlalchemy.dialects.postgresql

import sa_signals
from sa_signals._core import bridge
from tests.conftest import ASYNC_DRIVERS
from tests.conftest import URL_VARIABLES

pytest_plugins = ["pytester"]

EXAMPLES = pathlib.Path(__file__).parent.parent.parent / "examples"
FLASK_EXAMPLE = EXAMPLES / "testing_flask"
STARLETTE_EXAMPLE = EXAMPLES / "testing_starlette"


def database_url(backend: str, pytester: pytest.Pytester) -> str:
    """The sync URL of ``backend``: for SQLite, a file in the run's folder."""
    if backend == "sqlite":
        return f"sqlite:///{pytester.path / 'orders.db'}"
    return os.environ[URL_VARIABLES[backend]]


@pytest.mark.parametrize(
    ("example", "table", "options"),
    [
        (FLASK_EXAMPLE, "flask_orders", ["-p", "no:asyncio"]),
        (STARLETTE_EXAMPLE, "fastapi_orders", []),
    ],
    ids=["flask", "starlette"],
)
def test_example_suites(
    backend: str,
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    example: pathlib.Path,
    table: str,
    options: list[str],
) -> None:
    """The test suites of the Flask and FastAPI examples pass with the documented fixtures, one
    session per request, and leave no row behind."""
    for path in [*example.glob("*.py"), example / "pytest.ini"]:
        shutil.copy(path, pytester.path)
    url = sa.make_url(database_url(backend, pytester))
    if example is STARLETTE_EXAMPLE:
        url = url.set(drivername=ASYNC_DRIVERS.get(backend, "mysql+aiomysql"))
    monkeypatch.setenv("ORDERS_DATABASE_URL", url.render_as_string(hide_password=False))
    engine = sa.create_engine(database_url(backend, pytester))
    installed_before = set(bridge.installed())
    try:
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-W", "error", *options)
        result.assert_outcomes(passed=4)
        with engine.connect() as connection:
            assert connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) == 0
    finally:
        # The example installed its extension's session at import: the run is over.
        for session_class in set(bridge.installed()) - installed_before:
            sa_signals.uninstall(session_class)
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
