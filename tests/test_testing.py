"""sa_signals.testing: capturing callbacks and signals, and the transactional test mode."""

from __future__ import annotations

import logging
import pathlib
import re
import traceback
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals
from sa_signals import testing
from tests.models import Audit
from tests.models import Item

if t.TYPE_CHECKING:
    from tests.conftest import Connector
    from tests.conftest import Recorder

Scoped = sa_orm.scoped_session[sa_orm.Session]


def count(engine: sa.Engine, model: type[t.Any]) -> int:
    with engine.connect() as connection:
        return connection.scalar(sa.select(sa.func.count()).select_from(model)) or 0


class TestCaptureOnCommit:
    def test_collects_callbacks_registered_in_block(
        self, session: sa_orm.Session, recorder: Recorder
    ) -> None:
        """Only the block's callbacks are listed, at its end; they stay queued for the commit."""
        session.add(Item(name="a"))
        before, first, second = recorder.do(0), recorder.do(1), recorder.do(2)
        sa_signals.on_commit(before, session)
        with testing.capture_on_commit(session) as callbacks:
            sa_signals.on_commit(first, session)
            sa_signals.on_commit(second, session)
            assert callbacks == []
        assert callbacks == [first, second]
        recorder.assert_done([])
        session.commit()
        recorder.assert_done([0, 1, 2])

    def test_leaves_out_rolled_back_savepoint(
        self, session: sa_orm.Session, recorder: Recorder
    ) -> None:
        """Callbacks of a savepoint rolled back inside the block would never run: not listed."""
        kept, dropped = recorder.do(1), recorder.do(2)
        session.begin()
        with testing.capture_on_commit(session) as callbacks:
            sa_signals.on_commit(kept, session)
            savepoint = session.begin_nested()
            sa_signals.on_commit(dropped, session)
            savepoint.rollback()
        assert callbacks == [kept]

    def test_accepts_the_scoped_session(self, Session: Scoped, recorder: Recorder) -> None:
        """A scoped_session stands for its current session."""
        callback = recorder.do(1)
        with testing.capture_on_commit(Session) as callbacks:
            Session.add(Item(name="a"))
            sa_signals.on_commit(callback, Session)
        assert callbacks == [callback]

    def test_execute_runs_at_end_and_dequeues(
        self, session: sa_orm.Session, recorder: Recorder
    ) -> None:
        """execute=True runs the block's callbacks at its end, and a commit does not rerun them."""
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do(0), session)
        with testing.capture_on_commit(session, execute=True):
            sa_signals.on_commit(recorder.do(1), session)
            sa_signals.on_commit(recorder.do(2), session)
            recorder.assert_done([])
        recorder.assert_done([1, 2])
        session.commit()
        recorder.assert_done([1, 2, 0])

    def test_execute_runs_each_in_a_distinct_session(self, Session: Scoped) -> None:
        """Executed callbacks get their own session, as after a commit."""
        origin = Session()
        seen: list[sa_orm.Session] = []
        with testing.capture_on_commit(Session, execute=True):
            Session.add(Item(name="a"))
            sa_signals.on_commit(lambda: seen.append(sa_signals.current_session()), Session)
            sa_signals.on_commit(lambda: seen.append(Session()), Session)
        assert len(seen) == 2
        assert seen[0] is not origin
        assert seen[1] is not origin
        assert seen[0] is not seen[1]
        assert Session() is origin

    def test_execute_lists_callbacks_registered_by_callbacks(
        self, Session: Scoped, recorder: Recorder
    ) -> None:
        """Callbacks registered by executed callbacks run after them and are listed."""
        inner, innermost = recorder.do("inner"), recorder.do("innermost")

        def register(name: str, callback: t.Callable[[], None]) -> t.Callable[[], None]:
            def outer() -> None:
                recorder.done.append(name)
                Session.begin()
                sa_signals.on_commit(callback, Session)

            return outer

        first = register("first", register("second", innermost))
        with testing.capture_on_commit(Session, execute=True) as callbacks:
            Session.begin()
            sa_signals.on_commit(first, Session)
            sa_signals.on_commit(inner, Session)
        recorder.assert_done(["first", "second", "innermost", "inner"])
        assert len(callbacks) == 4
        assert callbacks[:2] == [first, inner]
        assert callbacks[3] is innermost

    def test_execute_keeps_robust_rule(
        self,
        session: sa_orm.Session,
        recorder: Recorder,
        connect: Connector,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A failing robust callback is logged and sent; the others still run."""
        failures = connect.record(signals.on_commit_failed)
        with (
            caplog.at_level(logging.ERROR, logger="sa_signals"),
            testing.capture_on_commit(session, execute=True),
        ):
            session.begin()
            sa_signals.on_commit(recorder.fail(1), session)
            sa_signals.on_commit(recorder.do(2), session)
        recorder.assert_done([1, 2])
        assert str(failures[0][1]["exception"]) == "callback 1 failed"
        assert "fail(1)" in caplog.records[0].getMessage()

    def test_execute_keeps_strict_rule(self, session: sa_orm.Session, recorder: Recorder) -> None:
        """A failing strict callback raises at the end of the block, after the others ran."""
        session.begin()
        with (
            pytest.raises(RuntimeError, match="callback 1 failed"),
            testing.capture_on_commit(session, execute=True),
        ):
            sa_signals.on_commit(recorder.fail(1), session, robust=False)
            sa_signals.on_commit(recorder.do(2), session)
        recorder.assert_done([1, 2])
        session.commit()
        recorder.assert_done([1, 2])

    def test_execute_runs_nothing_when_block_raises(
        self, session: sa_orm.Session, recorder: Recorder
    ) -> None:
        """An exception in the block runs nothing and leaves the callbacks queued, and listed."""
        session.add(Item(name="a"))
        callback = recorder.do(1)
        with (
            pytest.raises(ZeroDivisionError),
            testing.capture_on_commit(session, execute=True) as callbacks,
        ):
            sa_signals.on_commit(callback, session)
            _ = 1 / 0
        assert callbacks == [callback]
        recorder.assert_done([])
        session.commit()
        recorder.assert_done([1])

    def test_refuses_a_sessionmaker(self, Session: Scoped) -> None:
        """A sessionmaker has no one session: the error says to pass the session."""
        with (
            pytest.raises(TypeError, match="for a sessionmaker, pass the session it made"),
            testing.capture_on_commit(Session.session_factory),  # type: ignore[arg-type]
        ):
            pass

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
        self, Session: Scoped, engine: sa.Engine, recorder: Recorder
    ) -> None:
        """commit() runs the callbacks, which see the test's data; nothing is left afterwards."""
        seen: list[list[str]] = []

        def read_and_write() -> None:
            seen.append(list(Session.scalars(sa.select(Item.name))))
            Session.add(Audit(message="saw a"))

        with testing.transactional(Session):
            Session.add(Item(name="a"))
            sa_signals.on_commit(read_and_write, Session)
            sa_signals.on_commit(recorder.do(1), Session)
            Session.commit()
            recorder.assert_done([1])
            assert seen == [["a"]]
            assert Session.scalars(sa.select(Audit.message)).all() == ["saw a"]
        assert count(engine, Item) == 0
        assert count(engine, Audit) == 0

    def test_commit_signals_fire(self, Session: Scoped, connect: Connector) -> None:
        """before_commit and after_commit are sent once per outermost commit, as in production."""
        before = connect.record(signals.before_commit)
        after = connect.record(signals.after_commit)
        rolled_back = connect.record(signals.after_rollback)
        with testing.transactional(Session):
            session = Session()
            session.add(Item(name="a"))
            with session.begin_nested():
                session.add(Item(name="b"))
            session.commit()
            session.add(Item(name="c"))
            session.rollback()
        assert [sender for sender, _ in before] == [session]
        assert [sender for sender, _ in after] == [session]
        assert [sender for sender, _ in rolled_back] == [session]

    def test_savepoint_rules_still_apply(self, Session: Scoped, recorder: Recorder) -> None:
        """A rolled-back savepoint or transaction still drops its callbacks."""
        with testing.transactional(Session):
            Session.add(Item(name="a"))
            sa_signals.on_commit(recorder.do(1), Session)
            savepoint = Session.begin_nested()
            sa_signals.on_commit(recorder.do(2), Session)
            savepoint.rollback()
            Session.commit()
            sa_signals.on_commit(recorder.do(3), Session)  # no transaction: at once
            Session.begin()
            sa_signals.on_commit(recorder.do(4), Session)
            Session.rollback()
        recorder.assert_done([1, 3])

    def test_callbacks_registering_callbacks(self, Session: Scoped, recorder: Recorder) -> None:
        """A callback's own commit counts too: what it registers runs after it."""

        def outer() -> None:
            Session.add(Audit(message="outer"))
            sa_signals.on_commit(recorder.do("inner"), Session)
            recorder.done.append("outer")

        with testing.transactional(Session):
            Session.add(Item(name="a"))
            sa_signals.on_commit(outer, Session)
            Session.commit()
            recorder.assert_done(["outer", "inner"])
            assert Session.scalars(sa.select(Audit.message)).all() == ["outer"]

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

    def test_capture_inside(self, Session: Scoped, recorder: Recorder) -> None:
        """capture_on_commit(execute=True) runs callbacks that join the test's Connection."""
        seen: list[list[str]] = []
        with (
            testing.transactional(Session),
            testing.capture_on_commit(Session, execute=True) as callbacks,
        ):
            Session.add(Item(name="a"))
            Session.flush()
            sa_signals.on_commit(
                lambda: seen.append(list(Session.scalars(sa.select(Item.name)))), Session
            )
        assert seen == [["a"]]
        assert len(callbacks) == 1

    def test_restores_the_factory(self, Session: Scoped, engine: sa.Engine) -> None:
        """The factory's configuration comes back, and the connection is unmarked and closed."""
        maker = Session.session_factory
        before = dict(maker.kw)
        with testing.transactional(Session) as connection:
            assert Session().get_bind() is connection
        assert maker.kw == before
        assert not Session.registry.has()
        assert connection.closed
        assert Session().get_bind() is engine

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
        """Outside the mode, a session joined into an outer transaction runs nothing."""
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

    def test_refuses_scoped_session_in_transaction(self, Session: Scoped) -> None:
        """A current session already in a transaction would escape the mode: refused."""
        Session.begin()
        with pytest.raises(sa_signals.ScopeError, match="call remove"):  # noqa: SIM117
            with testing.transactional(Session):
                pass

    def test_replaces_idle_scoped_session(self, Session: Scoped) -> None:
        """An idle current session is removed, so the next one is bound to the Connection."""
        idle = Session()
        with testing.transactional(Session) as connection:
            assert Session() is not idle
            assert Session().get_bind() is connection


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
        }
        for path, block in blocks:
            assert block in (root / path).read_text(), path
