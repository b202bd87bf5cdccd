"""session_scope() and distinct_session() in both flavours: sync sessions and AsyncSession."""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa

import sa_signals
from tests.conftest import count
from tests.models import Audit
from tests.models import Item

if t.TYPE_CHECKING:
    from tests.conftest import Flavour

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

    def test_refuses_a_registry_session_in_a_transaction(
        self, flavour: Flavour, AnySession: Scoped
    ) -> None:
        """Entering over a scoped session already in a transaction says what to do instead."""
        flavour.aw(AnySession().execute(sa.select(1)))
        with (
            pytest.raises(sa_signals.ScopeError, match="use distinct_session"),
            flavour.enter(sa_signals.session_scope(AnySession)),
        ):
            pass  # pragma: no cover

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
