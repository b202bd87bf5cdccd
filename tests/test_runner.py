"""How commit-time items run: one distinct session each, the scoped registry, failures."""

from __future__ import annotations

import collections.abc as c
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals
from tests.conftest import count
from tests.models import Audit
from tests.models import Item

if t.TYPE_CHECKING:
    from tests.conftest import Connector

Scoped = sa_orm.scoped_session[sa_orm.Session]


@pytest.fixture
def OtherSession(engine: sa.Engine) -> c.Iterator[Scoped]:
    """A second installed ``scoped_session`` on the same database."""
    scoped = sa_orm.scoped_session(sa_orm.sessionmaker(engine))
    sa_signals.install(scoped)
    yield scoped
    scoped.remove()
    sa_signals.uninstall(scoped)


class TestDistinctSessionPerItem:
    def test_each_callback_gets_a_session_of_its_own(self, Session: Scoped) -> None:
        """Callbacks of one commit each get a fresh session; the original comes back after."""
        original = Session()
        seen: list[sa_orm.Session] = []
        original.add(Item(name="a"))
        for _ in range(3):
            sa_signals.on_commit(lambda: seen.append(Session()), original)
        original.commit()
        assert len({id(session) for session in seen}) == 3
        assert original not in seen
        assert Session() is original

    def test_callbacks_with_and_without_a_session_alternate(
        self, Session: Scoped, engine: sa.Engine
    ) -> None:
        """Writers commit their own writes; a callback that makes no session sees no leftover."""
        original = Session()
        registry_was_empty: list[bool] = []

        def write(message: str) -> c.Callable[[], None]:
            return lambda: Session.add(Audit(message=message))

        original.add(Item(name="a"))
        sa_signals.on_commit(write("one"), original)
        sa_signals.on_commit(
            lambda: registry_was_empty.append(not Session.registry.has()), original
        )
        sa_signals.on_commit(write("two"), original)
        original.commit()
        assert registry_was_empty == [True]
        assert count(engine, Audit) == 2
        assert Session() is original

    def test_scoped_session_with_a_scopefunc(self, engine: sa.Engine) -> None:
        """A registry keyed by a scopefunc is swapped per callback like a thread-local one."""
        scoped = sa_orm.scoped_session(sa_orm.sessionmaker(engine), scopefunc=lambda: "request")
        sa_signals.install(scoped)
        try:
            original = scoped()
            seen: list[sa_orm.Session] = []
            registry_was_empty: list[bool] = []

            def write() -> None:
                seen.append(scoped())
                scoped.add(Audit(message="written"))

            original.add(Item(name="a"))
            sa_signals.on_commit(write, original)
            sa_signals.on_commit(
                lambda: registry_was_empty.append(not scoped.registry.has()), original
            )
            sa_signals.on_commit(write, original)
            original.commit()
            assert registry_was_empty == [True]
            assert len({id(session) for session in seen}) == 2
            assert original not in seen
            assert count(engine, Audit) == 2
            assert scoped() is original
        finally:
            scoped.remove()
            sa_signals.uninstall(scoped)


class TestFailures:
    def test_failure_receiver_sees_the_registry_as_the_commit_left_it(
        self, Session: Scoped, connect: Connector
    ) -> None:
        """on_commit_failed receivers run outside any item; the next callback is distinct."""
        original = Session()
        in_receiver: list[tuple[bool, bool]] = []
        after: list[sa_orm.Session] = []

        def receiver(sender: object, **kwargs: object) -> None:
            try:
                sa_signals.current_session()
            except sa_signals.OutsideCallbackError:
                outside = True
            else:  # pragma: no cover - the assertion below reports it
                outside = False
            in_receiver.append((outside, Session() is original))

        def fail() -> None:
            Session()
            raise RuntimeError("boom")

        connect(signals.on_commit_failed, receiver)
        original.add(Item(name="a"))
        sa_signals.on_commit(fail, original)
        sa_signals.on_commit(lambda: after.append(Session()), original)
        original.commit()
        assert in_receiver == [(True, True)]
        assert after[0] is not original
        assert Session() is original

    def test_sessionmaker_install_failure_does_not_stop_the_next_callback(
        self, engine: sa.Engine, connect: Connector
    ) -> None:
        """Without a registry, a failing callback is reported and the next gets its session."""
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)
        failures = connect.record(signals.on_commit_failed)
        sessions: list[sa_orm.Session] = []

        def fail() -> None:
            sessions.append(sa_signals.current_session())
            raise RuntimeError("boom")

        try:
            with maker() as session:
                session.add(Item(name="a"))
                sa_signals.on_commit(fail, session)
                sa_signals.on_commit(
                    lambda: sessions.append(sa_signals.current_session()), session
                )
                session.commit()
        finally:
            sa_signals.uninstall(maker)
        assert len(failures) == 1
        assert len(sessions) == 2
        assert sessions[0] is not sessions[1]


class TestNestedBatches:
    def test_other_installation_sees_the_first_registry_as_before(
        self, Session: Scoped, OtherSession: Scoped, engine: sa.Engine
    ) -> None:
        """A callback queued on another scoped_session during a run finds this one untouched."""
        original = Session()
        seen: list[sa_orm.Session] = []

        def first() -> None:
            other = OtherSession()
            other.add(Audit(message="other"))
            sa_signals.on_commit(lambda: seen.append(Session()), other)
            other.commit()

        original.add(Item(name="a"))
        sa_signals.on_commit(first, original)
        sa_signals.on_commit(lambda: seen.append(Session()), original)
        original.commit()
        assert seen[0] is original
        assert seen[1] is not original
        assert Session() is original
        assert count(engine, Audit) == 1


class TestCoroutineCheck:
    @pytest.mark.parametrize("kind", ["function", "function with attributes", "method", "object"])
    def test_every_kind_of_coroutine_function_is_refused(
        self, session: sa_orm.Session, kind: str
    ) -> None:
        """Plain, decorated, bound and callable-object coroutine functions are all refused."""

        async def function() -> None:  # pragma: no cover - never called
            pass

        class Holder:
            async def method(self) -> None:  # pragma: no cover - never called
                pass

            async def __call__(self) -> None:  # pragma: no cover - never called
                pass

        if kind == "function with attributes":
            function.marker = True  # type: ignore[attr-defined]
        callback = {
            "function": function,
            "function with attributes": function,
            "method": Holder().method,
            "object": Holder(),
        }[kind]
        with pytest.raises(sa_signals.CoroutineMisuseError):
            sa_signals.on_commit(callback, session)

    def test_plain_function_with_attributes_is_accepted(self, session: sa_orm.Session) -> None:
        """A plain function that carries attributes is not mistaken for a coroutine one."""
        ran: list[bool] = []

        def callback() -> None:
            ran.append(True)

        callback.marker = True  # type: ignore[attr-defined]
        session.add(Item(name="a"))
        sa_signals.on_commit(callback, session)
        session.commit()
        assert ran == [True]
