"""enqueue_on_commit(durable=True): the Celery message is an outbox row, relayed to RabbitMQ."""

from __future__ import annotations

import os
import uuid

import celery
import kombu
import pytest

from sa_signals import outbox
from sa_signals.contrib.celery import enqueue_on_commit
from sa_signals.contrib.celery import relay

pytestmark = [pytest.mark.services("rabbitmq"), pytest.mark.backends("sqlite", "postgresql")]

BROKER_URL = os.environ.get("SA_SIGNALS_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def make_app(broker: str) -> celery.Celery:
    app = celery.Celery("outbox-relay-tests", broker=broker, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_publish_retry=False,
        broker_connection_timeout=1,
        broker_connection_retry=False,
        broker_connection_max_retries=0,
    )
    return app


def bill() -> None:
    """The body of a task the tests send (never run: no Celery worker consumes it)."""


@pytest.fixture
def queue():
    """A queue of its own on the test broker, deleted afterwards."""
    name = f"outbox-relay-{uuid.uuid4()}"
    with kombu.Connection(BROKER_URL) as connection:
        declared = kombu.Queue(name, routing_key=name, durable=True, auto_delete=False)
        declared(connection.channel()).declare()
        yield name
        declared(connection.channel()).delete()


def received(queue: str, expected: int) -> list[kombu.Message]:
    """The ``expected`` messages published to ``queue`` (and any more), taken off it."""
    messages = []
    with kombu.Connection(BROKER_URL) as connection:
        simple = connection.SimpleQueue(queue, no_ack=True)
        try:
            for _ in range(expected):
                messages.append(simple.get(timeout=10))
            while True:
                messages.append(simple.get(timeout=0.2))
        except simple.Empty:
            pass
        finally:
            simple.close()
    return messages


class TestDurableSend:
    def test_sends_after_commit_under_the_reserved_id(self, ob, factory, queue):
        """After COMMIT the task is published once, with its arguments and reserved id."""
        make_app(BROKER_URL).set_current()
        with factory.begin() as session:
            handle = enqueue_on_commit(
                celery.Celery("x").signature("shop.ship", args=(1,)),
                2,
                session=session,
                options={"queue": queue, "routing_key": queue},
                durable=True,
                note="n",
            )
        (message,) = received(queue, 1)
        assert message.headers["task"] == "shop.ship"
        assert message.headers["id"] == handle.task_id
        assert message.decode()[0] == [2, 1]
        assert message.decode()[1] == {"note": "n"}
        assert handle.durable
        assert handle.result.id == handle.task_id
        assert ob.rows() == []

    def test_broker_down_leaves_the_row_for_a_worker(self, ob, factory, queue):
        """If the broker refuses the message the row stays; a later drain sends it."""
        make_app("amqp://guest:guest@127.0.0.1:1//").set_current()
        with factory.begin() as session:
            task = make_app(BROKER_URL).task(name="shop.bill")(bill)
            enqueue_on_commit(
                task, session=session, options={"queue": queue, "routing_key": queue}, durable=True
            )
        (row,) = ob.rows()
        assert (row.handler, row.attempts) == (relay.name, 1)
        assert received(queue, 0) == []
        make_app(BROKER_URL).set_current()
        with factory.begin() as session:
            session.execute(ob.table.update().values(run_at=row.created_at))
        assert outbox.drain(factory) == 1
        (message,) = received(queue, 1)
        assert message.headers["task"] == "shop.bill"

    def test_rolled_back_transaction_sends_nothing(self, ob, factory, queue):
        """A rollback drops the durable send with the rest of the transaction."""
        make_app(BROKER_URL).set_current()
        with factory() as session:
            enqueue_on_commit(
                celery.Celery("x").signature("shop.ship"),
                session=session,
                options={"queue": queue, "routing_key": queue},
                durable=True,
            )
            session.rollback()
        assert received(queue, 0) == []
        assert ob.rows() == []

    def test_async_sessions_are_told_the_awaitable_form(self, ob, AsyncScoped):
        """durable=True with an AsyncSession names the awaitable outbox call."""
        with pytest.raises(TypeError, match=r"await sa_signals\.outbox\.enqueue"):
            enqueue_on_commit(celery.Celery("x").signature("s"), session=AsyncScoped, durable=True)
