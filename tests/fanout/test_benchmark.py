"""python -m benchmarks.fanout in quick mode, so that it cannot rot (no timing is checked)."""

from __future__ import annotations

import re

import pytest

from benchmarks import fanout as bench
from sa_signals import signals
from tests.fanout.transports import redis_url

pytestmark = pytest.mark.services("redis")


def test_quick_run_prints_both_tables(capsys: pytest.CaptureFixture[str]) -> None:
    """Every message reaches every listener; each configuration has its overhead row."""
    assert bench.main(["--quick", "--transport", "redis-pubsub", "--redis", redis_url()]) == 0
    output = capsys.readouterr().out
    latency = re.search(
        r"^redis-pubsub +[\d,]+ +(\d+)/(\d+) .* (\d+) +(\d+\.\d)$", output, re.MULTILINE
    )
    assert latency is not None, output
    delivered, expected, gaps, cpu = latency.groups()
    assert delivered == expected
    assert gaps == "0"
    assert float(cpu) > 0  # the listeners' CPU time per message
    for label in (
        "nothing published",
        "a models_committed receiver",
        "ref.: thread woken per commit",
        "ref.: raw send per commit",
        "publishing to redis-pubsub",
    ):
        assert re.search(rf"^{re.escape(label)} +-?\d+\.\d", output, re.MULTILINE), output
    assert not signals.models_committed.receivers
