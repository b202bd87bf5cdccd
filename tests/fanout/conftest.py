"""Fixtures of the fan-out tests: the transports over the real servers, a private Redis server to
kill, and a recorder of what listeners delivered.

``transport_kind`` runs a test once per configured transport: ``postgresql`` (NOTIFY on the
database of ``SA_SIGNALS_TEST_POSTGRESQL_URL``), ``redis-pubsub`` and ``redis-stream`` (on
``SA_SIGNALS_TEST_REDIS_URL``). Every channel and stream is named ``fanout-test-<random>``.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time
import typing as t
import uuid

import pytest

from sa_signals import fanout
from sa_signals import signals
from sa_signals.fanout import Transport
from tests.fanout.transports import make_transport
from tests.fanout.transports import postgresql_url
from tests.fanout.transports import redis_url
from tests.models import Base

if t.TYPE_CHECKING:
    from tests.conftest import Connector

ROOT = pathlib.Path(__file__).resolve().parents[2]

WAIT: t.Final = 20.0
"""Seconds a test waits for something that must happen (never asserted on)."""


def free_port() -> int:
    """Return a loopback TCP port that nothing listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def transport_params() -> list[t.Any]:
    params = [
        pytest.param("redis-pubsub", marks=pytest.mark.services("redis")),
        pytest.param("redis-stream", marks=pytest.mark.services("redis")),
    ]
    if os.environ.get("SA_SIGNALS_TEST_POSTGRESQL_URL"):
        params.insert(0, "postgresql")
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "transport_kind" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("transports")
        params = transport_params()
        if marker is not None:
            params = [p for p in params if _value(p) in marker.args]
        metafunc.parametrize("transport_kind", params)


def _value(param: t.Any) -> str:
    return param if isinstance(param, str) else param.values[0]


def new_name() -> str:
    return f"fanout-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def transport(transport_kind: str) -> c.Iterator[Transport]:
    """A transport of ``transport_kind`` on a channel or stream of this test's own."""
    name = new_name()
    yield make_transport(transport_kind, name)
    if transport_kind == "redis-stream":
        import redis

        client = redis.Redis.from_url(redis_url())
        client.delete(name)
        client.close()


class Heard:
    """Records what ``remote_committed`` and ``remote_gap`` delivered; waits for it."""

    def __init__(self) -> None:
        self.changes: list[t.Any] = []
        """Every RemoteChange delivered, in order."""
        self.sends: list[tuple[t.Any, list[t.Any]]] = []
        """``(sender, changes)`` of every remote_committed send."""
        self.gaps: list[str] = []
        """The reason of every remote_gap."""
        self.events: list[t.Any] = []
        """Changes and ``("gap", reason)`` in the order they came."""
        self.messages: list[t.Any] = []
        """Every message delivered, once."""
        self.threads: set[str] = set()
        self._condition = threading.Condition()

    def committed(self, sender: t.Any, /, *, changes: list[t.Any], **kwargs: t.Any) -> None:
        with self._condition:
            self.sends.append((sender, changes))
            if not any(message is kwargs["message"] for message in self.messages):
                self.messages.append(kwargs["message"])
            self.changes.extend(changes)
            self.events.extend(changes)
            self.threads.add(threading.current_thread().name)
            self._condition.notify_all()

    def gap(self, sender: t.Any, /, *, reason: str, **kwargs: t.Any) -> None:
        with self._condition:
            self.gaps.append(reason)
            self.events.append(("gap", reason))
            self._condition.notify_all()

    def wait_for(self, predicate: c.Callable[[], bool], timeout: float = WAIT) -> bool:
        """Wait until ``predicate()`` holds (it may also read counters that notify nobody)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while not predicate():
                if time.monotonic() > deadline:
                    return False
                self._condition.wait(0.01)
            return True

    def identities(self) -> list[t.Any]:
        return [change.identity for change in self.changes]


@pytest.fixture
def heard(connect: Connector) -> Heard:
    """A recorder connected to ``remote_committed`` and ``remote_gap``."""
    recorder = Heard()
    connect(signals.remote_committed, recorder.committed)
    connect(signals.remote_gap, recorder.gap)
    return recorder


class RedisServer:
    """A private ``redis-server`` on loopback that a test may kill (SIGKILL) and start again."""

    def __init__(self, port: int, directory: pathlib.Path) -> None:
        self.port = port
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        executable = shutil.which("redis-server")
        assert executable is not None, "redis-server is not installed"
        self.process = subprocess.Popen(
            [
                executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            # Answered by another process's server if ours could not bind the port: check ours.
            if self.process.poll() is not None:
                msg = f"the private redis-server exited: is port {self.port} taken?"
                raise RuntimeError(msg)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"the private redis-server on port {self.port} did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None


@pytest.fixture
def redis_server(tmp_path: pathlib.Path) -> c.Iterator[RedisServer]:
    """A private Redis server on a free port, killed at the end of the test."""
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    if server.process is not None:
        server.kill()


@contextlib.contextmanager
def publishing(
    target: t.Any, transport: Transport, **options: t.Any
) -> c.Iterator[fanout.Publisher]:
    """A publisher of ``target``'s commits, stopped at the end."""
    publisher = fanout.publish(target, transport, **options)
    try:
        yield publisher
    finally:
        publisher.stop()


@contextlib.contextmanager
def listening(transport: Transport, **options: t.Any) -> c.Iterator[fanout.Listener]:
    """A listener that hears this process's own publishers too, subscribed, stopped at the end."""
    options.setdefault("own", True)
    options.setdefault("models", Base)
    listener = fanout.listen(transport, **options)
    try:
        assert listener.wait_ready(WAIT), f"{transport!r} did not subscribe"
        yield listener
    finally:
        listener.stop()


def kill_connections(transport: t.Any, role: str) -> int:
    """Kill the server side of ``transport``'s connections of ``role``; return how many."""
    if hasattr(transport, "client_name"):
        import redis

        client = redis.Redis.from_url(transport.url)
        try:
            name = transport.client_name(role)
            ids = [entry["id"] for entry in client.client_list() if entry.get("name") == name]
            for client_id in ids:
                client.client_kill_filter(_id=client_id)
            return len(ids)
        finally:
            client.close()
    import psycopg

    name = f"sa_signals fan-out {role} {transport.channel}"[:63]
    url = postgresql_url().replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        ).fetchall()
    return len(rows)
