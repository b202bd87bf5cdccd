"""Real processes on real servers: four listeners, a writer, killed servers and connections."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from tests.fanout.conftest import Heard
from tests.fanout.conftest import kill_connections
from tests.fanout.conftest import listening
from tests.fanout.conftest import new_name
from tests.fanout.conftest import publishing
from tests.fanout.conftest import RedisServer
from tests.fanout.conftest import ROOT
from tests.fanout.conftest import WAIT
from tests.fanout.transports import make_transport
from tests.models import Item

pytestmark = pytest.mark.backends("sqlite")
"""The writer's database does not matter here (test_publish.py covers each)."""

Scoped: t.TypeAlias = sa_orm.scoped_session[sa_orm.Session]


class ListenerProcess:
    """``tests/fanout/listener_process.py`` in a process of its own; its events read back."""

    def __init__(self, kind: str, name: str, url: str = "") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fanout.listener_process", kind, name, url],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, t.Any]] = []
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._condition:
                self.events.append(json.loads(line))
                self._condition.notify_all()

    def wait_for(
        self, predicate: t.Callable[[list[dict[str, t.Any]]], bool], timeout: float = WAIT
    ) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: predicate(self.events), timeout)

    def changes(self) -> list[tuple[str, str, t.Any]]:
        return [
            (name, operation, None if identity is None else tuple(identity))
            for name, operation, identity in (e["change"] for e in self.events if "change" in e)
        ]

    def gaps(self) -> list[str]:
        return [event["gap"] for event in self.events if "gap" in event]

    def saw(self, identity: tuple[t.Any, ...]) -> bool:
        return any(change[2] == identity for change in self.changes())

    def close_input(self) -> None:
        """Ask the process to stop."""
        assert self.process.stdin is not None
        self.process.stdin.close()

    def stop(self) -> None:
        """Stop the process (killing it if it does not stop) and read what it printed last."""
        self.close_input()
        try:
            self.process.wait(WAIT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._thread.join(WAIT)
            assert self.process.stdout is not None
            self.process.stdout.close()


class Listeners(list[ListenerProcess]):
    def start(self, count: int, kind: str, name: str, url: str = "") -> Listeners:
        self.extend(ListenerProcess(kind, name, url) for _ in range(count))
        for listener in self:
            assert listener.wait_for(lambda events: any("ready" in e for e in events))
        return self

    def wait_all(
        self, predicate: t.Callable[[ListenerProcess], bool], timeout: float = WAIT
    ) -> bool:
        return all(
            listener.wait_for(lambda events, one=listener: predicate(one), timeout)
            for listener in self
        )


@pytest.fixture
def listeners() -> t.Iterator[Listeners]:
    """Listener processes started by the test, stopped at its end."""
    started = Listeners()
    yield started
    for listener in started:
        listener.close_input()  # all at once: they stop side by side
    for listener in started:
        listener.stop()


def lose_connections(kind: str, transport: t.Any, server: RedisServer | None) -> None:
    """Kill every listening connection: the Redis server itself (started again), or the
    PostgreSQL backends of the LISTEN connections."""
    if server is not None:
        server.kill()
        server.start()
    else:
        assert kill_connections(transport, "listener") == 4


def test_four_listeners_see_each_committed_change_once_and_survive_lost_connections(
    Session: Scoped, transport_kind: str, listeners: Listeners, request: pytest.FixtureRequest
) -> None:
    """Four listener processes each see every committed change once, nothing rolled back; when
    their connections are lost (Redis killed and started again, the LISTEN backends
    terminated), each reports a gap, then hears on."""
    name = new_name()
    server: RedisServer | None = None
    if transport_kind == "postgresql":
        url = ""
        transport = make_transport(transport_kind, name)
    else:
        server = request.getfixturevalue("redis_server")
        url = server.url
        transport = make_transport(transport_kind, name, url=url, timeout=0.5)
    listeners.start(4, transport_kind, name, url)
    with publishing(Session, transport):
        session = Session()
        with session.begin():
            session.add_all([Item(id=1, name="a"), Item(id=2, name="b")])
        session.begin()
        session.add(Item(id=3, name="rolled back"))
        session.flush()
        session.rollback()
        with session.begin():
            with session.begin_nested():
                session.get_one(Item, 1).value = 10
            savepoint = session.begin_nested()
            session.add(Item(id=4, name="savepoint rolled back"))
            session.get_one(Item, 2).value = 20
            session.flush()
            savepoint.rollback()
        with session.begin():
            session.delete(session.get_one(Item, 2))
        with session.begin():
            session.execute(sa.update(Item).where(Item.id == 1).values(value=11))
        with session.begin():
            session.add(Item(id=999, name="sentinel"))
        Session.remove()
        assert listeners.wait_all(lambda listener: listener.saw((999,)))
        expected = [
            ("items", "insert", (1,)),
            ("items", "insert", (2,)),
            ("items", "update", (1,)),
            ("items", "delete", (2,)),
            ("items", "update", (1,)),
            ("items", "insert", (999,)),
        ]
        for listener in listeners:
            assert listener.changes() == expected
            assert listener.gaps() == ["subscribed"]

        lose_connections(transport_kind, transport, server)
        assert listeners.wait_all(lambda listener: "reconnected" in listener.gaps())
        # The publisher's first send after Redis restarted meets its dead connection and fails
        # (announced as a gap): commit until a change is heard.
        for n in range(1000, 1010):
            with Session.begin():
                Session.add(Item(id=n, name=f"after {n}"))
            if listeners.wait_all(lambda listener, n=n: listener.saw((n,)), timeout=2.0):
                break
    for listener in listeners:
        events = listener.events
        gap = events.index({"gap": "reconnected"})
        assert [e for e in events[:gap] if "change" in e] == [
            {"change": [name, operation, list(identity)]} for name, operation, identity in expected
        ]
        after = [tuple(e["change"][2]) for e in events[gap:] if "change" in e]
        assert after
        assert all(identity[0] >= 1000 for identity in after)
        assert len(set(after)) == len(after)


@pytest.mark.transports("redis-pubsub")
def test_a_killed_publisher_is_a_gap_a_stopped_one_is_not(
    engine: sa.Engine, transport_kind: str, heard: Heard
) -> None:
    """A publisher killed with SIGKILL falls silent: a gap; one that exits says goodbye."""
    name = new_name()
    transport = make_transport(transport_kind, name)
    url = engine.url.render_as_string(hide_password=False)
    command = [sys.executable, "-m", "tests.fanout.writer_process", transport_kind, name, "", url]
    with contextlib.ExitStack() as stack:
        stack.enter_context(listening(transport, own=False))
        writers = [
            stack.enter_context(
                subprocess.Popen(
                    [*command, str(n)],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            for n in (1, 2)
        ]
        ids = []
        for writer in writers:
            assert writer.stdout is not None
            ids.append(writer.stdout.readline().strip())
        assert heard.wait_for(lambda: sorted(heard.identities()) == [(1,), (2,)])
        stopped, killed = writers
        assert stopped.stdin is not None
        stopped.stdin.close()
        assert stopped.wait(WAIT) == 0
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        assert heard.wait_for(lambda: len(heard.gaps) == 2)
        time.sleep(1.0)  # longer than three heartbeats of the stopped publisher: no gap for it
    assert heard.gaps == ["subscribed", f"publisher {ids[1]} fell silent"]


@pytest.mark.transports("postgresql")
def test_a_forked_publisher_starts_afresh_and_leaves_the_parent_alone(
    engine: sa.Engine, transport_kind: str, heard: Heard, tmp_path: t.Any
) -> None:
    """A child forked from a publishing process publishes as a new publisher; the parent's
    connection, inherited by the child, keeps working for the parent."""
    name = new_name()
    transport = make_transport(transport_kind, name)
    url = f"sqlite:///{tmp_path / 'fork.db'}"
    with sa.create_engine(url).begin() as connection:
        Item.metadata.create_all(connection)
    with listening(transport, own=False):
        result = subprocess.run(
            [sys.executable, "-m", "tests.fanout.fork_process", transport_kind, name, url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=WAIT,
        )
        assert result.returncode == 0, result.stderr
        child, parent = result.stdout.split()
        assert heard.wait_for(lambda: len(heard.changes) == 3)
    assert child != parent
    assert [(m.publisher, m.sequence) for m in heard.messages] == [
        (parent, 1),
        (child, 1),
        (parent, 2),
    ]
    assert heard.gaps == ["subscribed"]
