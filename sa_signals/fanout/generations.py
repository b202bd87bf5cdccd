"""The tool against the refill race of an invalidating cache: generations checked on refill.

The race: a reader misses the cache and loads a row; before it stores what it loaded, a writer
commits a new value and the invalidation arrives (there is nothing to drop yet); then the reader
stores the old value, which stays until the next change. A :class:`Generations` closes it: the
reader takes a token before it loads, the invalidation bumps the key's generation, and the
reader stores only if its token is still current.
"""

from __future__ import annotations

import collections.abc as c
import threading
import typing as t

K = t.TypeVar("K", bound=c.Hashable)
V = t.TypeVar("V")


class Token(t.NamedTuple):
    """What :meth:`Generations.token` returns: the generations in force before a load."""

    epoch: int
    slot: int
    generation: int


class Generations:
    """Per-key generation counters, bumped by invalidations and checked before a cache refill.

    Keys share ``slots`` counters by hash, so memory stays bounded whatever the number of keys;
    two keys sharing a slot only cost a refill that is skipped. :meth:`invalidate_all` (for a
    ``remote_gap``) makes every token stale at once.

    .. note::
       Take the token before the transaction that loads the value begins: a transaction that
       began before the writer's commit may read the old value (under ``REPEATABLE READ``, or
       when it had read the row already).
    """

    def __init__(self, slots: int = 4096) -> None:
        if slots < 1:
            msg = f"Generations() needs at least one slot, got slots={slots}."
            raise ValueError(msg)
        self._slots = [0] * slots
        self._epoch = 0
        self._lock = threading.Lock()

    def token(self, key: c.Hashable) -> Token:
        """Return the generation of ``key`` now: take it before loading the value."""
        slot = hash(key) % len(self._slots)
        return Token(self._epoch, slot, self._slots[slot])

    def is_current(self, token: Token) -> bool:
        """Whether nothing was invalidated since ``token`` was taken."""
        return token.epoch == self._epoch and self._slots[token.slot] == token.generation

    def store(self, cache: c.MutableMapping[K, V], key: K, value: V, token: Token) -> bool:
        """Store ``value`` under ``key`` unless ``key`` was invalidated since ``token``.

        Checked and stored under the lock :meth:`invalidate` bumps under, so an invalidation
        either comes first (nothing is stored) or drops what was stored.
        """
        with self._lock:
            if not self.is_current(token):
                return False
            cache[key] = value
            return True

    def invalidate(self, key: K, cache: c.MutableMapping[K, t.Any] | None = None) -> None:
        """Make the tokens of ``key`` stale, then drop ``key`` from ``cache``."""
        slot = hash(key) % len(self._slots)
        with self._lock:
            self._slots[slot] += 1
        if cache is not None:
            cache.pop(key, None)

    def invalidate_all(self, cache: c.MutableMapping[t.Any, t.Any] | None = None) -> None:
        """Make every token stale, then empty ``cache`` (after a ``remote_gap``)."""
        with self._lock:
            self._epoch += 1
        if cache is not None:
            cache.clear()

    def fill(self, cache: c.MutableMapping[K, V], key: K, load: c.Callable[[], V]) -> V:
        """Return ``cache[key]``, or ``load()`` it and store it unless invalidated meanwhile."""
        try:
            return cache[key]
        except KeyError:
            pass
        token = self.token(key)
        value = load()
        self.store(cache, key, value, token)
        return value
