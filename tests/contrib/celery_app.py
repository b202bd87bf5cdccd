"""The Celery application of the tests: a RabbitMQ broker, a Redis result backend.

The worker process is started with ``celery -A tests.contrib.celery_app worker``; each run uses
its own queue, so no other worker consumes its tasks.
"""

from __future__ import annotations

import os

import celery
import redis

BROKER_URL = os.environ.get("SA_SIGNALS_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("SA_SIGNALS_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")

app = celery.Celery("sa_signals_tests", broker=BROKER_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=600,
)


@app.task(name="sa_signals_tests.record")
def record(key: str, value: str) -> str:
    """Append ``value`` to the Redis list ``key``: what the worker received, in order."""
    redis.Redis.from_url(REDIS_URL).rpush(key, value)
    return value
