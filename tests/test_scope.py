"""session_scope() and distinct_session(), on every configured backend."""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from tests.models import Audit
from tests.models import Item

Scoped = sa_orm.scoped_session[sa_orm.Session]


def names(engine: sa.Engine, model: type[t.Any] = Item) -> list[str]:
    column = model.name if model is Item else model.message
    with engine.connect() as connection:
        return list(connection.scalars(sa.select(column).order_by(column)))


@pytest.fixture(params=["scoped", "sessionmaker"])
def factory(
    request: pytest.FixtureRequest, Session: Scoped
) -> Scoped | sa_orm.sessionmaker[sa_orm.Session]:
    """Both kinds of factory the scopes accept."""
    if request.param == "scoped":
        return Session
    return t.cast("sa_orm.sessionmaker[sa_orm.Session]", Session.session_factory)


class TestSessionScope:
    def test_commits_on_success(self, factory: t.Any, engine: sa.Engine) -> None:
        """Leaving the block normally commits."""
        with sa_signals.session_scope(factory) as session:
            session.add(Item(name="a"))
        assert names(engine) == ["a"]

    def test_rolls_back_and_reraises_on_error(self, factory: t.Any, engine: sa.Engine) -> None:
        """An exception rolls back and propagates unchanged."""
        with pytest.raises(KeyError, match="boom"), sa_signals.session_scope(factory) as session:
            session.add(Item(name="a"))
            session.flush()
            raise KeyError("boom")
        assert names(engine) == []

    def test_always_closes(self, factory: t.Any, engine: sa.Engine) -> None:
        """The session is closed: no transaction, no connection checked out."""
        with sa_signals.session_scope(factory) as session:
            session.add(Item(name="a"))
        assert not session.in_transaction()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    def test_removes_scoped_session(self, Session: Scoped) -> None:
        """For a scoped_session, the registry is empty afterwards."""
        with sa_signals.session_scope(Session) as session:
            assert Session() is session
        assert not Session.registry.has()

    def test_commit_failure_rolls_back_and_raises(self, factory: t.Any, engine: sa.Engine) -> None:
        """An error at commit propagates and leaves nothing behind."""
        with sa_signals.session_scope(factory) as session:
            session.add(Item(name="dup"))
        with (
            pytest.raises(sa.exc.IntegrityError),
            sa_signals.session_scope(factory) as session,
        ):
            session.add(Item(name="dup"))
        assert names(engine) == ["dup"]
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    def test_runs_on_commit_callbacks(self, factory: t.Any) -> None:
        """Callbacks registered in the scope run at its commit."""
        ran: list[int] = []
        with sa_signals.session_scope(factory) as session:
            session.add(Item(name="a"))
            sa_signals.on_commit(lambda: ran.append(1), session)
            assert ran == []
        assert ran == [1]

    def test_decorator_passes_the_session(self, factory: t.Any, engine: sa.Engine) -> None:
        """As a decorator, each call gets its own scope and the session as ``session=``."""

        @sa_signals.session_scope(factory)
        def create(name: str, *, session: sa_orm.Session) -> str:
            session.add(Item(name=name))
            return name

        assert create("a") == "a"
        assert create("b") == "b"
        assert names(engine) == ["a", "b"]
        assert create.__name__ == "create"

    def test_decorator_rolls_back_on_error(self, factory: t.Any, engine: sa.Engine) -> None:
        """A decorated function that raises leaves nothing committed."""

        @sa_signals.session_scope(factory)
        def create(*, session: sa_orm.Session) -> None:
            session.add(Item(name="a"))
            session.flush()
            raise ValueError("nope")

        with pytest.raises(ValueError, match="nope"):
            create()
        assert names(engine) == []

    def test_decorator_joins_a_session_passed_in(self, factory: t.Any, engine: sa.Engine) -> None:
        """A caller passing ``session=`` keeps control: no commit, no close."""

        @sa_signals.session_scope(factory)
        def create(name: str, *, session: sa_orm.Session) -> None:
            session.add(Item(name=name))

        with sa_signals.session_scope(factory) as outer:
            create("a", session=outer)
            assert outer.in_transaction()
            outer.rollback()
        assert names(engine) == []

    def test_one_scope_object_nests(self, Session: Scoped, engine: sa.Engine) -> None:
        """A scope object over a sessionmaker entered again while in use nests in its session."""
        scope = sa_signals.session_scope(Session.session_factory)
        with scope as first:
            first.add(Item(name="a"))
            with scope as second:
                assert second is first
                second.add(Audit(message="b"))
            assert first.in_transaction()
        assert names(engine) == ["a"]
        assert names(engine, Audit) == ["b"]

    def test_bad_factory_refused(self, engine: sa.Engine) -> None:
        """A session instance is not a factory."""
        with sa_orm.Session(engine) as session, pytest.raises(TypeError, match="needs a"):
            sa_signals.session_scope(session)  # type: ignore[arg-type]


class TestDistinctSession:
    def test_swaps_into_registry_and_restores(self, Session: Scoped) -> None:
        """Inside, Session() is the distinct session; afterwards the previous one is back."""
        outer = Session()
        with sa_signals.distinct_session(Session) as distinct:
            assert distinct is not outer
            assert Session() is distinct
        assert Session() is outer

    def test_restores_empty_registry(self, Session: Scoped) -> None:
        """With no current session before, the registry is empty again after."""
        with sa_signals.distinct_session(Session):
            assert Session.registry.has()
        assert not Session.registry.has()

    def test_audit_row_survives_outer_rollback(self, Session: Scoped, engine: sa.Engine) -> None:
        """What the distinct session writes commits, whatever the outer transaction does.

        SQLite allows one writer at a time, so there the outer session writes afterwards.
        """
        outer = Session()
        sqlite = engine.dialect.name == "sqlite"
        if not sqlite:
            outer.add(Item(name="outer"))
            outer.flush()
        with sa_signals.distinct_session(Session) as audit:
            audit.add(Audit(message="attempted"))
        if sqlite:
            outer.add(Item(name="outer"))
            outer.flush()
        assert outer.in_transaction()
        outer.rollback()
        assert names(engine, Audit) == ["attempted"]
        assert names(engine) == []

    def test_outer_transaction_untouched(self, Session: Scoped, engine: sa.Engine) -> None:
        """The previous session's transaction continues and commits after the block."""
        outer = Session()
        item = Item(name="outer")
        outer.add(item)
        with sa_signals.distinct_session(Session) as audit:
            audit.add(Audit(message="x"))
        assert item in outer
        outer.commit()
        assert names(engine) == ["outer"]

    def test_nests(self, Session: Scoped, engine: sa.Engine) -> None:
        """Distinct sessions nest; each restores the one before it."""
        with sa_signals.distinct_session(Session) as first:
            with sa_signals.distinct_session(Session) as second:
                assert Session() is second
                second.add(Audit(message="second"))
            assert Session() is first
            first.add(Audit(message="first"))
        assert names(engine, Audit) == ["first", "second"]

    def test_rolls_back_on_error_and_restores(self, Session: Scoped, engine: sa.Engine) -> None:
        """An error rolls the distinct session back and still restores the registry."""
        outer = Session()
        with pytest.raises(RuntimeError), sa_signals.distinct_session(Session) as distinct:
            distinct.add(Audit(message="x"))
            distinct.flush()
            raise RuntimeError
        assert Session() is outer
        assert names(engine, Audit) == []

    def test_sessionmaker_gives_a_fresh_session(self, Session: Scoped, engine: sa.Engine) -> None:
        """Given a sessionmaker there is no registry: just a fresh session that commits."""
        maker = t.cast("sa_orm.sessionmaker[sa_orm.Session]", Session.session_factory)
        with sa_signals.distinct_session(maker) as distinct:
            distinct.add(Audit(message="x"))
        assert names(engine, Audit) == ["x"]

    def test_as_decorator(self, Session: Scoped, engine: sa.Engine) -> None:
        """distinct_session() also decorates, passing the session in."""

        @sa_signals.distinct_session(Session)
        def audit(message: str, *, session: sa_orm.Session) -> None:
            session.add(Audit(message=message))

        audit("decorated")
        assert names(engine, Audit) == ["decorated"]
