"""on_all_committed(): a callback run once the transactions of several sessions committed."""

from __future__ import annotations

import asyncio
import collections.abc as c
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals
from tests.conftest import count
from tests.models import Audit
from tests.models import Item

if t.TYPE_CHECKING:
    from tests.conftest import Connector
    from tests.conftest import Flavour
    from tests.conftest import Recorder

Scoped = sa_orm.scoped_session[sa_orm.Session]


@pytest.fixture
def sessions(flavour: Flavour, AnySession: t.Any) -> c.Iterator[t.Any]:
    """Makes sessions of ``AnySession``'s factory (as a request with several sessions would);
    closes them at the end."""
    made: list[t.Any] = []

    def make() -> t.Any:
        made.append(AnySession.session_factory())
        return made[-1]

    yield make

    async def close_all() -> None:
        for session in made:
            await session.close()

    if flavour.is_async:
        flavour.run(close_all())
    else:
        for session in made:
            session.close()


def writing(sessions: t.Any) -> tuple[t.Any, t.Any]:
    """Two sessions of ``sessions``, each in a transaction that added a row."""
    first, second = sessions(), sessions()
    first.add(Item(name="a"))
    second.add(Audit(message="b"))
    return first, second


class TestOnAllCommitted:
    def test_runs_once_after_every_session_committed(
        self, flavour: Flavour, sessions: t.Any, recorder: Recorder
    ) -> None:
        """The callback waits for the last of the sessions' COMMITs, and runs once."""
        first, second = writing(sessions)
        sa_signals.on_all_committed(recorder.do("all"), first, second)
        flavour.aw(first.commit())
        recorder.assert_done([])
        flavour.aw(second.commit())
        recorder.assert_done(["all"])
        second.add(Audit(message="c"))
        flavour.aw(second.commit())
        recorder.assert_done(["all"])

    def test_dropped_if_any_rolls_back(
        self, flavour: Flavour, sessions: t.Any, recorder: Recorder
    ) -> None:
        """One session rolling back drops the callback, whatever the others do after."""
        first, second = writing(sessions)
        sa_signals.on_all_committed(recorder.do("all"), first, second)
        flavour.aw(second.rollback())
        flavour.aw(first.commit())
        second.add(Audit(message="c"))
        flavour.aw(second.commit())
        recorder.assert_done([])

    def test_dropped_with_a_rolled_back_savepoint(
        self, flavour: Flavour, sessions: t.Any, recorder: Recorder
    ) -> None:
        """Registered inside a savepoint of one session, it goes when that savepoint does."""
        first, second = writing(sessions)
        with flavour.nested(first) as savepoint:
            sa_signals.on_all_committed(recorder.do("all"), first, second)
            flavour.aw(savepoint.rollback())
        flavour.aw(first.commit())
        flavour.aw(second.commit())
        recorder.assert_done([])

    def test_sessions_not_in_a_transaction_count_as_committed(
        self, flavour: Flavour, sessions: t.Any, recorder: Recorder
    ) -> None:
        """A session not in a transaction has nothing to wait for; with none in one, the
        callback runs at once (use on_all_committed_async() for a coroutine there)."""
        first, second, idle = sessions(), sessions(), sessions()
        first.add(Item(name="a"))
        sa_signals.on_all_committed(recorder.do(1), first, idle)
        flavour.aw(first.commit())
        recorder.assert_done([1])
        if flavour.is_async:
            flavour.aw(sa_signals.on_all_committed_async(recorder.do(2), second, idle))
        else:
            sa_signals.on_all_committed(recorder.do(2), second, idle)
        recorder.assert_done([1, 2])

    def test_runs_in_a_distinct_session_of_the_last_to_commit(
        self, flavour: Flavour, AnySession: t.Any, sessions: t.Any, engine: sa.Engine
    ) -> None:
        """The callback sees both commits and writes through the scoped session, committed
        for it, as an on_commit callback of the session that committed last."""
        first, second = sessions(), sessions()
        seen: list[int] = []

        def write() -> None:
            seen.append(count(engine, Item))
            AnySession.add(Audit(message="after all"))

        async def awrite() -> None:
            await asyncio.sleep(0)
            write()

        first.add(Item(name="a"))
        second.add(Item(name="b"))
        sa_signals.on_all_committed(awrite if flavour.is_async else write, first, second)
        flavour.aw(second.commit())
        flavour.aw(first.commit())
        assert seen == [2]
        assert count(engine, Audit) == 1

    def test_failure_reported_as_the_callbacks(
        self, session: sa_orm.Session, Session: Scoped, connect: Connector
    ) -> None:
        """A failing callback is reported on on_commit_failed as itself; robust=False raises
        it out of the last commit instead."""
        failures = connect.record(signals.on_commit_failed)

        def broken() -> None:
            raise LookupError("broken")

        other = Session.session_factory()
        try:
            session.add(Item(name="a"))
            other.add(Audit(message="b"))
            sa_signals.on_all_committed(broken, session, other)
            other.commit()
            session.commit()
            assert [kwargs["callback"] for _, kwargs in failures] == [broken]
            session.add(Item(name="c"))
            other.add(Audit(message="d"))
            sa_signals.on_all_committed(broken, session, other, robust=False)
            session.commit()
            with pytest.raises(LookupError, match="broken"):
                other.commit()
        finally:
            other.close()
        assert len(failures) == 1

    def test_misuse_refused(self, session: sa_orm.Session) -> None:
        """No session, a non-callable, or a coroutine function for a synchronous Session."""

        async def coroutine() -> None:  # pragma: no cover - refused
            pass

        with pytest.raises(TypeError, match="needs the sessions to wait for"):
            sa_signals.on_all_committed(print)
        with pytest.raises(TypeError, match="needs a callable"):
            sa_signals.on_all_committed(42, session)  # type: ignore[arg-type]
        session.add(Item(name="a"))
        with pytest.raises(sa_signals.CoroutineMisuseError, match="on_all_committed"):
            sa_signals.on_all_committed(coroutine, session)
        session.rollback()

    async def test_two_databases_of_an_async_request(
        self, arunner: asyncio.Runner, aengine: sa_asyncio.AsyncEngine, AsyncScoped: t.Any
    ) -> None:
        """Sessions of two factories (two binds, as two databases would be): the coroutine
        callback is awaited once both committed, before the last commit() returns."""
        other_maker = sa_asyncio.async_sessionmaker(aengine)
        sa_signals.install(other_maker)
        done: list[str] = []

        async def notify() -> None:
            await asyncio.sleep(0)
            done.append("both")

        try:
            async with AsyncScoped() as orders, other_maker() as audits:
                orders.add(Item(name="order"))
                audits.add(Audit(message="audit"))
                sa_signals.on_all_committed(notify, orders, audits)
                await orders.commit()
                assert done == []
                await audits.commit()
                assert done == ["both"]
        finally:
            sa_signals.uninstall(other_maker)
