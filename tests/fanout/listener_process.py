"""A listening process for the fan-out tests: ``python -m tests.fanout.listener_process KIND NAME
URL``. Prints one JSON line per event: ``{"ready": pid}``, ``{"gap": reason}``, ``{"change":
[name, operation, identity]}``; stops when its standard input closes."""

from __future__ import annotations

import json
import os
import sys
import threading
import typing as t

from sa_signals import fanout
from sa_signals import signals
from tests.fanout.transports import make_transport
from tests.models import Base

_lock = threading.Lock()


def emit(event: dict[str, t.Any]) -> None:
    with _lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def committed(sender: t.Any, /, *, changes: list[fanout.RemoteChange], **kwargs: t.Any) -> None:
    for change in changes:
        identity = None if change.identity is None else list(change.identity)
        emit({"change": [change.name, change.operation, identity]})


def gap(sender: t.Any, /, *, reason: str, **kwargs: t.Any) -> None:
    emit({"gap": reason})


def main(kind: str, name: str, url: str) -> None:
    signals.remote_committed.connect(committed)
    signals.remote_gap.connect(gap)
    with fanout.listen(make_transport(kind, name, url=url or None), models=Base) as listener:
        if not listener.wait_ready(20):
            raise SystemExit("the listener did not subscribe")
        emit({"ready": os.getpid()})
        sys.stdin.read()  # until the test closes it


if __name__ == "__main__":
    main(*sys.argv[1:4])
