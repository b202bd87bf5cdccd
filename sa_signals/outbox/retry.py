"""When a failed row runs again: exponential backoff with full jitter."""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Wait a random time between 0 and ``min(cap, base * 2 ** (attempt - 1))`` seconds.

    Full jitter spreads the retries of rows that failed together (a database or a broker that
    was down) instead of sending them back all at once.
    """

    base: float = 1.0
    """Seconds of the first window."""
    cap: float = 3600.0
    """The longest window, in seconds."""

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            msg = f"Backoff needs 0 < base <= cap, got base={self.base} and cap={self.cap}"
            raise ValueError(msg)

    def delay(self, attempt: int) -> float:
        """Return the seconds to wait after the failed ``attempt`` (1 for the first run)."""
        window = min(self.cap, self.base * 2.0 ** min(max(attempt - 1, 0), 64))
        return random.uniform(0.0, window)
