"""session_scope() and distinct_session() in both flavours: sync sessions and AsyncSession."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import typing as t

import pytest
import sqlalchemy as sa

import sa_signals
from tests.conftest import count
from tests.conftest import item_names
from tests.models import Audit
from tests.models import Item

if t.TYPE_CHECKING:
    from tests.conftest import Flavour
    from tests.conftest import Recorder

Scoped = t.Any
"""A ``scoped_session`` or an ``async_scoped_session``, by flavour."""


class TestSessionScope:
    def test_commits_and_removes(
        self, flavour: Flavour, AnySession: Scoped, engine: sa.Engine
    ) -> None:
        """The scope commits on success and leaves the registry empty."""
        with flavour.enter(sa_signals.session_scope(AnySession)) as session:
            assert AnySession() is session
            session.add(Item(name="a"))
        assert count(engine, Item) == 1
        assert not AnySession.registry.has()

    def test_rolls_back_and_reraises(
        self, flavour: Flavour, AnySession: Scoped, engine: sa.Engine
    ) -> None:
        """An exception rolls the work back and propagates; the session is closed."""
        with (
            pytest.raises(ZeroDivisionError),
            flavour.enter(sa_signals.session_scope(AnySession.session_factory)) as session,
        ):
            session.add(Item(name="a"))
            flavour.aw(session.flush())
            _ = 1 / 0
        assert not session.in_transaction()
        assert count(engine, Item) == 0

    def test_on_commit_callbacks_run_at_scope_exit(
        self, flavour: Flavour, AnySession: Scoped, engine: sa.Engine
    ) -> None:
        """Callbacks registered in the scope run when it commits, not before."""
        seen: list[int] = []
        with flavour.enter(sa_signals.session_scope(AnySession)) as session:
            session.add(Item(name="a"))
            sa_signals.on_commit(lambda: seen.append(count(engine, Item)), session)
            assert seen == []
        assert seen == [1]

    def test_decorator_opens_a_scope_unless_given_a_session(
        self, flavour: Flavour, AnySession: Scoped, engine: sa.Engine
    ) -> None:
        """The decorated function gets ``session=``; a caller's own session is left alone."""
        scope = sa_signals.session_scope(AnySession)
        if flavour.is_async:

            @scope
            async def acreate(name: str, *, session: t.Any) -> str:
                session.add(Item(name=name))
                await session.flush()
                return name

            def create(name: str, **kwargs: t.Any) -> str:
                return t.cast(str, flavour.aw(acreate(name, **kwargs)))
        else:

            @scope
            def create(name: str, *, session: t.Any) -> str:
                session.add(Item(name=name))
                session.flush()
                return name

        assert create("a") == "a"
        outer = AnySession.session_factory()
        assert create("b", session=outer) == "b"
        assert outer.in_transaction()
        flavour.aw(outer.rollback())
        flavour.aw(outer.close())
        assert count(engine, Item) == 1

    def test_refuses_a_session(self, flavour: Flavour, any_session: t.Any) -> None:
        """A session is not a factory."""
        with pytest.raises(TypeError, match="needs a sessionmaker or a scoped_session"):
            sa_signals.session_scope(any_session)


@pytest.fixture(params=["scoped", "sessionmaker"])
def factory(request: pytest.FixtureRequest, AnySession: Scoped) -> t.Any:
    """The installed scoped session of the flavour, or its sessionmaker."""
    return AnySession if request.param == "scoped" else AnySession.session_factory


class TestNestedSessionScope:
    """A scope inside a unit of work of its factory is a savepoint, as Django's atomic()."""

    def test_nested_scope_is_a_savepoint_of_the_outer_session(
        self, flavour: Flavour, factory: t.Any, engine: sa.Engine, recorder: Recorder
    ) -> None:
        """The inner scope yields the outer session; only the outer commit is a COMMIT."""
        with flavour.enter(sa_signals.session_scope(factory)) as outer:
            outer.add(Item(name="a"))
            with flavour.enter(sa_signals.session_scope(factory)) as inner:
                assert inner is outer
                assert inner.in_nested_transaction()
                inner.add(Item(name="b"))
                sa_signals.on_commit(recorder.do("b"), inner)
            assert not outer.in_nested_transaction()
            assert outer.in_transaction()
            recorder.assert_done([])
            assert count(engine, Item) == 0
        recorder.assert_done(["b"])
        assert item_names(engine) == ["a", "b"]

    def test_discards_work_and_callbacks_of_a_failed_inner_scope(
        self, flavour: Flavour, factory: t.Any, engine: sa.Engine, recorder: Recorder
    ) -> None:
        """An inner scope that raises rolls back its savepoint alone; the outer one commits."""
        with flavour.enter(sa_signals.session_scope(factory)) as outer:
            outer.add(Item(name="a"))
            sa_signals.on_commit(recorder.do("a"), outer)
            with (
                pytest.raises(LookupError),
                flavour.enter(sa_signals.session_scope(factory)) as inner,
            ):
                inner.add(Item(name="b"))
                flavour.aw(inner.flush())
                sa_signals.on_commit(recorder.do("b"), inner)
                raise LookupError("inner failed")
            assert outer.in_transaction()
        recorder.assert_done(["a"])
        assert item_names(engine) == ["a"]

    def test_inner_scope_rolled_back_with_outer(
        self, flavour: Flavour, factory: t.Any, engine: sa.Engine, recorder: Recorder
    ) -> None:
        """A released inner scope is rolled back with the outer one, callbacks included."""
        with (
            pytest.raises(LookupError),
            flavour.enter(sa_signals.session_scope(factory)) as outer,
        ):
            outer.add(Item(name="a"))
            with flavour.enter(sa_signals.session_scope(factory)) as inner:
                inner.add(Item(name="b"))
                sa_signals.on_commit(recorder.do("b"), inner)
            raise LookupError("outer failed")
        recorder.assert_done([])
        assert count(engine, Item) == 0

    def test_nests_in_an_idle_outer_scope(self, flavour: Flavour, factory: t.Any) -> None:
        """An outer scope whose session has not begun yet is still the unit the inner joins."""
        with flavour.enter(sa_signals.session_scope(factory)) as outer:
            with flavour.enter(sa_signals.session_scope(factory)) as inner:
                assert inner is outer
            assert outer.in_transaction()  # the savepoint began the outer transaction

    def test_decorated_function_nests_in_the_callers_scope(
        self, flavour: Flavour, factory: t.Any, engine: sa.Engine
    ) -> None:
        """A function decorated with the scope, called inside one, runs in a savepoint."""
        scope = sa_signals.session_scope(factory)
        if flavour.is_async:

            @scope
            async def acreate(name: str, *, session: t.Any) -> t.Any:
                session.add(Item(name=name))
                await session.flush()
                raise LookupError(name)

            def create(name: str) -> t.Any:
                return flavour.aw(acreate(name))
        else:

            @scope
            def create(name: str, *, session: t.Any) -> t.Any:
                session.add(Item(name=name))
                session.flush()
                raise LookupError(name)

        with flavour.enter(scope) as outer:
            outer.add(Item(name="a"))
            with pytest.raises(LookupError, match="b"):
                create("b")
        assert item_names(engine) == ["a"]

    def test_distinct_session_inside_is_a_unit_of_its_own(
        self, flavour: Flavour, factory: t.Any, engine: sa.Engine
    ) -> None:
        """distinct_session() opens an independent unit, which scopes inside it then join."""
        with flavour.enter(sa_signals.session_scope(factory)) as outer:
            flavour.aw(outer.execute(sa.select(1)))  # SQLite has one writer: the outer one reads
            with flavour.enter(sa_signals.distinct_session(factory)) as independent:
                assert independent is not outer
                with flavour.enter(sa_signals.session_scope(factory)) as inner:
                    assert inner is independent
                    inner.add(Audit(message="independent"))
            assert count(engine, Audit) == 1  # committed on its own, the outer still open

    @pytest.mark.parametrize("factory", ["sessionmaker"], indirect=True)
    def test_sessionmaker_scope_of_another_task_or_thread_is_its_own(
        self, flavour: Flavour, factory: t.Any
    ) -> None:
        """A task or thread started inside a scope, which inherits its context, does not join
        its session: a session serves one thread and task at a time."""
        seen: list[t.Any] = []

        async def in_a_task() -> None:
            async with sa_signals.session_scope(factory) as session:
                seen.append(session)

        def in_a_thread() -> None:
            with sa_signals.session_scope(factory) as session:
                seen.append(session)

        with flavour.enter(sa_signals.session_scope(factory)) as outer:
            if flavour.is_async:
                flavour.aw(asyncio.ensure_future(in_a_task()))
            else:
                context = contextvars.copy_context()
                thread = threading.Thread(target=context.run, args=[in_a_thread])
                thread.start()
                thread.join()
        assert len(seen) == 1
        assert seen[0] is not outer

    @pytest.mark.parametrize("factory", ["scoped"], indirect=True)
    def test_nests_in_a_scoped_session_already_in_a_transaction(
        self, flavour: Flavour, factory: t.Any, engine: sa.Engine
    ) -> None:
        """A current session in a transaction (a request's, say) is the unit the scope joins."""
        current = factory()
        current.add(Item(name="a"))
        with flavour.enter(sa_signals.session_scope(factory)) as inner:
            assert inner is current
            inner.add(Item(name="b"))
        assert current.in_transaction()
        assert factory() is current
        assert count(engine, Item) == 0
        flavour.aw(current.commit())
        assert item_names(engine) == ["a", "b"]


class TestDistinctSession:
    def test_commits_on_its_own_and_restores_the_registry(
        self, flavour: Flavour, AnySession: Scoped, engine: sa.Engine
    ) -> None:
        """The distinct session is current meanwhile, commits alone; the outer one is back."""
        outer = AnySession()
        flavour.aw(outer.execute(sa.select(1)))  # SQLite has one writer: the outer one reads
        with flavour.enter(sa_signals.distinct_session(AnySession)) as inner:
            assert AnySession() is inner
            inner.add(Audit(message="inner"))
            with flavour.enter(sa_signals.distinct_session(AnySession)) as deeper:
                assert AnySession() is deeper
                deeper.add(Audit(message="deeper"))
            assert AnySession() is inner
        assert AnySession() is outer
        assert outer.in_transaction()
        flavour.aw(outer.rollback())
        assert count(engine, Audit) == 2

    def test_empty_registry_stays_empty(
        self, flavour: Flavour, AnySession: Scoped, engine: sa.Engine
    ) -> None:
        """With no current session before, the registry holds none after."""
        with flavour.enter(sa_signals.distinct_session(AnySession)) as session:
            session.add(Audit(message="x"))
        assert not AnySession.registry.has()
        with flavour.enter(sa_signals.distinct_session(AnySession.session_factory)) as session:
            session.add(Audit(message="y"))
        assert count(engine, Audit) == 2

    def test_rolls_back_on_error(
        self, flavour: Flavour, AnySession: Scoped, engine: sa.Engine
    ) -> None:
        """An exception inside rolls back only the distinct session's work."""
        with (
            pytest.raises(ZeroDivisionError),
            flavour.enter(sa_signals.distinct_session(AnySession)) as session,
        ):
            session.add(Audit(message="x"))
            flavour.aw(session.flush())
            _ = 1 / 0
        assert count(engine, Audit) == 0
        assert not AnySession.registry.has()
