"""The on_commit specification, run on every configured backend."""

from __future__ import annotations

import collections.abc as c
import contextlib
import functools
import gc
import logging
import threading
import typing as t
import weakref

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals
from sa_signals._core import external
from tests.conftest import count
from tests.models import Audit
from tests.models import customers
from tests.models import Item
from tests.models import orders

if t.TYPE_CHECKING:
    from tests.conftest import Connector
    from tests.conftest import Flavour
    from tests.conftest import Recorder

Scoped = t.Any


def _flushed(session: sa_orm.Session) -> None:
    session.add(Audit(message="written"))
    session.flush()


WRITES: dict[str, c.Callable[[sa_orm.Session], object]] = {
    "orm": lambda session: session.add(Audit(message="written")),
    "flushed": _flushed,
    "orm insert": lambda session: session.execute(sa.insert(Audit).values(message="written")),
    "connection": lambda session: session.connection().execute(
        sa.insert(t.cast("sa.Table", Audit.__table__)).values(message="written")
    ),
    "driver sql": lambda session: session.connection().exec_driver_sql(
        "INSERT INTO audits (message) VALUES ('written')"
    ),
}
"""The ways a callback can write through its distinct session; the ORM sees only some."""
"""A ``scoped_session`` or an ``async_scoped_session``, by flavour."""

AnySession = t.Any
"""A ``Session`` or an ``AsyncSession``, by flavour."""


@pytest.fixture
def Session(AnySession: Scoped) -> Scoped:
    """Every test of this module runs in the sync and the async flavour (see conftest)."""
    return AnySession


@pytest.fixture
def session(any_session: AnySession) -> AnySession:
    return any_session


class TestRunsAfterCommit:
    def test_runs_once_after_commit(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """A callback runs once, after the outermost commit."""
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do(1), session)
        recorder.assert_done([])
        flavour.aw(session.commit())
        recorder.assert_done([1])
        session.add(Item(name="b"))
        flavour.aw(session.commit())
        recorder.assert_done([1])

    def test_runs_in_registration_order(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """Callbacks run in the order they were registered."""
        session.add(Item(name="a"))
        for n in range(5):
            sa_signals.on_commit(recorder.do(n), session)
        flavour.aw(session.commit())
        recorder.assert_done([0, 1, 2, 3, 4])

    def test_runs_once_per_registration(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """The same callback registered three times runs three times."""
        callback = recorder.do(1)
        session.add(Item(name="a"))
        for _ in range(3):
            sa_signals.on_commit(callback, session)
        flavour.aw(session.commit())
        recorder.assert_done([1, 1, 1])

    @pytest.mark.flavours("sync")
    def test_any_callable(self, session: sa_orm.Session) -> None:
        """Functions, lambdas, partials, bound methods and callable objects run in order, robust
        or strict; what they return is ignored."""
        done: list[object] = []

        class Job:
            def __init__(self, name: str) -> None:
                self.name = name

            def run(self) -> None:
                done.append(self.name)

            def __call__(self) -> None:
                done.append(f"{self.name}()")

        def function() -> None:
            done.append("function")

        session.add(Item(name="a"))
        sa_signals.on_commit(function, session)
        sa_signals.on_commit(lambda: done.append("lambda") or "ignored", session, robust=False)
        sa_signals.on_commit(functools.partial(done.append, "partial"), session)
        sa_signals.on_commit(Job("method").run, session, robust=False)
        sa_signals.on_commit(Job("object"), session)
        sa_signals.on_commit(function, session, robust=False)
        session.commit()
        assert done == ["function", "lambda", "partial", "method", "object()", "function"]

    def test_accepts_the_scoped_session(
        self,
        flavour: Flavour,
        Session: Scoped,
        recorder: Recorder,
    ) -> None:
        """A scoped_session stands for its current session."""
        Session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do(1), Session)
        flavour.aw(Session.commit())
        recorder.assert_done([1])

    def test_sees_committed_data(
        self, flavour: Flavour, Session: Scoped, engine: sa.Engine
    ) -> None:
        """The callback reads what the transaction committed."""
        seen: list[int] = []
        Session.add(Item(name="a", value=7))
        sa_signals.on_commit(
            lambda: seen.append(flavour.aw(Session().scalars(sa.select(Item.value))).one()),
            Session,
        )
        flavour.aw(Session.commit())
        assert seen == [7]

    def test_runs_at_context_manager_commit(
        self,
        flavour: Flavour,
        Session: Scoped,
        recorder: Recorder,
    ) -> None:
        """``with session.begin():`` commits and runs the callbacks on exit."""
        with flavour.begin(Session):
            Session.add(Item(name="a"))
            sa_signals.on_commit(recorder.do(1), Session)
            recorder.assert_done([])
        recorder.assert_done([1])

    def test_registered_during_the_commits_own_flush_runs(
        self, flavour: Flavour, session: AnySession, recorder: Recorder, connect: Connector
    ) -> None:
        """A post_save receiver registering a callback in commit()'s final flush is not lost."""
        connect(
            signals.post_save,
            lambda sender, *, instance, **kw: sa_signals.on_commit(
                recorder.do(instance.name), session
            ),
            Item,
        )
        session.add(Item(name="a"))
        flavour.aw(session.commit())
        recorder.assert_done(["a"])

    def test_queue_cleared_after_successful_commit(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """The next transaction starts with an empty queue."""
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do(1), session)
        flavour.aw(session.commit())
        session.add(Item(name="b"))
        sa_signals.on_commit(recorder.do(2), session)
        flavour.aw(session.commit())
        recorder.assert_done([1, 2])

    def test_strict_error_does_not_prevent_clearing_the_queue(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """After a strict callback raised, the next commit does not run old callbacks again."""
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.fail(1), session, robust=False)
        with pytest.raises(RuntimeError):
            flavour.aw(session.commit())
        session.add(Item(name="b"))
        sa_signals.on_commit(recorder.do(2), session)
        flavour.aw(session.commit())
        recorder.assert_done([1, 2])


class TestDiscarded:
    def test_discards_on_rollback(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """rollback() drops the callbacks; a later commit does not run them."""
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do(1), session)
        flavour.aw(session.rollback())
        session.add(Item(name="b"))
        flavour.aw(session.commit())
        recorder.assert_done([])

    def test_discards_on_exception_in_begin_block(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """An exception in ``with session.begin():`` rolls back and drops the callbacks."""
        with pytest.raises(ZeroDivisionError), flavour.begin(session):
            sa_signals.on_commit(recorder.do(1), session)
            _ = 1 / 0
        recorder.assert_done([])

    def test_discards_on_integrity_error_at_flush(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """A flush that fails leaves a transaction that can only roll back."""
        session.add(Item(name="dup"))
        flavour.aw(session.commit())
        session.add(Item(name="dup"))
        sa_signals.on_commit(recorder.do(1), session)
        with pytest.raises(sa_exc.IntegrityError):
            flavour.aw(session.commit())
        flavour.aw(session.rollback())
        recorder.assert_done([])

    @pytest.mark.parametrize("end", ["close", "reset"])
    def test_discards_on_close_or_reset(
        self, flavour: Flavour, session: AnySession, recorder: Recorder, end: str
    ) -> None:
        """close() / reset() with the transaction open drop the callbacks."""
        session.add(Item(name="a"))
        flavour.aw(session.flush())
        sa_signals.on_commit(recorder.do(1), session)
        flavour.aw(getattr(session, end)())
        session.add(Item(name="b"))
        flavour.aw(session.commit())
        recorder.assert_done([])

    @pytest.mark.backends("sqlite", "postgresql")
    def test_discards_when_commit_itself_fails(
        self, flavour: Flavour, session: AnySession, recorder: Recorder, engine: sa.Engine
    ) -> None:
        """A deferred constraint violated at COMMIT: nothing committed, nothing runs."""
        flavour.aw(session.execute(orders.insert().values(id=1, customer_id=999)))
        sa_signals.on_commit(recorder.do(1), session)
        with pytest.raises(sa_exc.IntegrityError):
            flavour.aw(session.commit())
        flavour.aw(session.rollback())
        recorder.assert_done([])
        flavour.aw(session.execute(customers.insert().values(id=5)))
        sa_signals.on_commit(recorder.do(2), session)
        flavour.aw(session.commit())
        recorder.assert_done([2])


class TestSavepoints:
    def test_discards_callbacks_from_rolled_back_savepoint(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """Only callbacks registered outside the rolled-back savepoint run, in order."""
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do(1), session)
        savepoint = flavour.aw(session.begin_nested())
        sa_signals.on_commit(recorder.do(2), session)
        flavour.aw(savepoint.rollback())
        sa_signals.on_commit(recorder.do(3), session)
        flavour.aw(session.commit())
        recorder.assert_done([1, 3])

    def test_same_callback_in_several_savepoints(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """One callback registered at every level runs once per surviving registration."""
        callback = recorder.do(1)
        session.add(Item(name="a"))
        sa_signals.on_commit(callback, session)
        savepoint = flavour.aw(session.begin_nested())
        sa_signals.on_commit(callback, session)
        flavour.aw(savepoint.rollback())
        with flavour.nested(session):
            sa_signals.on_commit(callback, session)
            savepoint = flavour.aw(session.begin_nested())
            sa_signals.on_commit(callback, session)
            flavour.aw(savepoint.rollback())
        flavour.aw(session.commit())
        recorder.assert_done([1, 1])

    def test_savepoint_without_callbacks_between_ones_with_callbacks(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """Rolling back a savepoint that registered nothing drops nothing of its parent."""
        with flavour.nested(session):
            sa_signals.on_commit(recorder.do(1), session)
            empty = flavour.aw(session.begin_nested())
            flavour.aw(empty.rollback())
            sa_signals.on_commit(recorder.do(2), session)
        with flavour.nested(session):
            with flavour.nested(session):
                sa_signals.on_commit(recorder.do(3), session)
            sa_signals.on_commit(recorder.do(4), session)
            empty = flavour.aw(session.begin_nested())
            flavour.aw(empty.rollback())
        flavour.aw(session.commit())
        recorder.assert_done([1, 2, 3, 4])

    def test_released_savepoint_waits_for_outer_commit(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """Releasing a savepoint is not a commit."""
        with flavour.nested(session):
            session.add(Item(name="a"))
            sa_signals.on_commit(recorder.do(1), session)
        recorder.assert_done([])
        flavour.aw(session.commit())
        recorder.assert_done([1])

    def test_inner_savepoint_rolled_back_with_outer(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """A released inner savepoint's callbacks go when its enclosing savepoint rolls back."""
        outer = flavour.aw(session.begin_nested())
        with flavour.nested(session):
            sa_signals.on_commit(recorder.do(1), session)
        flavour.aw(outer.rollback())
        flavour.aw(session.commit())
        recorder.assert_done([])

    def test_inner_savepoint_rolled_back_by_outer_rollback_directly(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """Rolling back an outer savepoint while an inner one is open drops both."""
        outer = flavour.aw(session.begin_nested())
        sa_signals.on_commit(recorder.do(1), session)
        flavour.aw(session.begin_nested())
        sa_signals.on_commit(recorder.do(2), session)
        flavour.aw(outer.rollback())
        sa_signals.on_commit(recorder.do(3), session)
        flavour.aw(session.commit())
        recorder.assert_done([3])

    def test_released_savepoint_then_outer_rollback(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """A savepoint released, then its outer transaction rolled back: nothing runs."""
        with flavour.nested(session):
            sa_signals.on_commit(recorder.do(1), session)
        flavour.aw(session.rollback())
        recorder.assert_done([])

    def test_nested_to_any_depth(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """Depth does not matter: surviving levels run, rolled-back levels do not."""
        savepoints = []
        for depth in range(6):
            savepoints.append(flavour.aw(session.begin_nested()))
            session.add(Item(name=f"d{depth}"))
            sa_signals.on_commit(recorder.do(depth), session)
        for savepoint in reversed(savepoints[3:]):
            flavour.aw(savepoint.rollback())
        for savepoint in reversed(savepoints[:3]):
            flavour.aw(savepoint.commit())
        flavour.aw(session.commit())
        recorder.assert_done([0, 1, 2])

    def test_integrity_error_in_savepoint_keeps_outer_callbacks(
        self, flavour: Flavour, session: AnySession, recorder: Recorder, engine: sa.Engine
    ) -> None:
        """A failed flush inside a savepoint drops its callbacks; the outer ones survive."""
        session.add(Item(name="dup"))
        sa_signals.on_commit(recorder.do("outer"), session)
        with pytest.raises(sa_exc.IntegrityError), flavour.nested(session):
            session.add(Item(name="dup"))
            sa_signals.on_commit(recorder.do("inner"), session)
            flavour.aw(session.flush())
        flavour.aw(session.commit())
        recorder.assert_done(["outer"])
        assert count(engine, Item) == 1


class TestOutsideTransaction:
    def test_runs_immediately_outside_transaction(
        self, session: AnySession, recorder: Recorder
    ) -> None:
        """Registered with no transaction open, the callback runs at once."""
        assert not session.in_transaction()
        sa_signals.on_commit(recorder.do(1), session)
        recorder.assert_done([1])

    def test_immediate_callback_gets_a_distinct_session(
        self,
        Session: Scoped,
    ) -> None:
        """Even run at once, the callback sees a distinct session in the registry."""
        original = Session()
        seen: list[sa_orm.Session] = []
        sa_signals.on_commit(lambda: seen.append(Session()), original)
        assert seen[0] is not original
        assert Session() is original


class TestDistinctSession:
    def test_callback_gets_distinct_session_from_registry(
        self,
        flavour: Flavour,
        Session: Scoped,
    ) -> None:
        """``Session()`` inside the callback is a fresh session; the original is restored."""
        original = Session()
        seen: list[sa_orm.Session] = []
        original.add(Item(name="a"))
        sa_signals.on_commit(lambda: seen.append(Session()), original)
        flavour.aw(original.commit())
        assert seen[0] is not original
        assert isinstance(seen[0], type(original))
        assert Session() is original

    def test_callback_writes_are_committed(
        self,
        flavour: Flavour,
        Session: Scoped,
        engine: sa.Engine,
    ) -> None:
        """What the callback writes through its distinct session is committed on return."""
        Session.add(Item(name="a"))
        sa_signals.on_commit(lambda: Session.add(Audit(message="saw a")), Session)
        flavour.aw(Session.commit())
        assert count(engine, Audit) == 1

    def test_callback_writes_rolled_back_when_it_raises(
        self,
        flavour: Flavour,
        Session: Scoped,
        engine: sa.Engine,
    ) -> None:
        """A callback that raises has its distinct session rolled back."""

        def write_then_fail() -> None:
            Session.add(Audit(message="never"))
            flavour.aw(Session.flush())
            raise RuntimeError("boom")

        Session.add(Item(name="a"))
        sa_signals.on_commit(write_then_fail, Session)
        flavour.aw(Session.commit())
        assert count(engine, Audit) == 0
        assert count(engine, Item) == 1

    def test_original_session_left_as_sqlalchemy_left_it(
        self,
        flavour: Flavour,
        Session: Scoped,
        engine: sa.Engine,
    ) -> None:
        """After the callbacks: no transaction, no connection, still usable."""
        original = Session()
        original.add(Item(name="a"))
        sa_signals.on_commit(lambda: Session.add(Audit(message="x")), original)
        flavour.aw(original.commit())
        assert not original.in_transaction()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        original.add(Item(name="b"))
        flavour.aw(original.commit())
        assert count(engine, Item) == 2

    def test_callback_using_original_session_is_cleaned_and_reported(
        self,
        flavour: Flavour,
        Session: Scoped,
        connect: Connector,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Touching the committed session from a callback is rolled back and reported loudly."""
        failures = connect.record(signals.on_commit_failed)
        original = Session()
        original.add(Item(name="a"))

        def misuse() -> None:
            flavour.aw(original.scalars(sa.select(Item))).all()

        sa_signals.on_commit(misuse, original)
        with caplog.at_level(logging.ERROR, logger="sa_signals"):
            flavour.aw(original.commit())
        assert not original.in_transaction()
        assert len(failures) == 1
        assert isinstance(failures[0][1]["exception"], sa_signals.SessionLeftOpenError)
        assert failures[0][1]["callback"] is misuse
        assert "used the session that had committed" in caplog.text
        assert "sa_signals.current_session()" in caplog.text

    @pytest.mark.flavours("sync")
    def test_writing_through_the_session_of_a_begin_block_is_named(
        self, Session: Scoped, connect: Connector
    ) -> None:
        """A callback writing through the session of `with session.begin():` gets the
        layer's SessionLeftOpenError naming the fix, SQLAlchemy's refusal as its cause."""
        failures = connect.record(signals.on_commit_failed)
        session = Session.session_factory()
        with session.begin():
            session.add(Item(name="a"))
            sa_signals.on_commit(
                lambda: session.add(Audit(message="x")) or session.flush(), session
            )
        [(_, failure)] = failures
        error = failure["exception"]
        assert isinstance(error, sa_signals.SessionLeftOpenError)
        assert isinstance(error.__cause__, sa_exc.InvalidRequestError)
        assert "sa_signals.current_session()" in str(error)
        session.close()

    @pytest.mark.flavours("sync")
    def test_reading_an_expired_instance_names_change_identity(
        self, Session: Scoped, connect: Connector
    ) -> None:
        """A receiver reading an attribute of a committed (so expired) object learns to read
        change.identity or change.changes instead."""
        failures = connect.record(signals.receiver_failed)
        names: list[str] = []

        def on_committed(sender: type, *, change: sa_signals.Change, **kwargs: object) -> None:
            names.append(change.instance.name)  # expired by the commit: loads through it

        connect(signals.committed, on_committed, Item)
        session = Session()
        session.add(Item(name="a"))
        session.commit()
        [(_, failure)] = failures
        assert isinstance(failure["exception"], sa_signals.SessionLeftOpenError)
        assert "change.identity and change.changes" in str(failure["exception"])
        assert "expire_on_commit=False" in str(failure["exception"])

    def test_failing_callback_that_used_original_session_leaves_it_closed(
        self, flavour: Flavour, Session: Scoped, connect: Connector, recorder: Recorder
    ) -> None:
        """A callback that touches the committed session and then raises: the session is rolled
        back, its own error is the one reported, and the next callback runs as usual."""
        failures = connect.record(signals.on_commit_failed)
        original = Session()
        original.add(Item(name="a"))

        def misuse() -> None:
            original.add(Item(name="b"))
            raise RuntimeError("after the misuse")

        sa_signals.on_commit(misuse, original)
        sa_signals.on_commit(recorder.do(1), original)
        flavour.aw(original.commit())
        assert not original.in_transaction()
        assert [str(kwargs["exception"]) for _, kwargs in failures] == ["after the misuse"]
        recorder.assert_done([1])

    def test_current_session_for_sessionmaker_install(self, engine: sa.Engine) -> None:
        """With a sessionmaker install, current_session() reaches the distinct session."""
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)
        try:
            seen: list[sa_orm.Session] = []
            with maker() as session:
                session.add(Item(name="a"))

                def callback() -> None:
                    distinct = sa_signals.current_session()
                    assert distinct is sa_signals.current_session()
                    seen.append(distinct)
                    distinct.add(Audit(message="from maker"))

                sa_signals.on_commit(callback, session)
                session.commit()
                assert seen[0] is not session
            with maker() as check:
                assert check.scalars(sa.select(Audit.message)).all() == ["from maker"]
        finally:
            sa_signals.uninstall(maker)

    def test_current_session_for_session_class_install(self, engine: sa.Engine) -> None:
        """A Session subclass install builds the distinct session with the same bind."""

        class MySession(sa_orm.Session):
            pass

        sa_signals.install(MySession)
        try:
            with MySession(bind=engine) as session:
                session.add(Item(name="a"))
                sa_signals.on_commit(
                    lambda: sa_signals.current_session().add(Audit(message="cls")), session
                )
                session.commit()
            assert count(engine, Audit) == 1
        finally:
            sa_signals.uninstall(MySession)

    def test_current_session_outside_callback_raises(self) -> None:
        """current_session() outside a callback says where it works."""
        with pytest.raises(sa_signals.OutsideCallbackError, match="only inside an on_commit"):
            sa_signals.current_session()

    @pytest.mark.flavours("sync")
    @pytest.mark.parametrize("write", list(WRITES))
    def test_writes_made_any_way_are_committed(
        self, write: str, engine: sa.Engine, Session: Scoped
    ) -> None:
        """What a callback writes through its distinct session is committed, whether the ORM
        saw the write or not: the layer commits the session, it never guesses that a session
        wrote nothing."""
        Session.add(Item(name="a"))
        sa_signals.on_commit(lambda: WRITES[write](Session()), Session)
        Session.commit()
        assert count(engine, Audit) == 1

    def test_distinct_session_created_lazily(self, flavour: Flavour, Session: Scoped) -> None:
        """A callback that never asks for a session gets none: the registry stays empty."""
        states: list[bool] = []
        Session.add(Item(name="a"))
        sa_signals.on_commit(lambda: states.append(Session.registry.has()), Session)
        flavour.aw(Session.commit())
        assert states == [False]


class TestCallbacksRegisteringCallbacks:
    def test_callback_registered_in_callback_runs_after_its_session_commits(
        self,
        flavour: Flavour,
        Session: Scoped,
        engine: sa.Engine,
    ) -> None:
        """A callback registered in a callback's transaction runs after that commit."""
        seen: list[int] = []

        def first() -> None:
            Session.add(Audit(message="first"))
            sa_signals.on_commit(lambda: seen.append(count(engine, Audit)), Session)

        Session.add(Item(name="a"))
        sa_signals.on_commit(first, Session)
        flavour.aw(Session.commit())
        assert seen == [1]

    def test_callback_registered_outside_transaction_in_callback_runs(
        self,
        flavour: Flavour,
        Session: Scoped,
        recorder: Recorder,
    ) -> None:
        """Registered from a callback with no transaction open, it still runs."""

        def first() -> None:
            recorder.done.append("first")
            sa_signals.on_commit(recorder.do("second"), Session)

        Session.add(Item(name="a"))
        sa_signals.on_commit(first, Session)
        sa_signals.on_commit(recorder.do("third"), Session)
        flavour.aw(Session.commit())
        recorder.assert_done(["first", "second", "third"])

    def test_hundreds_of_nested_registrations_do_not_recurse(
        self,
        flavour: Flavour,
        Session: Scoped,
        recorder: Recorder,
    ) -> None:
        """Chains of callbacks registering callbacks run without exhausting the stack."""

        def chain(n: int) -> t.Callable[[], None]:
            def callback() -> None:
                recorder.done.append(n)
                if n < 500:
                    Session.add(Audit(message=str(n)))
                    sa_signals.on_commit(chain(n + 1), Session)

            return callback

        Session.add(Item(name="a"))
        sa_signals.on_commit(chain(0), Session)
        flavour.aw(Session.commit())
        recorder.assert_done(list(range(501)))


class TestErrors:
    def test_robust_failure_logged_and_others_run(
        self,
        flavour: Flavour,
        session: AnySession,
        recorder: Recorder,
        connect: Connector,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A failing robust callback is logged with its traceback and sent; the rest run."""
        failures = connect.record(signals.on_commit_failed)
        failing = recorder.fail(2)
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do(1), session)
        sa_signals.on_commit(failing, session)
        sa_signals.on_commit(recorder.do(3), session)
        with caplog.at_level(logging.ERROR, logger="sa_signals"):
            flavour.aw(session.commit())
        recorder.assert_done([1, 2, 3])
        assert [(sender, kw["callback"]) for sender, kw in failures] == [(session, failing)]
        assert str(failures[0][1]["exception"]) == "callback 2 failed"
        [record] = [r for r in caplog.records if r.name == "sa_signals"]
        assert record.levelno == logging.ERROR
        assert "fail(2)" in record.getMessage()
        assert record.exc_info is not None

    def test_non_robust_failure_propagates_after_others_ran(
        self, flavour: Flavour, session: AnySession, recorder: Recorder, engine: sa.Engine
    ) -> None:
        """robust=False raises out of commit() after every other callback ran; data stays."""
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.fail(1, ValueError("strict")), session, robust=False)
        sa_signals.on_commit(recorder.do(2), session)
        with pytest.raises(ValueError, match="strict"):
            flavour.aw(session.commit())
        recorder.assert_done([1, 2])
        assert count(engine, Item) == 1
        assert not session.in_transaction()
        session.add(Item(name="b"))
        flavour.aw(session.commit())
        assert count(engine, Item) == 2

    def test_robust_by_position(
        self, flavour: Flavour, session: AnySession, recorder: Recorder
    ) -> None:
        """robust may be passed by position, as with Django's on_commit(func, using, robust)."""
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.fail(1, ValueError("strict")), session, False)
        with pytest.raises(ValueError, match="strict"):
            flavour.aw(session.commit())
        recorder.assert_done([1])

    def test_failing_failure_receiver_is_only_logged(
        self,
        flavour: Flavour,
        session: AnySession,
        recorder: Recorder,
        connect: Connector,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A receiver of on_commit_failed that raises does not stop the callbacks."""

        def bad_receiver(sender: object, **kwargs: object) -> None:
            raise RuntimeError("receiver broke")

        connect(signals.on_commit_failed, bad_receiver)
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.fail(1), session)
        sa_signals.on_commit(recorder.do(2), session)
        with caplog.at_level(logging.ERROR, logger="sa_signals"):
            flavour.aw(session.commit())
        recorder.assert_done([1, 2])
        assert "receiver broke" in caplog.text

    @pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit])
    def test_base_exceptions_propagate_and_session_stays_usable(
        self,
        flavour: Flavour,
        Session: Scoped,
        recorder: Recorder,
        exc_type: type[BaseException],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """KeyboardInterrupt and friends are not swallowed; the registry is restored."""
        original = Session()
        original.add(Item(name="a"))

        def interrupt() -> None:
            Session.add(Audit(message="x"))
            raise exc_type

        sa_signals.on_commit(interrupt, original)
        sa_signals.on_commit(recorder.do("later"), original)
        with caplog.at_level(logging.ERROR, logger="sa_signals"), pytest.raises(exc_type):
            flavour.aw(original.commit())
        assert Session() is original
        assert not original.in_transaction()
        assert "1 commit-time call(s) did not run" in caplog.text
        original.add(Item(name="b"))
        flavour.aw(original.commit())


@contextlib.contextmanager
def outer(flavour: Flavour, bind: t.Any) -> c.Iterator[t.Any]:
    """A Connection in a transaction its caller began, closed at the end."""
    connection = flavour.aw(bind.connect())
    flavour.aw(connection.begin())
    try:
        yield connection
    finally:
        flavour.aw(connection.close())


JOIN_MODES = ["create_savepoint", "rollback_only", "conditional_savepoint"]
"""How a session joins a Connection's transaction that its caller began."""


class TestExternalTransaction:
    @pytest.fixture
    def joined(self, Session: Scoped, request: pytest.FixtureRequest) -> t.Any:
        """An installed factory joining sessions into their Connection's transaction, and the
        engine (the Connection is made inside the test, see :func:`outer`)."""
        maker = type(Session.session_factory)(join_transaction_mode=request.param)
        sa_signals.install(maker)
        yield maker, Session.session_factory.kw["bind"]
        sa_signals.uninstall(maker)

    @pytest.mark.parametrize("joined", JOIN_MODES, indirect=True)
    def test_callbacks_wait_for_the_connections_commit(
        self, flavour: Flavour, joined: t.Any, recorder: Recorder
    ) -> None:
        """session.commit() commits nothing: callbacks, also one registered before the session
        began, run after the Connection's own COMMIT, in order."""
        maker, bind = joined
        with outer(flavour, bind) as connection:
            session = maker(bind=connection)
            sa_signals.on_commit(recorder.do(1), session)  # the session has not begun yet
            session.add(Item(name="a"))
            sa_signals.on_commit(recorder.do(2), session)
            flavour.aw(session.commit())
            flavour.aw(session.begin())
            sa_signals.on_commit(recorder.do(3), session)
            flavour.aw(session.commit())  # no SQL emitted: the bound connection decides
            flavour.aw(session.close())
            recorder.assert_done([])
            flavour.aw(connection.commit())
            recorder.assert_done([1, 2, 3])

    @pytest.mark.parametrize("joined", JOIN_MODES, indirect=True)
    def test_callbacks_dropped_when_the_connection_rolls_back(
        self, flavour: Flavour, joined: t.Any, recorder: Recorder
    ) -> None:
        """The test-suite pattern: the outer rollback drops every callback; none ran early."""
        maker, bind = joined
        with outer(flavour, bind) as connection:
            session = maker(bind=connection)
            sa_signals.on_commit(recorder.do(1), session)
            session.add(Item(name="a"))
            sa_signals.on_commit(recorder.do(2), session)
            flavour.aw(session.commit())
            flavour.aw(session.close())
            flavour.aw(connection.rollback())
            recorder.assert_done([])
            flavour.aw(connection.begin())
            flavour.aw(connection.commit())
            recorder.assert_done([])

    @pytest.mark.parametrize("joined", ["create_savepoint"], indirect=True)
    @pytest.mark.parametrize("released", [True, False])
    def test_connection_savepoint_rolled_back_drops_its_callbacks(
        self, flavour: Flavour, joined: t.Any, recorder: Recorder, released: bool
    ) -> None:
        """A savepoint the caller rolls back on the Connection drops the callbacks of the work
        inside it; released, they wait for the COMMIT."""
        maker, bind = joined
        with outer(flavour, bind) as connection:
            sa_signals.on_commit(recorder.do("outside"), maker(bind=connection))
            savepoint = flavour.aw(connection.begin_nested())
            session = maker(bind=connection)
            session.add(Item(name="a"))
            sa_signals.on_commit(recorder.do("inside"), session)
            flavour.aw(session.commit())
            flavour.aw(session.close())
            flavour.aw(savepoint.commit() if released else savepoint.rollback())
            flavour.aw(connection.commit())
            recorder.assert_done(["outside", "inside"] if released else ["outside"])

    @pytest.mark.parametrize("joined", ["conditional_savepoint"], indirect=True)
    def test_callback_sees_and_writes_committed_data_on_its_own_connection(
        self, flavour: Flavour, joined: t.Any, engine: sa.Engine
    ) -> None:
        """After the Connection's COMMIT a callback's distinct session is bound to the Engine:
        it sees the committed row, and its own write commits."""
        maker, bind = joined
        with outer(flavour, bind) as connection:
            session = maker(bind=connection)
            session.add(Item(name="a"))
            seen: list[int] = []

            def callback() -> None:
                distinct = sa_signals.current_session()
                assert distinct.bind is not connection
                seen.append(distinct.scalar(sa.select(sa.func.count()).select_from(Item)) or 0)
                distinct.add(Audit(message="after"))

            def async_callback() -> t.Any:
                async def go() -> None:
                    distinct = sa_signals.current_async_session()
                    seen.append(
                        await distinct.scalar(sa.select(sa.func.count()).select_from(Item))
                    )
                    distinct.add(Audit(message="after"))

                return go()

            sa_signals.on_commit(async_callback if flavour.is_async else callback, session)
            flavour.aw(session.commit())
            flavour.aw(session.close())
            flavour.aw(connection.commit())
            assert seen == [1]
            assert count(engine, Audit) == 1

    @pytest.mark.parametrize("joined", ["conditional_savepoint"], indirect=True)
    def test_where_the_commit_cannot_be_followed_nothing_runs_early(
        self,
        flavour: Flavour,
        joined: t.Any,
        recorder: Recorder,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """On a SQLAlchemy whose Connection layout is unknown, a registration before the
        session began is refused, naming the fix; the callbacks of its transaction are dropped
        and logged, never run early."""
        monkeypatch.setattr(external, "_LAYOUT_KNOWN", False)
        maker, bind = joined
        with outer(flavour, bind) as connection:
            session = maker(bind=connection)
            with pytest.raises(
                sa_signals.ExternalTransactionError, match="bind the session to the Engine"
            ):
                sa_signals.on_commit(recorder.do(1), session)
            session.add(Item(name="a"))
            sa_signals.on_commit(recorder.do(2), session)
            with caplog.at_level(logging.ERROR, logger="sa_signals"):
                flavour.aw(session.commit())
            flavour.aw(session.close())
            flavour.aw(connection.commit())
        recorder.assert_done([])
        assert "1 commit-time call(s)" in caplog.records[0].getMessage()
        assert "were dropped" in caplog.records[0].getMessage()

    @pytest.mark.parametrize("joined", ["create_savepoint"], indirect=True)
    def test_after_commit_and_models_committed_wait_too(
        self, flavour: Flavour, joined: t.Any
    ) -> None:
        """Commit-time receivers and change sets of a joined session wait for the Connection's
        COMMIT as its callbacks do."""
        maker, bind = joined
        with outer(flavour, bind) as connection:
            sent: list[str] = []

            def after_commit(sender: t.Any, **kwargs: t.Any) -> None:
                sent.append("after_commit")

            def models_committed(sender: t.Any, *, changes: t.Any, **kwargs: t.Any) -> None:
                sent.extend(f"{change.operation} {change.model.__name__}" for change in changes)

            signals.after_commit.connect(after_commit)
            signals.models_committed.connect(models_committed)
            try:
                session = maker(bind=connection)
                session.add(Item(name="a"))
                flavour.aw(session.commit())
                flavour.aw(session.close())
                assert sent == []
                flavour.aw(connection.commit())
                assert sent == ["after_commit", "insert Item"]
            finally:
                signals.after_commit.disconnect(after_commit)
                signals.models_committed.disconnect(models_committed)


class TestThreadsAndState:
    @pytest.mark.backends("postgresql", "mariadb")
    @pytest.mark.flavours("sync")
    def test_eight_threads_each_run_their_own_callbacks(
        self,
        Session: Scoped,
        engine: sa.Engine,
    ) -> None:
        """Concurrent commits each run exactly their own callbacks, in their own thread."""
        runs: list[tuple[int, int, int]] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def worker(n: int) -> None:
            try:
                barrier.wait()
                for i in range(10):
                    session = Session()
                    session.add(Item(name=f"t{n}-{i}"))
                    ident = threading.get_ident()
                    sa_signals.on_commit(
                        lambda n=n, i=i, ident=ident: runs.append(
                            (n, i, int(threading.get_ident() == ident))
                        ),
                        session,
                    )
                    if i % 3 == 0:
                        session.rollback()
                    else:
                        session.commit()
                Session.remove()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        expected = sorted((n, i, 1) for n in range(8) for i in range(10) if i % 3)
        assert sorted(runs) == expected
        assert count(engine, Item) == len(expected)

    def test_nothing_kept_after_transaction(
        self,
        flavour: Flavour,
        Session: Scoped,
    ) -> None:
        """Sessions and callbacks are collectable once the transaction ends."""

        class Callback:
            def __call__(self) -> None:
                pass

        callback = Callback()
        callback_ref = weakref.ref(callback)
        session = Session.session_factory()
        session_ref = weakref.ref(session)
        session.add(Item(name="a"))
        sa_signals.on_commit(callback, session)
        flavour.aw(session.commit())
        flavour.aw(session.close())
        del callback, session
        gc.collect()
        assert callback_ref() is None
        assert session_ref() is None


class TestWithoutASession:
    """``on_commit(func)``, as in Django: on the current session of the one scoped session."""

    def test_registers_on_the_current_session(
        self, flavour: Flavour, Session: Scoped, recorder: Recorder
    ) -> None:
        """With one scoped session installed, the callback waits for its current session."""
        Session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do(1))
        recorder.assert_done([])
        flavour.aw(Session.commit())
        recorder.assert_done([1])

    def test_keeps_the_savepoint_rules(
        self, flavour: Flavour, Session: Scoped, recorder: Recorder
    ) -> None:
        """A callback registered without a session in a rolled-back savepoint is dropped."""
        Session.add(Item(name="a"))
        with contextlib.suppress(LookupError), flavour.nested(Session()):
            sa_signals.on_commit(recorder.do("dropped"))
            raise LookupError
        sa_signals.on_commit(recorder.do("kept"))
        flavour.aw(Session.commit())
        recorder.assert_done(["kept"])

    def test_runs_at_once_outside_a_transaction(self, Session: Scoped) -> None:
        """With no transaction open on the current session, the callback runs at once."""
        ran: list[int] = []
        sa_signals.on_commit(lambda: ran.append(1))
        assert ran == [1]

    def test_in_a_callback_registers_on_its_distinct_session(
        self, flavour: Flavour, Session: Scoped, engine: sa.Engine
    ) -> None:
        """Inside a callback the current session is the callback's: its commit runs it."""
        seen: list[int] = []

        def first() -> None:
            Session.add(Audit(message="first"))
            sa_signals.on_commit(lambda: seen.append(count(engine, Audit)))

        Session.add(Item(name="a"))
        sa_signals.on_commit(first)
        flavour.aw(Session.commit())
        assert seen == [1]

    def test_needs_one_scoped_session(self, Session: Scoped, engine: sa.Engine) -> None:
        """With several scoped sessions installed, or only sessionmakers, the error says to
        pass the session."""
        other = sa_orm.scoped_session(sa_orm.sessionmaker(engine))
        sa_signals.install(other)
        try:
            with pytest.raises(TypeError, match=r"but 2 are installed: pass the session"):
                sa_signals.on_commit(lambda: None)
        finally:
            sa_signals.uninstall(other)
        sa_signals.uninstall(Session)
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)
        try:
            with pytest.raises(TypeError, match=r"but none is installed: pass the session"):
                sa_signals.on_commit(lambda: None)
        finally:
            sa_signals.uninstall(maker)

    @pytest.mark.flavours("sync")
    def test_nothing_installed_names_install(self, flavour: Flavour, Session: Scoped) -> None:
        """With nothing installed, the error names install()."""
        sa_signals.uninstall(Session)
        with pytest.raises(sa_signals.NotInstalledError, match=r"call sa_signals\.install\(\)"):
            sa_signals.on_commit(lambda: None)


class TestBadInput:
    def test_non_callable_fails_at_registration(self, session: AnySession) -> None:
        """A non-callable is refused at once, not at commit."""
        with pytest.raises(TypeError, match="on_commit\\(\\) needs a callable, got 42"):
            sa_signals.on_commit(42, session)  # type: ignore[arg-type]

    def test_not_a_session(self) -> None:
        """Anything but a session is refused."""
        with pytest.raises(TypeError, match="needs a Session or a scoped_session"):
            sa_signals.on_commit(lambda: None, object())  # type: ignore[arg-type]

    def test_uninstalled_factory_names_install(self, engine: sa.Engine) -> None:
        """A session whose factory was never installed points at sa_signals.install."""
        with (
            sa_orm.Session(engine) as session,
            pytest.raises(sa_signals.NotInstalledError, match=r"sa_signals\.install\(\)"),
        ):
            sa_signals.on_commit(lambda: None, session)

    @pytest.mark.flavours("sync")
    def test_coroutine_function_refused_for_sync_session(self, session: sa_orm.Session) -> None:
        """A coroutine function cannot be awaited after a sync commit: refused at once."""

        async def callback() -> None:  # pragma: no cover - never called
            pass

        with pytest.raises(sa_signals.CoroutineMisuseError, match="pass a plain function"):
            sa_signals.on_commit(callback, session)

    @pytest.mark.flavours("sync")
    def test_coroutine_function_refused_after_plain_ones(self, session: sa_orm.Session) -> None:
        """A coroutine function is refused even right after plain callbacks were queued."""

        async def callback() -> None:  # pragma: no cover - never called
            pass

        def plain() -> None:
            pass

        session.add(Item(name="a"))
        sa_signals.on_commit(plain, session)
        sa_signals.on_commit(plain, session)
        with pytest.raises(sa_signals.CoroutineMisuseError, match="pass a plain function"):
            sa_signals.on_commit(callback, session)
        session.commit()
