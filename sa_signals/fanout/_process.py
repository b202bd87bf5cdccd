"""Who this process is to the fan-out, renewed in a forked child."""

from __future__ import annotations

import os
import socket
import threading
import typing as t
import uuid
import weakref

_token = ""
_counter = 0
_lock = threading.Lock()
_fork_hooks: weakref.WeakSet[t.Any] = weakref.WeakSet()


def _renew() -> None:
    global _token, _counter  # changed at import and after a fork only
    _token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    _counter = 0


def new_publisher_id() -> str:
    """Return an id no other publisher, in this process or any other, has."""
    global _counter  # changed under _lock
    with _lock:
        _counter += 1
        return f"{_token}.{_counter}"


def is_own(publisher: str) -> bool:
    """Whether ``publisher`` is an id of this process."""
    return publisher.startswith(_token + ".")


class ForkAware(t.Protocol):
    def after_fork(self) -> None: ...


def on_fork(obj: ForkAware) -> None:
    """Call ``obj.after_fork()`` in every child forked while ``obj`` is alive."""
    _fork_hooks.add(obj)


def _after_fork_in_child() -> None:
    global _lock  # the parent's lock may have been held by another thread at the fork
    _lock = threading.Lock()
    _renew()
    for obj in list(_fork_hooks):
        obj.after_fork()


_renew()
os.register_at_fork(after_in_child=_after_fork_in_child)
