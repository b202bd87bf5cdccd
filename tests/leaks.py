"""Unclosed aiosqlite connections fail the run, without hanging it at exit.

aiosqlite warns (``ResourceWarning``) when an unclosed connection is collected, then stops the
connection's worker thread, which is not a daemon. With ``filterwarnings = error`` the warning
would be raised instead, the thread never stopped, and pytest would hang at exit. pyproject.toml
lets that one warning through (``always``); this plugin records it and fails the run at its
end, naming the tests during which a leaked connection was collected.
"""

from __future__ import annotations

import warnings

import pytest

_leaks: list[str] = []
"""Where each leaked connection was collected: a test's node id and the warning's text."""


def is_leak(message: warnings.WarningMessage) -> bool:
    """Whether ``message`` is aiosqlite's warning for an unclosed connection."""
    return issubclass(message.category, ResourceWarning) and "aiosqlite" in message.filename


def pytest_configure(config: pytest.Config) -> None:
    _leaks.clear()


def pytest_warning_recorded(
    warning_message: warnings.WarningMessage, when: str, nodeid: str, location: object
) -> None:
    """Record an unclosed aiosqlite connection collected while a test ran."""
    if is_leak(warning_message):
        _leaks.append(f"{nodeid or when}: {warning_message.message}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail a run that leaked aiosqlite connections, even if every test passed."""
    if not _leaks:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "unclosed aiosqlite connections", red=True)
        reporter.write_line(
            f"{len(_leaks)} aiosqlite connection(s) were collected unclosed: the test named (or"
            " one before it) left an AsyncEngine undisposed or a connection open"
        )
        for leak in _leaks:
            reporter.write_line(f"  {leak}")
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
