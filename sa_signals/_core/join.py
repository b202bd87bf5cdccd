"""Work that waits on several parties to commit: due once every one of them did, never once
dropped.

Commit-time work of a session joined into several Connections' transactions waits on each of
them (:mod:`.external`); a callback of ``on_all_committed()`` waits on each session it names.
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    import collections.abc as c


class Join:
    """The parties some work still waits on, and whether it was dropped."""

    __slots__ = ("dropped", "waiting")

    def __init__(self, parties: c.Iterable[object]) -> None:
        self.waiting = set(parties)
        self.dropped = False
        """Set once a party rolled back, or once the work fell due: nothing may run it again."""

    def arrive(self, party: object) -> bool:
        """Note that ``party`` committed; return True once, when the last party did."""
        self.waiting.discard(party)
        if self.dropped or self.waiting:
            return False
        self.dropped = True  # due now: no later arrival makes it due again
        return True
