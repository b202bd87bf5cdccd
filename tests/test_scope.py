"""session_scope() and distinct_session(), sync and async, on every configured backend."""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextvars
import threading
import typing as t

import pytest
import sqlalchemy as sa

import sa_signals
from tests.conftest import count
from tests.models import Audit
from tests.models import Item

if t.TYPE_CHECKING:
    from tests.conftest import Flavour
    from tests.conftest import Recorder

Scoped = t.Any
"""A ``scoped_session`` or an ``async_scoped_session``, by flavour."""


@pytest.fixture(params=["scoped", "sessionmaker"])
def factory(request: pytest.FixtureRequest, AnySession: Scoped) -> t.Any:
    """Both kinds of factory the scopes accept: the scoped session and its sessionmaker."""
    if request.param == "scoped":
        return AnySession
    return AnySession.session_factory


def names(engine: sa.Engine, model: type[t.Any] = Item) -> list[str]:
    """The names (or audit messages) of ``model``'s rows, sorted."""
    column = model.name if model is Item else model.message
    with engine.connect() as connection:
        return list(connection.scalars(sa.select(column).order_by(column)))


def checked_out(AnySession: Scoped) -> int:
    """The connections of ``AnySession``'s engine checked out of its pool."""
    bind = AnySession.session_factory.kw["bind"]
    return int(getattr(bind, "sync_engine", bind).pool.checkedout())


def creator(
    flavour: Flavour, decorator: c.Callable[[t.Any], t.Any], *, fail: bool = False
) -> t.Any:
    """``create(name, *, session)`` decorated by ``decorator``: adds an Item and flushes.

    A coroutine function in the async flavour; the caller passes its result to ``flavour.aw``.
    """
    if flavour.is_async:

        async def create(name: str, *, session: t.Any) -> str:
            session.add(Item(name=name))
            await session.flush()
            if fail:
                raise ValueError("nope")
            return name

        return decorator(create)

    def create(name: str, *, session: t.Any) -> str:
        session.add(Item(name=name))
        session.flush()
        if fail:
            raise ValueError("nope")
        return name

    return decorator(create)


class TestSessionScope:
    def test_commits_on_success(self, flavour: Flavour, factory: t.Any, engine: sa.Engine) -> None:
        """Leaving the block normally commits."""
        with flavour.enter(sa_signals.session_scope(factory)) as session:
            session.add(Item(name="a"))
        assert names(engine) == ["a"]

    def test_rolls_back_and_reraises_on_error(
        self, flavour: Flavour, factory: t.Any, engine: sa.Engine
    ) -> None:
        """An exception rolls back and propagates unchanged; the session is closed."""
        with (
            pytest.raises(KeyError, match="boom"),
            flavour.enter(sa_signals.session_scope(factory)) as session,
        ):
            session.add(Item(name="a"))
            flavour.aw(session.flush())
            raise KeyError("boom")
        assert not session.in_transaction()
        assert names(engine) == []

    def test_always_closes(self, flavour: Flavour, factory: t.Any, AnySession: Scoped) -> None:
        """The session is closed: no transaction, no connection checked out."""
        with flavour.enter(sa_signals.session_scope(factory)) as session:
            session.add(Item(name="a"))
        assert not session.in_transaction()
        assert checked_out(AnySession) == 0

    def test_removes_the_scoped_session(self, flavour: Flavour, AnySession: Scoped) -> None:
        """Over a scoped session, the scope's session is the current one, removed afterwards."""
        with flavour.enter(sa_signals.session_scope(AnySession)) as session:
            assert AnySession() is session
        assert not AnySession.registry.has()

    def test_commit_failure_rolls_back_and_raises(
        self, flavour: Flavour, factory: t.Any, AnySession: Scoped, engine: sa.Engine
    ) -> None:
        """An error at commit propagates and leaves nothing behind."""
        with flavour.enter(sa_signals.session_scope(factory)) as session:
            session.add(Item(name="dup"))
        with (
            pytest.raises(sa.exc.IntegrityError),
            flavour.enter(sa_signals.session_scope(factory)) as session,
        ):
            session.add(Item(name="dup"))
        assert names(engine) == ["dup"]
        assert checked_out(AnySession) == 0

    def test_on_commit_callbacks_run_at_scope_exit(
        self, flavour: Flavour, factory: t.Any, engine: sa.Engine
    ) -> None:
        """Callbacks registered in the scope run when it commits, and see the committed row."""
        seen: list[int] = []
        with flavour.enter(sa_signals.session_scope(factory)) as session:
            session.add(Item(name="a"))
            sa_signals.on_commit(lambda: seen.append(count(engine, Item)), session)
            assert seen == []
        assert seen == [1]

    def test_decorator_gives_each_call_a_scope(
        self, flavour: Flavour, factory: t.Any, engine: sa.Engine
    ) -> None:
        """As a decorator, each call gets its own scope and the session as ``session=``."""
        create = creator(flavour, sa_signals.session_scope(factory))
        assert flavour.aw(create("a")) == "a"
        assert flavour.aw(create("b")) == "b"
        assert names(engine) == ["a", "b"]
        assert create.__name__ == "create"

    def test_decorator_rolls_back_on_error(
        self, flavour: Flavour, factory: t.Any, engine: sa.Engine
    ) -> None:
        """A decorated function that raises leaves nothing committed."""
        create = creator(flavour, sa_signals.session_scope(factory), fail=True)
        with pytest.raises(ValueError, match="nope"):
            flavour.aw(create("a"))
        assert names(engine) == []

    def test_decorator_joins_a_session_passed_in(
        self, flavour: Flavour, factory: t.Any, AnySession: Scoped, engine: sa.Engine
    ) -> None:
        """A caller passing ``session=`` keeps control of it: no commit, no close."""
        create = creator(flavour, sa_signals.session_scope(factory))
        outer = AnySession.session_factory()
        assert flavour.aw(create("a", session=outer)) == "a"
        assert outer.in_transaction()
        flavour.aw(outer.rollback())
        flavour.aw(outer.close())
        assert names(engine) == []

    def test_one_scope_object_nests(
        self, flavour: Flavour, AnySession: Scoped, engine: sa.Engine
    ) -> None:
        """A scope object over a sessionmaker entered again while in use nests in its session."""
        scope = sa_signals.session_scope(AnySession.session_factory)
        with flavour.enter(scope) as first:
            first.add(Item(name="a"))
            with flavour.enter(scope) as second:
                assert second is first
                second.add(Audit(message="b"))
            assert first.in_transaction()
        assert names(engine) == ["a"]
        assert names(engine, Audit) == ["b"]

    def test_refuses_a_session(self, flavour: Flavour, any_session: t.Any) -> None:
        """A session is not a factory."""
        with pytest.raises(TypeError, match="needs a sessionmaker or a scoped_session"):
            sa_signals.session_scope(any_session)


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
        assert names(engine) == ["a", "b"]

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
        assert names(engine) == ["a"]

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
        assert names(engine) == ["a"]

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

    def test_scope_in_a_callback_of_the_outer_commit_is_its_own(
        self, flavour: Flavour, factory: t.Any, engine: sa.Engine
    ) -> None:
        """A scope entered by an on_commit callback, which runs after the outer unit committed,
        is a unit of its own: it commits, on a session other than the committed one."""
        seen: list[t.Any] = []

        def audit() -> None:
            with sa_signals.session_scope(factory) as session:
                seen.append(session)
                session.add(Audit(message="after the order"))

        async def aaudit() -> None:
            async with sa_signals.session_scope(factory) as session:
                seen.append(session)
                session.add(Audit(message="after the order"))

        with flavour.enter(sa_signals.session_scope(factory)) as outer:
            outer.add(Item(name="a"))
            sa_signals.on_commit(aaudit if flavour.is_async else audit, outer)
        assert seen[0] is not outer
        assert names(engine, Audit) == ["after the order"]

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
        assert names(engine) == ["a", "b"]


class TestDistinctSession:
    def test_swaps_into_the_registry_and_restores(
        self, flavour: Flavour, AnySession: Scoped
    ) -> None:
        """Inside, the registry's session is the distinct one; afterwards the previous is back."""
        outer = AnySession()
        with flavour.enter(sa_signals.distinct_session(AnySession)) as distinct:
            assert distinct is not outer
            assert AnySession() is distinct
        assert AnySession() is outer

    def test_empty_registry_stays_empty(self, flavour: Flavour, AnySession: Scoped) -> None:
        """With no current session before, the registry holds none after, also after an error."""
        with flavour.enter(sa_signals.distinct_session(AnySession)):
            assert AnySession.registry.has()
        assert not AnySession.registry.has()
        with (
            pytest.raises(ZeroDivisionError),
            flavour.enter(sa_signals.distinct_session(AnySession)),
        ):
            _ = 1 / 0
        assert not AnySession.registry.has()

    def test_audit_row_survives_outer_rollback(
        self, flavour: Flavour, AnySession: Scoped, engine: sa.Engine
    ) -> None:
        """What the distinct session writes commits, whatever the outer transaction does.

        SQLite allows one writer at a time, so there the outer session writes afterwards.
        """
        outer = AnySession()
        sqlite = engine.dialect.name == "sqlite"
        if not sqlite:
            outer.add(Item(name="outer"))
            flavour.aw(outer.flush())
        with flavour.enter(sa_signals.distinct_session(AnySession)) as audit:
            audit.add(Audit(message="attempted"))
        if sqlite:
            outer.add(Item(name="outer"))
            flavour.aw(outer.flush())
        assert outer.in_transaction()
        flavour.aw(outer.rollback())
        assert names(engine, Audit) == ["attempted"]
        assert names(engine) == []

    def test_outer_transaction_untouched(
        self, flavour: Flavour, AnySession: Scoped, engine: sa.Engine
    ) -> None:
        """The previous session's transaction continues and commits after the block."""
        outer = AnySession()
        item = Item(name="outer")
        outer.add(item)
        with flavour.enter(sa_signals.distinct_session(AnySession)) as audit:
            audit.add(Audit(message="x"))
        assert item in outer
        flavour.aw(outer.commit())
        assert names(engine) == ["outer"]
        assert names(engine, Audit) == ["x"]

    def test_nests(self, flavour: Flavour, AnySession: Scoped, engine: sa.Engine) -> None:
        """Distinct sessions nest; each restores the one before it."""
        with flavour.enter(sa_signals.distinct_session(AnySession)) as first:
            with flavour.enter(sa_signals.distinct_session(AnySession)) as second:
                assert AnySession() is second
                second.add(Audit(message="second"))
            assert AnySession() is first
            first.add(Audit(message="first"))
        assert names(engine, Audit) == ["first", "second"]

    def test_rolls_back_on_error_and_restores(
        self, flavour: Flavour, AnySession: Scoped, engine: sa.Engine
    ) -> None:
        """An error rolls back only the distinct session's work and still restores the registry."""
        outer = AnySession()
        with (
            pytest.raises(ZeroDivisionError),
            flavour.enter(sa_signals.distinct_session(AnySession)) as distinct,
        ):
            distinct.add(Audit(message="x"))
            flavour.aw(distinct.flush())
            _ = 1 / 0
        assert AnySession() is outer
        assert names(engine, Audit) == []

    def test_sessionmaker_gives_a_fresh_session(
        self, flavour: Flavour, AnySession: Scoped, engine: sa.Engine
    ) -> None:
        """Given a sessionmaker there is no registry: just a fresh session that commits."""
        with flavour.enter(sa_signals.distinct_session(AnySession.session_factory)) as distinct:
            distinct.add(Audit(message="x"))
        assert not AnySession.registry.has()
        assert names(engine, Audit) == ["x"]

    def test_as_decorator(self, flavour: Flavour, factory: t.Any, engine: sa.Engine) -> None:
        """distinct_session() also decorates, passing the session in."""
        create = creator(flavour, sa_signals.distinct_session(factory))
        assert flavour.aw(create("decorated")) == "decorated"
        assert names(engine) == ["decorated"]
