"""Backoff: exponential windows with full jitter."""

from __future__ import annotations

import pytest

from sa_signals.outbox import Backoff


def test_delays_stay_inside_the_doubling_window():
    """The delay after attempt n lies in [0, base * 2 ** (n - 1)], capped."""
    backoff = Backoff(base=1.0, cap=10.0)
    for attempt, window in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 10.0), (500, 10.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(0.0 <= d <= window for d in delays)
        assert max(delays) > window / 2  # jitter spreads over the whole window


def test_rejects_an_empty_window():
    """base must be positive and not above cap."""
    with pytest.raises(ValueError, match="0 < base <= cap"):
        Backoff(base=0)
    with pytest.raises(ValueError, match="0 < base <= cap"):
        Backoff(base=5, cap=1)
