"""Claims: leased batches in write order, releases, the next due time, purges."""

from __future__ import annotations

import datetime

from sa_signals import outbox
from sa_signals.outbox.claims import Claimer
from sa_signals.outbox.dispatch import new_token
from sa_signals.outbox.table import set_keep_done
from tests.outbox import app


def enqueue_later(factory, *tags: str) -> None:
    with factory.begin() as session:
        for tag in tags:
            outbox.enqueue(session, app.record_later, tag)


class TestClaim:
    def test_leases_a_batch_in_write_order(self, ob, factory):
        """A claim takes up to a batch of due rows, oldest first, counting an attempt each."""
        enqueue_later(factory, "a", "b", "c")
        token = new_token()
        rows = Claimer(factory, batch=2).claim(token)
        assert [row.attempts for row in rows] == [1, 1]
        assert [row.id for row in rows] == [r.id for r in ob.rows()[:2]]
        assert [r.locked_by for r in ob.rows()] == [token, token, None]

    def test_leased_rows_are_not_claimed_again(self, ob, factory):
        """While its lease holds, a row is invisible to other claims."""
        enqueue_later(factory, "a")
        claimer = Claimer(factory)
        assert len(claimer.claim(new_token())) == 1
        assert claimer.claim(new_token()) == []

    def test_release_gives_rows_back_uncounted(self, ob, factory):
        """Released rows are due at once, unleased, their attempt not counted."""
        enqueue_later(factory, "a", "b")
        claimer = Claimer(factory)
        token = new_token()
        rows = claimer.claim(token)
        claimer.release(rows, token)
        assert [(r.attempts, r.locked_by) for r in ob.rows()] == [(0, None), (0, None)]
        assert len(claimer.claim(new_token())) == 2

    def test_next_due_is_the_earliest_run_at(self, ob, factory):
        """next_due() tells when the earliest pending row is due; None when nothing is."""
        claimer = Claimer(factory)
        assert claimer.next_due() is None
        with factory.begin() as session:
            outbox.enqueue(session, app.record, "x", delay=60)
        due = claimer.next_due()
        assert due is not None
        assert due - ob.rows()[0].created_at == datetime.timedelta(seconds=60)


class TestPurge:
    def test_without_retention_nothing_is_purged(self, ob, factory):
        """With done rows deleted at once there is nothing to purge."""
        assert Claimer(factory).purge_done() == 0

    def test_purges_in_batches(self, ob, factory, monkeypatch):
        """Old done rows are deleted batch by batch until none is left."""
        monkeypatch.setattr("sa_signals.outbox.claims.PURGE_BATCH", 2)
        set_keep_done(ob.table, 0)
        try:
            with factory.begin() as session:
                for n in range(5):
                    outbox.enqueue(session, app.record, str(n))
            assert ob.states() == ["done"] * 5
            assert Claimer(factory).purge_done() == 5
            assert ob.rows() == []
        finally:
            set_keep_done(ob.table, None)
