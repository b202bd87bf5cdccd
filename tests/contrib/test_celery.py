"""enqueue_on_commit() against RabbitMQ, a Redis result backend and a real worker process."""

from __future__ import annotations

import collections.abc as c
import os
import pathlib
import signal
import subprocess
import sys
import typing as t
import uuid

import kombu.exceptions
import pytest
import redis
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from sa_signals import signals
from sa_signals.contrib.celery import enqueue_on_commit
from sa_signals.contrib.celery import Enqueued
from sa_signals.contrib.celery import TaskNotSentError
from tests.contrib import celery_app
from tests.models import Item

pytestmark = pytest.mark.services("rabbitmq", "redis")

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 20
"""Seconds to wait for one task result."""


class Worker:
    """A ``celery worker`` process consuming one queue of its own; what it received is read
    back from a Redis list."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.redis = redis.Redis.from_url(celery_app.REDIS_URL)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.contrib.celery_app",
                "worker",
                "--pool=solo",
                f"--queues={queue}",
                f"--hostname={queue}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=WARNING",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )

    def key(self) -> str:
        """A fresh Redis list for one test."""
        return f"{self.queue}:{uuid.uuid4()}"

    def received(self, key: str) -> list[str]:
        """Everything the worker received for ``key``, once a last marker task went through.

        The solo pool runs the queue's tasks one at a time, in order: when the marker is done,
        every task sent before it is done too.
        """
        marker = f"marker-{uuid.uuid4()}"
        assert celery_app.record.delay(key, marker).get(timeout=TIMEOUT) == marker
        values = [value.decode() for value in self.redis.lrange(key, 0, -1)]
        assert values[-1] == marker
        return values[:-1]

    def stop(self) -> None:
        # Every task it was sent is done (see received()), so a kill loses nothing if the warm
        # shutdown takes long (it waits for the broker connection's timeouts).
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        for key in self.redis.scan_iter(f"{self.queue}:*"):
            self.redis.delete(key)
        self.redis.close()
        with celery_app.app.connection_for_write() as connection:
            connection.default_channel.queue_delete(self.queue)


@pytest.fixture(scope="session")
def worker() -> c.Iterator[Worker]:
    """A real worker process on a queue of this run only, stopped at the end of the run."""
    queue = f"sa_signals_test_{uuid.uuid4().hex}"
    previous = celery_app.app.conf.task_default_queue
    celery_app.app.conf.task_default_queue = queue
    worker = Worker(queue)
    try:
        yield worker
    finally:
        worker.stop()
        celery_app.app.conf.task_default_queue = previous


class TestEnqueueOnCommit:
    def test_sends_after_commit(self, session: sa_orm.Session, worker: Worker) -> None:
        """Nothing is sent before the commit; afterwards the handle gives the task's result."""
        key = worker.key()
        session.add(Item(name="a"))
        handle = enqueue_on_commit(celery_app.record, key, "a", session=session)
        assert not handle.sent
        with pytest.raises(TaskNotSentError, match="has not been sent"):
            handle.result  # noqa: B018
        session.commit()
        assert handle.sent
        assert handle.result.id == handle.task_id
        assert handle.result.get(timeout=TIMEOUT) == "a"
        assert worker.received(key) == ["a"]

    def test_sends_nothing_on_rollback(self, session: sa_orm.Session, worker: Worker) -> None:
        """A rolled-back transaction sends no task."""
        key = worker.key()
        session.add(Item(name="a"))
        handle = enqueue_on_commit(celery_app.record, key, "a", session=session)
        session.rollback()
        assert not handle.sent
        assert worker.received(key) == []

    def test_sends_nothing_for_rolled_back_savepoint(
        self, session: sa_orm.Session, worker: Worker
    ) -> None:
        """Only the tasks of surviving savepoints are sent, in the order they were enqueued."""
        key = worker.key()
        with session.begin():
            enqueue_on_commit(celery_app.record, key, "outer", session=session)
            with session.begin_nested():
                enqueue_on_commit(celery_app.record, key, "released", session=session)
            savepoint = session.begin_nested()
            dropped = enqueue_on_commit(celery_app.record, key, "dropped", session=session)
            savepoint.rollback()
            enqueue_on_commit(celery_app.record, key, "last", session=session)
        assert not dropped.sent
        assert worker.received(key) == ["outer", "released", "last"]

    def test_sends_at_once_outside_a_transaction(
        self, session: sa_orm.Session, worker: Worker
    ) -> None:
        """With no transaction open, the task is sent immediately."""
        key = worker.key()
        handle = enqueue_on_commit(celery_app.record, key, "now", session=session)
        assert handle.result.get(timeout=TIMEOUT) == "now"

    def test_task_keyword_arguments_and_options(
        self, Session: sa_orm.scoped_session[sa_orm.Session], worker: Worker
    ) -> None:
        """Keywords go to the task, options to apply_async(); a chosen task_id is kept."""
        key = worker.key()
        Session.add(Item(name="a"))
        task_id = f"chosen-{uuid.uuid4()}"
        handle = enqueue_on_commit(
            celery_app.record,
            session=Session,
            options={"task_id": task_id, "priority": 3},
            key=key,
            value="kw",
        )
        assert handle.task_id == task_id
        Session.commit()
        assert handle.result.get(timeout=TIMEOUT) == "kw"
        assert handle.result.id == task_id

    def test_sends_a_signature(self, session: sa_orm.Session, worker: Worker) -> None:
        """A signature is completed as by its apply_async(): enqueued arguments come first."""
        key = worker.key()
        session.add(Item(name="a"))
        handle = enqueue_on_commit(celery_app.record.s(value="sig"), key, session=session)
        session.commit()
        assert handle.result.get(timeout=TIMEOUT) == "sig"

    def test_rejects_what_cannot_be_sent(self, session: sa_orm.Session) -> None:
        """Something without apply_async() is refused at once."""
        with pytest.raises(TypeError, match="needs a Celery task or signature"):
            enqueue_on_commit(print, session=session)


@pytest.fixture
def unreachable_task() -> t.Any:
    """A task of an app whose broker refuses connections, without retrying."""
    app = celery_app.celery.Celery("unreachable", broker="amqp://guest:guest@127.0.0.1:1//")
    app.conf.update(
        broker_connection_retry=False,
        broker_connection_max_retries=0,
        broker_connection_timeout=1,
        task_publish_retry=False,
        broker_transport_options={"max_retries": 0},
    )

    @app.task(name="unreachable.noop")
    def noop() -> None:
        pass

    return noop


class TestFailedSend:
    def test_robust_send_failure_is_recorded_and_reported(
        self,
        session: sa_orm.Session,
        unreachable_task: t.Any,
        connect: t.Any,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A broker that refuses the send fails the handle, is reported, and the commit holds."""
        failures = connect.record(signals.on_commit_failed)
        session.add(Item(name="kept"))
        handle = enqueue_on_commit(unreachable_task, session=session)
        session.commit()
        assert not handle.sent
        assert isinstance(handle.error, kombu.exceptions.OperationalError)
        assert len(failures) == 1
        assert f"<send unreachable.noop as {handle.task_id}> failed" in caplog.text
        assert failures[0][1]["exception"] is handle.error
        with pytest.raises(TaskNotSentError, match="failed to send"):
            handle.result  # noqa: B018
        assert session.scalars(sa.select(Item.name)).all() == ["kept"]
        assert repr(handle) == f"<Enqueued {handle.task_id} failed>"

    def test_non_robust_send_failure_propagates(
        self, session: sa_orm.Session, unreachable_task: t.Any
    ) -> None:
        """With robust=False the broker's error propagates out of commit()."""
        session.add(Item(name="kept"))
        enqueue_on_commit(unreachable_task, session=session, robust=False)
        with pytest.raises(kombu.exceptions.OperationalError, match="Connection refused"):
            session.commit()


def test_handle_repr(session: sa_orm.Session) -> None:
    """The handle says whether it is pending."""
    session.add(Item(name="a"))
    handle = enqueue_on_commit(celery_app.record.s("k", "v"), session=session)
    assert isinstance(handle, Enqueued)
    assert repr(handle) == f"<Enqueued {handle.task_id} pending>"
    session.rollback()
