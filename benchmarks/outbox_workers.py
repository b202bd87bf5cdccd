"""Starting and stopping outbox worker processes, for the outbox's benchmark scripts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import typing as t


def worker_command(url: str, table: str, module: str, *options: str) -> list[str]:
    """The command line of ``python -m sa_signals.outbox worker`` with ``module``'s handlers."""
    return [
        sys.executable,
        "-m",
        "sa_signals.outbox",
        "worker",
        "--url",
        url,
        "--table",
        table,
        "--import",
        module,
        *options,
    ]


def stop(processes: t.Iterable[subprocess.Popen[t.Any]]) -> None:
    """SIGTERM every process, then wait for each (killing one that takes over 30 s)."""
    running = list(processes)
    for process in running:
        process.send_signal(signal.SIGTERM)
    for process in running:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition: t.Callable[[], bool], seconds: float = 600.0) -> None:
    """Return once ``condition()`` is true; raise after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the outbox workers did not finish in time")
        time.sleep(0.01)
