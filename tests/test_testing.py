"""sa_signals.testing: capturing callbacks and signals, and the transactional test mode."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import re
import traceback
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals
from sa_signals import testing
from sa_signals._core.state import TRANSACTIONAL_ATTR
from tests.conftest import count
from tests.models import Audit
from tests.models import Book
from tests.models import customers
from tests.models import Item
from tests.models import orders

if t.TYPE_CHECKING:
    from tests.conftest import Connector
    from tests.conftest import Flavour
    from tests.conftest import Recorder

Scoped = sa_orm.scoped_session[sa_orm.Session]


def distinct_of(flavour: Flavour) -> t.Any:
    """The distinct session of the callback being run: an ``AsyncSession`` in the async
    flavour."""
    if flavour.is_async:
        return sa_signals.current_async_session()
    return sa_signals.current_session()


class TestCaptureOnCommit:
    def test_collects_callbacks_registered_in_block(
        self, flavour: Flavour, any_session: t.Any, recorder: Recorder
    ) -> None:
        """Only the block's callbacks are listed, at its end; they stay queued for the commit."""
        any_session.add(Item(name="a"))
        flavour.aw(any_session.flush())
        before, first, second = recorder.do(0), recorder.do(1), recorder.do(2)
        sa_signals.on_commit(before, any_session)
        with flavour.enter(testing.capture_on_commit(any_session)) as callbacks:
            sa_signals.on_commit(first, any_session)
            sa_signals.on_commit(second, any_session)
            assert callbacks == []
        assert callbacks == [first, second]
        recorder.assert_done([])
        flavour.aw(any_session.commit())
        recorder.assert_done([0, 1, 2])

    def test_leaves_out_rolled_back_savepoint(
        self, flavour: Flavour, any_session: t.Any, recorder: Recorder
    ) -> None:
        """Callbacks of a savepoint rolled back inside the block would never run: not listed."""
        kept, dropped = recorder.do(1), recorder.do(2)
        flavour.aw(any_session.begin())
        with flavour.enter(testing.capture_on_commit(any_session)) as callbacks:
            sa_signals.on_commit(kept, any_session)
            savepoint = flavour.aw(any_session.begin_nested())
            sa_signals.on_commit(dropped, any_session)
            flavour.aw(savepoint.rollback())
        assert callbacks == [kept]
        flavour.aw(any_session.rollback())

    def test_lists_each_registration_of_one_callback(
        self, flavour: Flavour, any_session: t.Any, recorder: Recorder
    ) -> None:
        """The same callback registered before and twice inside the block is listed twice."""
        callback = recorder.do(1)
        flavour.aw(any_session.begin())
        sa_signals.on_commit(callback, any_session)
        with flavour.enter(testing.capture_on_commit(any_session)) as callbacks:
            sa_signals.on_commit(callback, any_session)
            sa_signals.on_commit(callback, any_session)
        assert callbacks == [callback, callback]
        flavour.aw(any_session.commit())
        recorder.assert_done([1, 1, 1])

    def test_savepoint_begun_before_the_block_rolled_back_in_it(
        self, flavour: Flavour, any_session: t.Any, recorder: Recorder
    ) -> None:
        """A savepoint older than the block takes its callbacks along; the block's later ones
        are listed, and with execute=True only they run."""
        kept, dropped, later = recorder.do(0), recorder.do(1), recorder.do(2)
        flavour.aw(any_session.begin())
        sa_signals.on_commit(kept, any_session)
        savepoint = flavour.aw(any_session.begin_nested())
        sa_signals.on_commit(dropped, any_session)
        with flavour.enter(testing.capture_on_commit(any_session, execute=True)) as callbacks:
            flavour.aw(savepoint.rollback())
            sa_signals.on_commit(later, any_session)
        assert callbacks == [later]
        recorder.assert_done([2])
        flavour.aw(any_session.commit())
        recorder.assert_done([2, 0])

    def test_nested_captures_each_list_their_own_block(
        self, flavour: Flavour, any_session: t.Any, recorder: Recorder
    ) -> None:
        """An inner capture lists its block; the outer one lists both, less what was cut."""
        first, dropped, second, third = (recorder.do(n) for n in range(4))
        flavour.aw(any_session.begin())
        savepoint = flavour.aw(any_session.begin_nested())
        with flavour.enter(testing.capture_on_commit(any_session)) as outer:
            sa_signals.on_commit(dropped, any_session)
            flavour.aw(savepoint.commit())
            sa_signals.on_commit(first, any_session)
            with flavour.enter(testing.capture_on_commit(any_session)) as inner:
                sa_signals.on_commit(second, any_session)
            sa_signals.on_commit(third, any_session)
        assert inner == [second]
        assert outer == [dropped, first, second, third]
        flavour.aw(any_session.rollback())

    def test_transaction_ended_inside_the_block(
        self, flavour: Flavour, any_session: t.Any, recorder: Recorder
    ) -> None:
        """Callbacks of a transaction committed inside the block are listed (they ran), those
        of one rolled back are not, and those of the one begun after are."""
        ran, dropped, queued = recorder.do(0), recorder.do("dropped"), recorder.do(1)
        flavour.aw(any_session.begin())
        with flavour.enter(testing.capture_on_commit(any_session)) as callbacks:
            sa_signals.on_commit(ran, any_session)
            flavour.aw(any_session.commit())
            flavour.aw(any_session.begin())
            sa_signals.on_commit(dropped, any_session)
            flavour.aw(any_session.rollback())
            flavour.aw(any_session.begin())
            sa_signals.on_commit(queued, any_session)
        assert callbacks == [ran, queued]
        recorder.assert_done([0])
        flavour.aw(any_session.rollback())

    def test_accepts_the_scoped_session(
        self, flavour: Flavour, AnySession: t.Any, recorder: Recorder
    ) -> None:
        """A scoped_session stands for its current session."""
        callback = recorder.do(1)
        with flavour.enter(testing.capture_on_commit(AnySession)) as callbacks:
            flavour.aw(AnySession.begin())
            sa_signals.on_commit(callback, AnySession)
        assert callbacks == [callback]
        flavour.aw(AnySession.rollback())

    def test_execute_runs_at_end_and_dequeues(
        self, flavour: Flavour, any_session: t.Any, recorder: Recorder
    ) -> None:
        """execute=True runs the block's callbacks at its end (awaited if coroutines), once."""
        any_session.add(Item(name="a"))
        flavour.aw(any_session.flush())
        sa_signals.on_commit(recorder.do(0), any_session)
        with flavour.enter(testing.capture_on_commit(any_session, execute=True)):
            sa_signals.on_commit(recorder.do(1), any_session)
            sa_signals.on_commit(recorder.do(2), any_session)
            recorder.assert_done([])
        recorder.assert_done([1, 2])
        flavour.aw(any_session.commit())
        recorder.assert_done([1, 2, 0])

    def test_execute_runs_each_in_a_distinct_session(
        self, flavour: Flavour, AnySession: t.Any
    ) -> None:
        """Executed callbacks get their own session, as after a commit."""
        origin = AnySession()
        current = (
            sa_signals.current_async_session if flavour.is_async else sa_signals.current_session
        )
        seen: list[object] = []
        with flavour.enter(testing.capture_on_commit(AnySession, execute=True)):
            flavour.aw(AnySession.begin())
            sa_signals.on_commit(lambda: seen.append(current()), AnySession)
            sa_signals.on_commit(lambda: seen.append(AnySession()), AnySession)
        assert len(seen) == 2
        assert seen[0] is not origin
        assert seen[1] is not origin
        assert seen[0] is not seen[1]
        assert AnySession() is origin
        flavour.aw(AnySession.rollback())

    def test_execute_lists_callbacks_registered_by_callbacks(
        self, flavour: Flavour, AnySession: t.Any, recorder: Recorder
    ) -> None:
        """Callbacks registered by executed callbacks run after them and are listed."""
        inner, innermost = recorder.do("inner"), recorder.do("innermost")

        def register(name: str, callback: t.Callable[[], t.Any]) -> t.Callable[[], t.Any]:
            def outer() -> None:
                recorder.done.append(name)
                AnySession.begin()
                sa_signals.on_commit(callback, AnySession)

            async def aouter() -> None:
                await asyncio.sleep(0)
                recorder.done.append(name)
                await AnySession.begin()
                sa_signals.on_commit(callback, AnySession)

            return aouter if flavour.is_async else outer

        second = register("second", innermost)
        first = register("first", second)
        with flavour.enter(testing.capture_on_commit(AnySession, execute=True)) as callbacks:
            flavour.aw(AnySession.begin())
            sa_signals.on_commit(first, AnySession)
            sa_signals.on_commit(inner, AnySession)
        recorder.assert_done(["first", "second", "innermost", "inner"])
        assert callbacks == [first, second, innermost, inner]  # in run order
        flavour.aw(AnySession.rollback())

    def test_execute_keeps_robust_rule(
        self,
        flavour: Flavour,
        any_session: t.Any,
        recorder: Recorder,
        connect: Connector,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A failing robust callback is logged and sent, as itself; the others still run."""
        failures = connect.record(signals.on_commit_failed)
        failing = recorder.fail(1)
        with (
            caplog.at_level(logging.ERROR, logger="sa_signals"),
            flavour.enter(testing.capture_on_commit(any_session, execute=True)),
        ):
            flavour.aw(any_session.begin())
            sa_signals.on_commit(failing, any_session)
            sa_signals.on_commit(recorder.do(2), any_session)
        recorder.assert_done([1, 2])
        assert str(failures[0][1]["exception"]) == "callback 1 failed"
        assert failures[0][1]["callback"] is failing
        assert "fail(1)" in caplog.records[0].getMessage()
        flavour.aw(any_session.rollback())

    def test_execute_keeps_strict_rule(
        self, flavour: Flavour, any_session: t.Any, recorder: Recorder
    ) -> None:
        """A failing strict callback raises at the end of the block, after the others ran."""
        flavour.aw(any_session.begin())
        with (
            pytest.raises(RuntimeError, match="callback 1 failed"),
            flavour.enter(testing.capture_on_commit(any_session, execute=True)),
        ):
            sa_signals.on_commit(recorder.fail(1), any_session, robust=False)
            sa_signals.on_commit(recorder.do(2), any_session)
        recorder.assert_done([1, 2])
        flavour.aw(any_session.commit())
        recorder.assert_done([1, 2])

    def test_execute_runs_nothing_when_block_raises(
        self, flavour: Flavour, any_session: t.Any, recorder: Recorder
    ) -> None:
        """An exception in the block runs nothing and leaves the callbacks queued, and listed."""
        any_session.add(Item(name="a"))
        flavour.aw(any_session.flush())
        callback = recorder.do(1)
        with (
            pytest.raises(ZeroDivisionError),
            flavour.enter(testing.capture_on_commit(any_session, execute=True)) as callbacks,
        ):
            sa_signals.on_commit(callback, any_session)
            _ = 1 / 0
        assert callbacks == [callback]
        recorder.assert_done([])
        flavour.aw(any_session.commit())
        recorder.assert_done([1])

    @pytest.mark.backends("sqlite")
    async def test_execute_on_async_session_needs_async_with(
        self, AsyncScoped: t.Any, recorder: Recorder
    ) -> None:
        """Plain `with` cannot await the callbacks: the error names `async with`, nothing ran."""
        session = AsyncScoped()
        await session.begin()
        callback = recorder.do(1)
        with pytest.raises(TypeError, match="needs `async with`"):  # noqa: SIM117
            with testing.capture_on_commit(session, execute=True) as callbacks:
                sa_signals.on_commit(callback, session)
        assert callbacks == [callback]
        await session.commit()
        recorder.assert_done([1])

    @pytest.mark.parametrize("execute", [False, True])
    def test_captures_in_the_test_suite_pattern(
        self, flavour: Flavour, AnySession: t.Any, recorder: Recorder, execute: bool
    ) -> None:
        """A session joined into the test's outer transaction: the code under test registers
        and commits (a savepoint release); the callbacks are listed and, with execute, run at
        the block's end, once; the outer rollback runs nothing more."""
        maker = AnySession.session_factory
        first, second = recorder.do(1), recorder.do(2)
        connection = flavour.aw(maker.kw["bind"].connect())
        flavour.aw(connection.begin())
        session = maker(bind=connection, join_transaction_mode="create_savepoint")
        try:
            with flavour.enter(testing.capture_on_commit(session, execute=execute)) as callbacks:
                session.add(Item(name="a"))
                sa_signals.on_commit(first, session)
                flavour.aw(session.commit())
                sa_signals.on_commit(second, session)
                flavour.aw(session.commit())
                recorder.assert_done([])
            assert callbacks == [first, second]
            recorder.assert_done([1, 2] if execute else [])
        finally:
            flavour.aw(session.close())
            flavour.aw(connection.rollback())
            flavour.aw(connection.close())
        recorder.assert_done([1, 2] if execute else [])

    @pytest.mark.parametrize("factory", [False, True])
    def test_execute_in_the_test_suite_pattern_runs_what_callbacks_register(
        self, flavour: Flavour, AnySession: t.Any, recorder: Recorder, factory: bool
    ) -> None:
        """Sessions joined into the test's outer transaction, the executed callbacks' own
        included: what those callbacks register, in a transaction or at once, runs right after
        each and is listed, in run order; the outer rollback runs nothing more."""
        connection = flavour.aw(AnySession.session_factory.kw["bind"].connect())
        flavour.aw(connection.begin())
        maker = type(AnySession.session_factory)(
            bind=connection, join_transaction_mode="create_savepoint"
        )
        sa_signals.install(maker)
        leaf, at_once_leaf = recorder.do("leaf"), recorder.do("at once leaf")

        def branch() -> t.Any:
            recorder.done.append("branch")
            distinct = distinct_of(flavour)
            distinct.add(Audit(message="branch"))  # committed when the callback returns
            sa_signals.on_commit(leaf, distinct)
            return asyncio.sleep(0) if flavour.is_async else None

        def at_once() -> None:
            recorder.done.append("at once")
            distinct = distinct_of(flavour)
            sa_signals.on_commit(at_once_leaf, distinct)  # no transaction: waits on the test's

        session = maker()
        try:
            target = maker if factory else session
            with flavour.enter(testing.capture_on_commit(target, execute=True)) as callbacks:
                code_under_test = maker() if factory else session
                code_under_test.add(Item(name="a"))
                sa_signals.on_commit(branch, code_under_test)
                sa_signals.on_commit(at_once, code_under_test)
                flavour.aw(code_under_test.commit())
                flavour.aw(code_under_test.close())
                recorder.assert_done([])
            recorder.assert_done(["branch", "leaf", "at once", "at once leaf"])
            assert callbacks == [branch, leaf, at_once, at_once_leaf]
        finally:
            flavour.aw(session.close())
            flavour.aw(connection.rollback())
            flavour.aw(connection.close())
            sa_signals.uninstall(maker)
        recorder.assert_done(["branch", "leaf", "at once", "at once leaf"])

    def test_execute_in_the_test_suite_pattern_raises_a_strict_failure_of_what_callbacks_register(
        self, flavour: Flavour, AnySession: t.Any, recorder: Recorder
    ) -> None:
        """A strict callback registered by an executed callback, whose session joins the test's
        Connection, raises at the block's end once every other callback ran."""
        connection = flavour.aw(AnySession.session_factory.kw["bind"].connect())
        flavour.aw(connection.begin())
        maker = type(AnySession.session_factory)(
            bind=connection, join_transaction_mode="create_savepoint"
        )
        sa_signals.install(maker)
        failing = recorder.fail("leaf")

        def branch() -> None:
            recorder.done.append("branch")
            distinct = distinct_of(flavour)
            sa_signals.on_commit(failing, distinct, robust=False)

        session = maker()
        try:
            with (
                pytest.raises(RuntimeError, match="callback leaf failed"),
                flavour.enter(testing.capture_on_commit(session, execute=True)) as callbacks,
            ):
                sa_signals.on_commit(branch, session)
                sa_signals.on_commit(recorder.do("last"), session)
                flavour.aw(session.commit())
            recorder.assert_done(["branch", "leaf", "last"])
            assert callbacks[:2] == [branch, failing]
        finally:
            flavour.aw(session.close())
            flavour.aw(connection.rollback())
            flavour.aw(connection.close())
            sa_signals.uninstall(maker)

    @pytest.mark.parametrize("execute", [False, True])
    def test_lists_callbacks_run_at_once(
        self, flavour: Flavour, AnySession: t.Any, recorder: Recorder, execute: bool
    ) -> None:
        """A callback registered while no transaction is open runs at once, and is listed; one
        an executed callback registers so runs right after it, and is listed too."""
        leaf = recorder.do("leaf")

        def branch() -> None:
            recorder.done.append("branch")
            sa_signals.on_commit(leaf, AnySession)  # the distinct session: no transaction

        with flavour.enter(testing.capture_on_commit(AnySession, execute=execute)) as callbacks:
            sa_signals.on_commit(branch, AnySession)
        recorder.assert_done(["branch", "leaf"])
        assert callbacks == [branch, leaf]

    @pytest.mark.parametrize("execute", [False, True])
    def test_a_sessionmaker_captures_every_session_it_makes(
        self, flavour: Flavour, AnySession: t.Any, recorder: Recorder, execute: bool
    ) -> None:
        """Every session the factory makes inside the block is captured: committed ones ran at
        their commit, open ones run at the end with execute; rolled-back ones are not listed."""
        maker = AnySession.session_factory
        committed, rolled_back, open_ = recorder.do(1), recorder.do("x"), recorder.do(2)
        with flavour.enter(testing.capture_on_commit(maker, execute=execute)) as callbacks:
            one, two, three = maker(), maker(), maker()
            one.add(Item(name="a"))
            sa_signals.on_commit(committed, one)
            flavour.aw(one.commit())
            flavour.aw(two.begin())
            sa_signals.on_commit(rolled_back, two)
            flavour.aw(two.rollback())
            flavour.aw(three.begin())
            sa_signals.on_commit(open_, three)
        assert callbacks == [committed, open_]
        recorder.assert_done([1, 2] if execute else [1])
        for session in (one, two, three):
            flavour.aw(session.close())

    @pytest.mark.flavours("sync")
    def test_execute_recursive(self, Session: Scoped) -> None:
        """Django's test_execute_recursive: a callback registering one, both listed and run."""
        ran: list[str] = []

        def leaf() -> None:
            ran.append("leaf")

        def branch() -> None:
            ran.append("branch")
            with Session.begin():
                sa_signals.on_commit(leaf, Session)

        with testing.capture_on_commit(Session, execute=True) as callbacks, Session.begin():
            sa_signals.on_commit(branch, Session)
        assert callbacks == [branch, leaf]
        assert ran == ["branch", "leaf"]

    @pytest.mark.flavours("sync")
    def test_execute_tree(self, Session: Scoped) -> None:
        """Django's test_execute_tree: every node of a callback tree runs once and is listed,
        in run order (a callback's own callbacks run right after it, depth first)."""
        calls: list[str] = []

        def node(name: str, *children: t.Callable[[], None]) -> t.Callable[[], None]:
            def callback() -> None:
                calls.append(name)
                if children:
                    with Session.begin():
                        for child in children:
                            sa_signals.on_commit(child, Session)

            callback.__qualname__ = name
            return callback

        leaf_1, leaf_2, leaf_3 = node("leaf_1"), node("leaf_2"), node("leaf_3")
        branch_2 = node("branch_2", leaf_1, leaf_2)
        branch_1 = node("branch_1", branch_2, leaf_3)
        Session.begin()
        with testing.capture_on_commit(Session, execute=True) as callbacks:
            sa_signals.on_commit(branch_1, Session)
        Session.rollback()
        assert calls == ["branch_1", "branch_2", "leaf_1", "leaf_2", "leaf_3"]
        assert callbacks == [branch_1, branch_2, leaf_1, leaf_2, leaf_3]

    def test_refuses_what_is_no_session_or_factory(self) -> None:
        """Anything but a session or a session factory is refused with what it accepts."""
        with pytest.raises(TypeError, match="needs a Session, a scoped_session or a sessionmaker"):
            testing.capture_on_commit(42)  # type: ignore[arg-type]

    def test_refuses_uninstalled_session(self, engine: sa.Engine) -> None:
        """Capturing on a session that is not installed names install()."""
        with (
            pytest.raises(sa_signals.NotInstalledError, match=r"call sa_signals\.install\(\)"),
            sa_orm.Session(engine) as session,
            testing.capture_on_commit(session),
        ):
            pass


class TestCaptureSignals:
    def test_records_sends_in_order(self, session: sa_orm.Session) -> None:
        """Each send is recorded with its signal, sender and keywords."""
        with testing.capture_signals(signals.post_save, signals.after_flush) as records:
            item = Item(name="a")
            session.add(item)
            session.commit()
        assert [record.signal for record in records] == [signals.post_save, signals.after_flush]
        assert records[0].sender is Item
        assert records[0].kwargs == {"instance": item, "session": session, "created": True}
        assert records[1].sender is session
        assert records[1].kwargs == {}

    def test_records_every_signal_by_default(self, session: sa_orm.Session) -> None:
        """Without arguments, every sa_signals signal is recorded, after_commit included."""
        with testing.capture_signals() as records:
            session.add(Item(name="a"))
            session.commit()
        assert [record.signal.name for record in records] == [
            "pre_init",
            "post_init",
            "before_commit",
            "before_flush",
            "pre_save",
            "post_save",
            "after_flush",
            "before_models_committed",
            "after_commit",
            "models_committed",
            "committed",
        ]

    def test_disconnects_at_end(self, session: sa_orm.Session) -> None:
        """Nothing is recorded after the block, and no receiver is left connected."""
        with testing.capture_signals(signals.after_flush) as records:
            pass
        session.add(Item(name="a"))
        session.commit()
        assert records == []
        assert not signals.after_flush.receivers

    def test_refuses_other_objects(self) -> None:
        """Only sa_signals signals can be captured."""
        with pytest.raises(TypeError, match="takes sa_signals signals, got 'after_flush'"):  # noqa: SIM117
            with testing.capture_signals("after_flush"):  # type: ignore[arg-type]
                pass


class TestRaiseFailures:
    def test_reraises_robust_failure_with_its_traceback(
        self, session: sa_orm.Session, recorder: Recorder, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A callback failure that was only logged is raised at the end, traceback intact."""
        failing = recorder.fail(1)
        with pytest.raises(RuntimeError, match="callback 1 failed") as info:  # noqa: SIM117
            with caplog.at_level(logging.CRITICAL), testing.raise_failures() as failures:
                session.add(Item(name="a"))
                sa_signals.on_commit(failing, session)
                sa_signals.on_commit(recorder.do(2), session)
                session.commit()
                recorder.assert_done([1, 2])
                assert len(failures) == 1
        frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
        assert frames[-1] == "callback"

    def test_reraises_receiver_failure(
        self, session: sa_orm.Session, connect: Connector, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A failing robust receiver is raised too."""

        def receiver(sender: object, **kwargs: object) -> None:
            raise LookupError("receiver failed")

        connect(signals.after_flush, receiver)
        with (
            pytest.raises(LookupError, match="receiver failed"),
            caplog.at_level(logging.CRITICAL),
            testing.raise_failures(),
        ):
            session.add(Item(name="a"))
            session.commit()

    def test_block_exception_wins(
        self, session: sa_orm.Session, recorder: Recorder, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The block's own exception propagates rather than a recorded failure."""
        with (
            pytest.raises(ZeroDivisionError),
            caplog.at_level(logging.CRITICAL),
            testing.raise_failures(),
        ):
            sa_signals.on_commit(recorder.fail(1), session)  # outside a transaction: at once
            _ = 1 / 0
        assert not signals.on_commit_failed.receivers

    def test_quiet_without_failures(self, session: sa_orm.Session, recorder: Recorder) -> None:
        """Nothing is raised when every callback succeeded."""
        with testing.raise_failures() as failures:
            sa_signals.on_commit(recorder.do(1), session)
        assert failures == []
        recorder.assert_done([1])


class TestTransactional:
    def test_commit_runs_callbacks_and_rolls_back_at_end(
        self, flavour: Flavour, AnySession: t.Any, engine: sa.Engine, recorder: Recorder
    ) -> None:
        """commit() runs the callbacks, which see the test's data; nothing is left afterwards."""
        seen: list[list[str]] = []

        def read_and_write() -> None:
            seen.append(list(flavour.aw(AnySession.scalars(sa.select(Item.name)))))
            AnySession.add(Audit(message="saw a"))

        with flavour.enter(testing.transactional(AnySession)):
            AnySession.add(Item(name="a"))
            sa_signals.on_commit(read_and_write, AnySession)
            sa_signals.on_commit(recorder.do(1), AnySession)
            flavour.aw(AnySession.commit())
            recorder.assert_done([1])
            assert seen == [["a"]]
            assert list(flavour.aw(AnySession.scalars(sa.select(Audit.message)))) == ["saw a"]
        assert count(engine, Item) == 0
        assert count(engine, Audit) == 0

    def test_commit_signals_fire(
        self, flavour: Flavour, AnySession: t.Any, connect: Connector
    ) -> None:
        """before_commit and after_commit are sent once per outermost commit, as in production."""
        before = connect.record(signals.before_commit)
        after = connect.record(signals.after_commit)
        rolled_back = connect.record(signals.after_rollback)
        with flavour.enter(testing.transactional(AnySession)):
            session = AnySession()
            session.add(Item(name="a"))
            with flavour.nested(session):
                session.add(Item(name="b"))
            flavour.aw(session.commit())
            session.add(Item(name="c"))
            flavour.aw(session.rollback())
        assert [sender for sender, _ in before] == [session]
        assert [sender for sender, _ in after] == [session]
        assert [sender for sender, _ in rolled_back] == [session]

    def test_savepoint_rules_still_apply(
        self, flavour: Flavour, AnySession: t.Any, recorder: Recorder
    ) -> None:
        """A rolled-back savepoint or transaction still drops its callbacks."""
        with flavour.enter(testing.transactional(AnySession)):
            AnySession.add(Item(name="a"))
            flavour.aw(AnySession.flush())
            sa_signals.on_commit(recorder.do(1), AnySession)
            savepoint = flavour.aw(AnySession.begin_nested())
            sa_signals.on_commit(recorder.do(2), AnySession)
            flavour.aw(savepoint.rollback())
            flavour.aw(AnySession.commit())
            sa_signals.on_commit(recorder.do(3), AnySession)  # no transaction: at once
            flavour.aw(AnySession.begin())
            sa_signals.on_commit(recorder.do(4), AnySession)
            flavour.aw(AnySession.rollback())
        recorder.assert_done([1, 3])

    def test_callbacks_registering_callbacks(
        self, flavour: Flavour, AnySession: t.Any, recorder: Recorder
    ) -> None:
        """A callback's own commit counts too: what it registers runs after it."""

        def outer() -> None:
            AnySession.add(Audit(message="outer"))
            sa_signals.on_commit(recorder.do("inner"), AnySession)
            recorder.done.append("outer")

        with flavour.enter(testing.transactional(AnySession)):
            AnySession.add(Item(name="a"))
            sa_signals.on_commit(outer, AnySession)
            flavour.aw(AnySession.commit())
            recorder.assert_done(["outer", "inner"])
            assert list(flavour.aw(AnySession.scalars(sa.select(Audit.message)))) == ["outer"]

    def test_sessionmaker_install(self, engine: sa.Engine) -> None:
        """With a sessionmaker install the distinct session joins the test's Connection."""
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)
        seen: list[tuple[object, int]] = []

        def callback() -> None:
            session = sa_signals.current_session()
            seen.append((session.connection(), session.scalar(sa.select(sa.func.count(Item.id)))))

        try:
            with testing.transactional(maker) as connection, maker() as session:
                session.add(Item(name="a"))
                sa_signals.on_commit(callback, session)
                session.commit()
                assert seen == [(connection, 1)]
        finally:
            sa_signals.uninstall(maker)
        assert count(engine, Item) == 0

    def test_session_class_install(self, engine: sa.Engine, recorder: Recorder) -> None:
        """A Session subclass joined to the test's Connection gets a distinct session there."""

        class MySession(sa_orm.Session):
            pass

        sa_signals.install(MySession)
        seen: list[int] = []
        try:
            maker = sa_orm.sessionmaker(engine, class_=MySession)
            with testing.transactional(maker), maker() as session:
                session.add(Item(name="a"))
                sa_signals.on_commit(
                    lambda: seen.append(
                        sa_signals.current_session().scalar(sa.select(sa.func.count(Item.id))) or 0
                    ),
                    session,
                )
                session.commit()
        finally:
            sa_signals.uninstall(MySession)
        assert seen == [1]

    def test_capture_inside(self, flavour: Flavour, AnySession: t.Any, engine: sa.Engine) -> None:
        """capture_on_commit(execute=True) runs callbacks that join the test's Connection."""
        seen: list[list[str]] = []

        def read() -> None:
            seen.append(list(flavour.aw(AnySession.scalars(sa.select(Item.name)))))
            AnySession.add(Audit(message="read"))

        with (
            flavour.enter(testing.transactional(AnySession)),
            flavour.enter(testing.capture_on_commit(AnySession, execute=True)) as callbacks,
        ):
            AnySession.add(Item(name="a"))
            flavour.aw(AnySession.flush())
            sa_signals.on_commit(read, AnySession)
        assert seen == [["a"]]
        assert len(callbacks) == 1
        assert count(engine, Audit) == 0

    def test_restores_the_factory(
        self, flavour: Flavour, AnySession: t.Any, engine: sa.Engine
    ) -> None:
        """The factory's configuration comes back, and the connection is unmarked and closed."""
        maker = AnySession.session_factory
        before = dict(maker.kw)
        with flavour.enter(testing.transactional(AnySession)) as connection:
            assert AnySession().bind is connection
            marked = connection.sync_connection if flavour.is_async else connection
            assert marked.__dict__[TRANSACTIONAL_ATTR]
        assert maker.kw == before
        assert not AnySession.registry.has()
        assert connection.closed
        assert TRANSACTIONAL_ATTR not in marked.__dict__
        assert AnySession().bind is not connection

    def test_given_connection_stays_with_caller(
        self, Session: Scoped, engine: sa.Engine, recorder: Recorder
    ) -> None:
        """A Connection given as bind keeps its transaction; the caller rolls it back."""
        with engine.connect() as connection:
            with testing.transactional(Session, bind=connection) as joined:
                assert joined is connection
                Session.add(Item(name="a"))
                sa_signals.on_commit(recorder.do(1), Session)
                Session.commit()
            recorder.assert_done([1])
            assert connection.in_transaction()
            assert not connection.closed
            connection.rollback()
        assert count(engine, Item) == 0

    def test_given_connection_keeps_its_open_transaction(
        self, Session: Scoped, engine: sa.Engine
    ) -> None:
        """A Connection already in a transaction is joined as it is, not begun again."""
        with engine.connect() as connection:
            outer = connection.begin()
            with testing.transactional(Session, bind=connection):
                Session.add(Item(name="a"))
                Session.commit()
            assert connection.get_transaction() is outer
            outer.rollback()
        assert count(engine, Item) == 0

    def test_unmarked_connection_still_runs_nothing(
        self, Session: Scoped, engine: sa.Engine, recorder: Recorder
    ) -> None:
        """Outside the mode, a session joined into an outer transaction runs nothing: its
        callbacks wait for the Connection, whose rollback drops them."""
        with testing.transactional(Session):
            pass
        with engine.connect() as connection:
            outer = connection.begin()
            session = Session.session_factory(
                bind=connection, join_transaction_mode="create_savepoint"
            )
            session.add(Item(name="a"))
            sa_signals.on_commit(recorder.do(1), session)
            session.commit()
            session.close()
            outer.rollback()
        recorder.assert_done([])

    def test_refuses_bad_factories(self, engine: sa.Engine) -> None:
        """Misuse fails early, each error naming the fix."""
        with pytest.raises(TypeError, match="needs a sessionmaker or a scoped_session"):  # noqa: SIM117
            with testing.transactional(sa_orm.Session):  # type: ignore[arg-type]
                pass
        with pytest.raises(sa_signals.NotInstalledError, match=r"call sa_signals\.install\(\)"):  # noqa: SIM117
            with testing.transactional(sa_orm.sessionmaker(engine)):
                pass
        unbound = sa_orm.sessionmaker()
        sa_signals.install(unbound)
        try:
            with pytest.raises(TypeError, match="configure the sessionmaker with bind="):  # noqa: SIM117
                with testing.transactional(unbound):
                    pass
        finally:
            sa_signals.uninstall(unbound)

    def test_refuses_scoped_session_in_transaction(
        self, flavour: Flavour, AnySession: t.Any
    ) -> None:
        """A current session already in a transaction would escape the mode: refused."""
        flavour.aw(AnySession.begin())
        with pytest.raises(sa_signals.ScopeError, match="remove"):  # noqa: SIM117
            with flavour.enter(testing.transactional(AnySession)):
                pass
        flavour.aw(AnySession.rollback())

    def test_replaces_idle_scoped_session(self, flavour: Flavour, AnySession: t.Any) -> None:
        """An idle current session is removed, so the next one is bound to the Connection."""
        idle = AnySession()
        with flavour.enter(testing.transactional(AnySession)) as connection:
            assert AnySession() is not idle
            assert AnySession().bind is connection


@pytest.mark.backends("sqlite", "postgresql")
class TestSimulatedCommit:
    """The outermost commit in the mode checks the deferred constraints COMMIT would check."""

    def test_deferred_violation_fails_the_commit(
        self, flavour: Flavour, AnySession: t.Any, engine: sa.Engine, recorder: Recorder
    ) -> None:
        """A row breaking a deferred foreign key fails commit() and runs no callback."""
        with flavour.enter(testing.transactional(AnySession)):
            session = AnySession()
            flavour.aw(session.execute(orders.insert().values(id=1, customer_id=404)))
            sa_signals.on_commit(recorder.do("order"), session)
            with pytest.raises(sa.exc.IntegrityError, match=r"(?i)foreign key"):
                flavour.aw(session.commit())
            flavour.aw(session.rollback())
            recorder.assert_done([])
            assert flavour.aw(session.scalar(sa.select(sa.func.count()).select_from(orders))) == 0

    @pytest.mark.parametrize("ending", ["rollback", "close"])
    def test_the_test_goes_on_after_a_failed_commit(
        self, flavour: Flavour, AnySession: t.Any, recorder: Recorder, ending: str
    ) -> None:
        """Rolled back or closed after the failure (as a request's teardown does), the session
        and the test's transaction work on: the next commit succeeds."""
        with flavour.enter(testing.transactional(AnySession)):
            session = AnySession()
            flavour.aw(session.execute(orders.insert().values(id=1, customer_id=404)))
            with pytest.raises(sa.exc.IntegrityError):
                flavour.aw(session.commit())
            flavour.aw(getattr(session, ending)())
            flavour.aw(session.execute(customers.insert().values(id=1)))
            flavour.aw(session.execute(orders.insert().values(id=1, customer_id=1)))
            sa_signals.on_commit(recorder.do("order"), session)
            flavour.aw(session.commit())
            recorder.assert_done(["order"])

    def test_constraints_stay_deferred_until_the_commit(
        self, flavour: Flavour, AnySession: t.Any, recorder: Recorder
    ) -> None:
        """A row may break a deferred key until its commit, in every transaction of the test."""
        with flavour.enter(testing.transactional(AnySession)):
            for number in (1, 2):
                session = AnySession()
                flavour.aw(session.execute(orders.insert().values(id=number, customer_id=number)))
                flavour.aw(session.execute(customers.insert().values(id=number)))
                sa_signals.on_commit(recorder.do(number), session)
                flavour.aw(session.commit())
        recorder.assert_done([1, 2])

    def test_savepoint_release_checks_nothing(
        self, flavour: Flavour, AnySession: t.Any, recorder: Recorder
    ) -> None:
        """A savepoint release checks nothing, as in production; the commit after it does."""
        with flavour.enter(testing.transactional(AnySession)):
            session = AnySession()
            with flavour.nested(session):
                flavour.aw(session.execute(orders.insert().values(id=1, customer_id=404)))
                sa_signals.on_commit(recorder.do("order"), session)
            with pytest.raises(sa.exc.IntegrityError):
                flavour.aw(session.commit())
            flavour.aw(session.rollback())
        recorder.assert_done([])

    def test_a_callbacks_commit_is_checked_too(
        self, flavour: Flavour, AnySession: t.Any, recorder: Recorder
    ) -> None:
        """The commit of a callback's distinct session is checked as its real COMMIT would be."""

        def write_an_orphan() -> None:
            flavour.aw(AnySession.execute(orders.insert().values(id=2, customer_id=404)))
            sa_signals.on_commit(recorder.do("never"), AnySession)

        with flavour.enter(testing.transactional(AnySession)):
            AnySession.add(Item(name="a"))
            sa_signals.on_commit(write_an_orphan, AnySession)
            with testing.capture_signals(signals.on_commit_failed) as failures:
                flavour.aw(AnySession.commit())
            [failure] = failures
            assert isinstance(failure.kwargs["exception"], sa.exc.IntegrityError)
            count_orders = sa.select(sa.func.count()).select_from(orders)
            assert flavour.aw(AnySession.scalar(count_orders)) == 0
        recorder.assert_done([])

    @pytest.mark.backends("sqlite")
    @pytest.mark.flavours("sync")
    def test_sqlite_defer_foreign_keys_pragma(self, flavour: Flavour, Session: Scoped) -> None:
        """With PRAGMA defer_foreign_keys on, every foreign key is checked at the commit, which
        turns the pragma off as COMMIT does."""
        with testing.transactional(Session) as connection:
            Session.execute(sa.text("PRAGMA defer_foreign_keys = ON"))
            Session.add(Book(title="orphan", author_id=404))
            Session.flush()
            with pytest.raises(sa.exc.IntegrityError, match="FOREIGN KEY constraint failed"):
                Session.commit()
            Session.rollback()
            assert connection.exec_driver_sql("PRAGMA defer_foreign_keys").scalar() == 0


class TestAsyncTransactional:
    async def test_async_sessionmaker_install(
        self, aengine: sa_asyncio.AsyncEngine, engine: sa.Engine
    ) -> None:
        """With an async_sessionmaker the distinct AsyncSession joins the test's connection."""
        maker = sa_asyncio.async_sessionmaker(aengine)
        sa_signals.install(maker)
        seen: list[tuple[object, int]] = []

        async def callback() -> None:
            session = sa_signals.current_async_session()
            connection = await session.connection()
            seen.append((connection, await session.scalar(sa.select(sa.func.count(Item.id)))))

        try:
            async with testing.transactional(maker) as connection, maker() as session:
                session.add(Item(name="a"))
                sa_signals.on_commit(callback, session)
                await session.commit()
                assert seen == [(connection, 1)]
        finally:
            sa_signals.uninstall(maker)
        assert count(engine, Item) == 0

    async def test_given_connection_stays_with_caller(
        self, AsyncScoped: t.Any, aengine: sa_asyncio.AsyncEngine, engine: sa.Engine
    ) -> None:
        """An AsyncConnection given as bind keeps its transaction; the caller rolls it back."""
        ran: list[int] = []
        async with aengine.connect() as connection:
            async with testing.transactional(AsyncScoped, bind=connection) as joined:
                assert joined is connection
                AsyncScoped.add(Item(name="a"))
                sa_signals.on_commit(lambda: ran.append(1), AsyncScoped)
                await AsyncScoped.commit()
            assert ran == [1]
            assert connection.in_transaction()
            await connection.rollback()
        assert count(engine, Item) == 0

    async def test_closes_sessions_of_other_tasks(
        self, AsyncScoped: t.Any, engine: sa.Engine
    ) -> None:
        """Scoped sessions made in other tasks in the mode are closed and removed at its end."""

        async def elsewhere() -> sa_asyncio.AsyncSession:
            session: sa_asyncio.AsyncSession = AsyncScoped()
            session.add(Item(name="a"))
            await session.flush()
            return session

        async with testing.transactional(AsyncScoped):
            other = await asyncio.create_task(elsewhere())
            assert other.in_transaction()
        assert not other.in_transaction()
        assert AsyncScoped.registry.registry == {}
        assert count(engine, Item) == 0

    @pytest.mark.backends("sqlite")
    async def test_refuses_the_wrong_with(self, AsyncScoped: t.Any, Session: Scoped) -> None:
        """An async factory needs `async with`, a sync one `with`; each error says so."""
        with pytest.raises(TypeError, match="async factory needs `async with`"):  # noqa: SIM117
            with testing.transactional(AsyncScoped):
                pass
        with pytest.raises(TypeError, match="synchronous factory needs `with`"):
            async with testing.transactional(Session):
                pass

    @pytest.mark.backends("sqlite")
    async def test_refuses_bad_async_factories(self, aengine: sa_asyncio.AsyncEngine) -> None:
        """An async factory not installed, or without an engine, fails early naming the fix."""
        with pytest.raises(sa_signals.NotInstalledError, match=r"call sa_signals\.install\(\)"):
            async with testing.transactional(sa_asyncio.async_sessionmaker(aengine)):
                pass
        unbound = sa_asyncio.async_sessionmaker()
        sa_signals.install(unbound)
        try:
            with pytest.raises(TypeError, match="configure the async_sessionmaker with bind="):
                async with testing.transactional(unbound):
                    pass
        finally:
            sa_signals.uninstall(unbound)


class TestDocs:
    def test_examples_in_docs_are_the_tested_files(self) -> None:
        """Every example shown in docs/testing.md is found verbatim in the file it names."""
        root = pathlib.Path(__file__).parent.parent
        text = (root / "docs" / "testing.md").read_text()
        blocks = re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```", text, re.DOTALL)
        assert {path for path, _ in blocks} == {
            "examples/testing/shop.py",
            "examples/testing/conftest.py",
            "examples/testing/test_shop.py",
            "examples/testing/test_shop_unittest.py",
            "examples/testing_async/shop.py",
            "examples/testing_async/conftest.py",
            "examples/testing_async/test_shop.py",
            "examples/testing_async/test_shop_unittest.py",
            "examples/testing_flask/conftest.py",
            "examples/testing_flask/test_flask_orders.py",
            "examples/testing_starlette/conftest.py",
            "examples/testing_starlette/test_fastapi_orders.py",
        }
        for path, block in blocks:
            assert block in (root / path).read_text(), path
        ini = (root / "examples" / "testing_async" / "pytest.ini").read_text()
        assert f"```ini\n{ini}```" in text
