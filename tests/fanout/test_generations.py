"""The refill race of an invalidating cache, and how Generations closes it."""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy.orm as sa_orm

from sa_signals import signals
from sa_signals.fanout import Generations
from tests.conftest import Connector
from tests.fanout.conftest import Heard
from tests.fanout.conftest import listening
from tests.fanout.conftest import publishing
from tests.models import Item

Scoped: t.TypeAlias = sa_orm.scoped_session[sa_orm.Session]


class ItemCache:
    """An in-process cache of item values, invalidated by the fan-out."""

    def __init__(self, Session: Scoped, generations: Generations | None) -> None:
        self.Session = Session
        self.generations = generations
        self.values: dict[int, int] = {}
        self.invalidations = 0

    def load(self, item_id: int) -> int:
        with self.Session() as session:
            return session.get_one(Item, item_id).value

    def invalidated(self, model: type[Item], *, changes: list[t.Any], **kwargs: t.Any) -> None:
        for change in changes:
            (item_id,) = change.identity
            if self.generations is None:
                self.values.pop(item_id, None)
            else:
                self.generations.invalidate(item_id, self.values)
            self.invalidations += 1


def refill_racing_a_commit(Session: Scoped, cache: ItemCache, heard: Heard) -> int:
    """Load item 1 for the cache, let a writer commit a new value and its invalidation arrive,
    then store what was loaded, as a slow reader would; return what the cache then serves."""
    if cache.generations is not None:
        token = cache.generations.token(1)
    loaded = cache.load(1)  # the old value: 1
    with Session.begin():
        Session.get_one(Item, 1).value = 2
    assert heard.wait_for(lambda: cache.invalidations == 2)  # the insert, then this update
    if cache.generations is None:
        cache.values[1] = loaded
    else:
        cache.generations.store(cache.values, 1, loaded, token)
    return cache.values.get(1) or cache.load(1)


@pytest.mark.backends("sqlite")
@pytest.mark.transports("redis-pubsub")
class TestRefillRace:
    def test_a_naive_refill_serves_the_old_value_for_good(
        self, Session: Scoped, transport: t.Any, heard: Heard, connect: Connector
    ) -> None:
        """Storing what was loaded before the invalidation arrived leaves the old value cached."""
        cache = ItemCache(Session, None)
        connect(signals.remote_committed, cache.invalidated, Item)
        with publishing(Session, transport), listening(transport):
            with Session.begin():
                Session.add(Item(id=1, name="a", value=1))
            assert refill_racing_a_commit(Session, cache, heard) == 1  # stale
        assert cache.load(1) == 2

    def test_generations_refuse_the_old_value(
        self, Session: Scoped, transport: t.Any, heard: Heard, connect: Connector
    ) -> None:
        """With a token taken before loading, the stale load is not stored: the new value is."""
        cache = ItemCache(Session, Generations())
        connect(signals.remote_committed, cache.invalidated, Item)
        with publishing(Session, transport), listening(transport):
            with Session.begin():
                Session.add(Item(id=1, name="a", value=1))
            assert refill_racing_a_commit(Session, cache, heard) == 2
        assert 1 not in cache.values


class TestGenerations:
    def test_fill_stores_what_was_not_invalidated(self) -> None:
        """fill() loads a missing key once and serves it from the cache after."""
        generations = Generations()
        cache: dict[str, int] = {}
        loads: list[str] = []
        assert generations.fill(cache, "a", lambda: loads.append("a") or 1) == 1
        assert generations.fill(cache, "a", lambda: loads.append("a") or 2) == 1
        assert loads == ["a"]

    def test_fill_skips_a_load_invalidated_meanwhile(self) -> None:
        """A value invalidated while it was being loaded is returned, not stored."""
        generations = Generations()
        cache: dict[str, int] = {}

        def load() -> int:
            generations.invalidate("a", cache)
            return 1

        assert generations.fill(cache, "a", load) == 1
        assert cache == {}

    def test_invalidate_all_makes_every_token_stale(self) -> None:
        """After a gap, no load begun before it is stored, and the cache is empty."""
        generations = Generations(slots=8)
        cache = {"kept": 0}
        tokens = [generations.token(key) for key in "abc"]
        generations.invalidate_all(cache)
        assert cache == {}
        assert not any(generations.is_current(token) for token in tokens)
        assert generations.is_current(generations.token("a"))

    def test_other_keys_are_untouched(self) -> None:
        """Invalidating one key leaves the tokens of keys in other slots current."""
        generations = Generations(slots=2)
        one, two = generations.token(0), generations.token(1)
        generations.invalidate(0)
        assert not generations.is_current(one)
        assert generations.is_current(two)

    def test_slots_are_checked(self) -> None:
        """At least one slot is needed."""
        with pytest.raises(ValueError, match="at least one slot, got slots=0"):
            Generations(slots=0)
