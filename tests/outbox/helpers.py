"""Waiting for what another thread or process does, and running the outbox's command line."""

from __future__ import annotations

import collections.abc as c
import os
import pathlib
import subprocess
import time

from benchmarks.outbox_workers import worker_command

ROOT = pathlib.Path(__file__).resolve().parents[2]
PATIENCE = 30.0
"""Seconds to wait for another process before the test fails (never reached when it works)."""


def wait_for(condition: c.Callable[[], bool], what: str) -> None:
    """Return once ``condition()`` is true; fail after :data:`PATIENCE` seconds."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def start_worker(url: str, *args: str) -> subprocess.Popen[str]:
    """Start ``python -m sa_signals.outbox worker`` on ``url`` with the test handlers."""
    return subprocess.Popen(
        worker_command(url, "sa_signals_outbox", "tests.outbox.app", *args),
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
