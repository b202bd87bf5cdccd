"""The test suite's check for unclosed aiosqlite connections (``tests/leaks.py``)."""

from __future__ import annotations

import pathlib
import shutil

import pytest

pytest_plugins = ["pytester"]

ROOT = pathlib.Path(__file__).parent.parent

LEAKING_TEST = """
import asyncio
import gc

import aiosqlite


def test_leaks_a_connection():
    async def connect():
        return await aiosqlite.connect(":memory:")

    connection = asyncio.run(connect())
    del connection
    gc.collect()


def test_passes():
    pass
"""


@pytest.mark.requires("aiosqlite")
def test_an_unclosed_connection_fails_the_run_and_it_exits(
    pytester: pytest.Pytester, pytestconfig: pytest.Config
) -> None:
    """With the suite's own warning filters, the run fails and names the test, instead of
    passing or hanging at exit."""
    shutil.copy(ROOT / "tests" / "leaks.py", pytester.path / "leaks.py")
    filters = "".join(f"\n    {each}" for each in pytestconfig.getini("filterwarnings"))
    pytester.makeini(f"[pytest]\nfilterwarnings ={filters}\n")
    pytester.makepyfile(test_leaking=LEAKING_TEST)
    result = pytester.runpytest_subprocess(
        "-p", "leaks", "-p", "no:cacheprovider", "-p", "no:asyncio", timeout=60
    )
    result.assert_outcomes(passed=2, warnings=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= unclosed aiosqlite connections =*",
            "1 aiosqlite connection(s) were collected unclosed*",
            "  test_leaking.py::test_leaks_a_connection: *was deleted before being closed*",
        ]
    )
