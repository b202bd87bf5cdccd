"""Session-level and model-level signals, on every configured backend."""

from __future__ import annotations

import asyncio
import functools
import logging
import types
import typing as t
import warnings

import blinker
import packaging.version
import pytest
import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import _dispatch
from sa_signals import signals
from sa_signals._core import bridge as _bridge
from sa_signals._core import instances as _instances
from sa_signals._core import state as _state
from sa_signals._core.state import STATE_ATTR
from tests.conftest import count
from tests.models import Animal
from tests.models import Audit
from tests.models import Author
from tests.models import Base
from tests.models import Book
from tests.models import Cat
from tests.models import Dog
from tests.models import Item
from tests.models import Page

if t.TYPE_CHECKING:
    from tests.conftest import Connector
    from tests.conftest import Flavour
    from tests.conftest import Recorder

Scoped = sa_orm.scoped_session[sa_orm.Session]


class TestSessionSignals:
    def test_flush_signals_sent_with_session_as_sender(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """before_flush and after_flush are sent for each flush, sender = the session."""
        before = connect.record(signals.before_flush)
        after = connect.record(signals.after_flush)
        session.add(Item(name="a"))
        session.flush()
        session.add(Item(name="b"))
        session.commit()
        assert [sender for sender, _ in before] == [session, session]
        assert [sender for sender, _ in after] == [session, session]

    def test_commit_signals_only_for_outermost_transaction(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A SAVEPOINT release or rollback sends no commit or rollback signal."""
        before = connect.record(signals.before_commit)
        after = connect.record(signals.after_commit)
        rollbacks = connect.record(signals.after_rollback)
        session.add(Item(name="a"))
        with session.begin_nested():
            session.add(Item(name="b"))
        savepoint = session.begin_nested()
        savepoint.rollback()
        assert (before, after, rollbacks) == ([], [], [])
        session.commit()
        assert [sender for sender, _ in before] == [session]
        assert [sender for sender, _ in after] == [session]
        assert rollbacks == []

    def test_before_commit_receiver_can_write(
        self, session: sa_orm.Session, connect: Connector, engine: sa.Engine
    ) -> None:
        """Writes made by a before_commit receiver are part of the commit."""

        def add_audit(sender: sa_orm.Session, **kwargs: object) -> None:
            sender.add(Audit(message="before commit"))

        connect(signals.before_commit, add_audit)
        session.add(Item(name="a"))
        session.commit()
        assert count(engine, Audit) == 1

    def test_after_commit_runs_in_distinct_session_after_commit(
        self, Session: Scoped, connect: Connector, engine: sa.Engine
    ) -> None:
        """after_commit receivers see the committed data and write in a distinct session."""
        seen: list[tuple[bool, int]] = []

        def receiver(sender: sa_orm.Session, **kwargs: object) -> None:
            distinct = Session()
            seen.append((distinct is sender, distinct.scalar(sa.select(sa.func.count(Item.id)))))
            distinct.add(Audit(message="after commit"))

        connect(signals.after_commit, receiver)
        Session.add(Item(name="a"))
        Session.commit()
        assert seen == [(False, 1)]
        assert count(engine, Audit) == 1

    def test_after_commit_receiver_writing_does_not_loop(
        self, Session: Scoped, connect: Connector, engine: sa.Engine
    ) -> None:
        """The distinct session's own commit sends no after_commit: no loop."""
        calls = connect.record(signals.after_commit)
        connect(signals.after_commit, lambda sender, **kw: Session.add(Audit(message="x")))
        Session.add(Item(name="a"))
        Session.commit()
        assert len(calls) == 1
        assert count(engine, Audit) == 1

    def test_after_commit_receivers_before_on_commit_callbacks(
        self, session: sa_orm.Session, connect: Connector, recorder: Recorder
    ) -> None:
        """after_commit receivers run first, then on_commit callbacks in registration order."""
        connect(signals.after_commit, lambda sender, **kw: recorder.done.append("signal"))
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do("callback"), session)
        session.commit()
        recorder.assert_done(["signal", "callback"])

    @pytest.mark.parametrize("end", ["rollback", "close", "reset"])
    def test_after_rollback_when_outermost_ends_without_commit(
        self, session: sa_orm.Session, connect: Connector, end: str
    ) -> None:
        """after_rollback is sent for rollback(), and for close()/reset() with a transaction."""
        rollbacks = connect.record(signals.after_rollback)
        session.add(Item(name="a"))
        session.flush()
        getattr(session, end)()
        assert [sender for sender, _ in rollbacks] == [session]

    def test_no_after_commit_in_test_savepoint_pattern(
        self, engine: sa.Engine, connect: Connector
    ) -> None:
        """A session joined into an outer transaction commits nothing: no after_commit."""
        after = connect.record(signals.after_commit)
        maker = sa_orm.sessionmaker(join_transaction_mode="create_savepoint")
        sa_signals.install(maker)
        try:
            with engine.connect() as connection:
                outer = connection.begin()
                session = maker(bind=connection)
                session.add(Item(name="a"))
                session.commit()
                session.close()
                outer.rollback()
        finally:
            sa_signals.uninstall(maker)
        assert after == []

    def test_failing_receiver_reported_and_commit_proceeds(
        self,
        session: sa_orm.Session,
        connect: Connector,
        engine: sa.Engine,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A receiver connected robustly that raises is logged and reported; the others run;
        data commits."""
        failures = connect.record(signals.receiver_failed)
        calls: list[str] = []

        def broken(sender: object, **kwargs: object) -> None:
            raise RuntimeError("broken receiver")

        connect(signals.before_commit, broken, robust=True)
        connect(signals.before_commit, lambda sender, **kw: calls.append("second"))
        session.add(Item(name="a"))
        with caplog.at_level(logging.ERROR, logger="sa_signals"):
            session.commit()
        assert calls == ["second"]
        assert count(engine, Item) == 1
        [(sender, kwargs)] = failures
        assert sender is session
        assert kwargs["signal"] is signals.before_commit
        assert kwargs["receiver"] is broken
        assert str(kwargs["exception"]) == "broken receiver"
        assert "broken" in caplog.text
        assert "before_commit" in caplog.text

    def test_failing_after_commit_receiver_reported(
        self, session: sa_orm.Session, connect: Connector, recorder: Recorder
    ) -> None:
        """A failing after_commit receiver does not stop the callbacks."""
        failures = connect.record(signals.receiver_failed)

        def broken(sender: object, **kwargs: object) -> None:
            raise RuntimeError("after commit broke")

        connect(signals.after_commit, broken)
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do(1), session)
        session.commit()
        recorder.assert_done([1])
        assert [kw["receiver"] for _, kw in failures] == [broken]

    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("before_commit", "coroutine function connected to before_commit"),
            ("after_commit", "is a coroutine function, but the commit came from a synchronous"),
        ],
    )
    def test_coroutine_receiver_on_sync_session_reported(
        self,
        session: sa_orm.Session,
        connect: Connector,
        engine: sa.Engine,
        recorder: Recorder,
        name: str,
        message: str,
    ) -> None:
        """A coroutine receiver hit by a sync session's event, inside the transaction or after
        the COMMIT, gets a clear, reported error (robustly connected); the other receivers, the
        commit and the callbacks go on."""
        signal = getattr(signals, name)
        sent = connect.record(signal)
        reported = connect.record(signals.receiver_failed)

        async def receiver(sender: object, **kwargs: object) -> None:  # pragma: no cover
            pass

        connect(signal, receiver, robust=True)
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do(1), session)
        session.commit()
        assert len(sent) == 1
        [(_, kwargs)] = reported
        assert kwargs["receiver"] is receiver
        assert isinstance(kwargs["exception"], sa_signals.CoroutineMisuseError)
        assert message in str(kwargs["exception"])
        assert count(engine, Item) == 1
        recorder.assert_done([1])


class TestStrictInstall:
    def test_non_robust_receiver_vetoes_the_commit(self, engine: sa.Engine) -> None:
        """With install(robust=False), a before_commit receiver that raises aborts the commit."""
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker, robust=False)

        def veto(sender: object, **kwargs: object) -> None:
            raise ValueError("vetoed")

        signals.before_commit.connect(veto)
        try:
            with maker() as session:
                session.add(Item(name="a"))
                with pytest.raises(ValueError, match="vetoed"):
                    session.commit()
                session.rollback()
            assert count(engine, Item) == 0
        finally:
            signals.before_commit.disconnect(veto)
            sa_signals.uninstall(maker)

    def test_non_robust_after_commit_receiver_raises_after_callbacks(
        self, engine: sa.Engine, recorder: Recorder
    ) -> None:
        """A strict after_commit receiver's error leaves commit() after the callbacks ran."""
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker, robust=False)

        def broken(sender: object, **kwargs: object) -> None:
            raise ValueError("strict receiver")

        signals.after_commit.connect(broken)
        try:
            with maker() as session:
                session.add(Item(name="a"))
                sa_signals.on_commit(recorder.do(1), session)
                with pytest.raises(ValueError, match="strict receiver"):
                    session.commit()
            recorder.assert_done([1])
            assert count(engine, Item) == 1
        finally:
            signals.after_commit.disconnect(broken)
            sa_signals.uninstall(maker)


class TestModelSignals:
    def test_save_signals_for_insert_and_update(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """pre_save/post_save carry instance, session and created; sender is the class."""
        pre = connect.record(signals.pre_save)
        post = connect.record(signals.post_save)
        item = Item(name="a")
        session.add(item)
        session.flush()
        item.value = 5
        session.flush()
        expected = [
            (Item, {"instance": item, "session": session, "created": True}),
            (Item, {"instance": item, "session": session, "created": False}),
        ]
        assert pre == expected
        assert post == expected

    def test_pre_save_sent_before_the_sql(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A pre_save receiver can still change the row that is written."""

        def shout(sender: type[Item], *, instance: Item, **kwargs: object) -> None:
            instance.name = instance.name.upper()

        connect(signals.pre_save, shout, Item)
        session.add(Item(name="quiet"))
        session.commit()
        session.expire_all()
        assert session.scalars(sa.select(Item.name)).one() == "QUIET"

    def test_equal_values_send_nothing(self, session: sa_orm.Session, connect: Connector) -> None:
        """Setting attributes to equal values emits no UPDATE and no signal."""
        item = Item(name="a", value=1)
        session.add(item)
        session.commit()
        post = connect.record(signals.post_save)
        assert (item.name, item.value) == ("a", 1)  # loaded: SQLAlchemy can compare
        item.value = 1
        item.name = "a"
        session.commit()
        assert post == []

    def test_delete_signals(self, session: sa_orm.Session, connect: Connector) -> None:
        """pre_delete/post_delete are sent once per deleted row."""
        item = Item(name="a")
        session.add(item)
        session.commit()
        pre = connect.record(signals.pre_delete)
        post = connect.record(signals.post_delete)
        session.delete(item)
        session.commit()
        assert pre == [(Item, {"instance": item, "session": session, "origin": item})]
        assert post == [(Item, {"instance": item, "session": session, "origin": item})]

    def test_receiver_for_base_gets_subclass_events(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A receiver connected to a base class also receives mapped subclasses' events."""
        animals = connect.record(signals.post_save, Animal)
        dogs = connect.record(signals.post_save, Dog)
        everything = connect.record(signals.post_save, Base)
        dog, cat = Dog(name="rex"), Cat(name="tom")
        session.add_all([dog, cat])
        session.flush()
        assert sorted((s.__name__, kw["instance"].name) for s, kw in animals) == [
            ("Cat", "tom"),
            ("Dog", "rex"),
        ]
        assert [(s, kw["instance"]) for s, kw in dogs] == [(Dog, dog)]
        assert len(everything) == 2

    def test_joined_inheritance_sends_once_per_object(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A joined-table object (two rows) is one save."""
        post = connect.record(signals.post_save)
        session.add(Dog(name="rex"))
        session.flush()
        assert len(post) == 1

    def test_any_receiver_called_once(self, session: sa_orm.Session, connect: Connector) -> None:
        """A receiver connected to ANY and to the class is still called once per event."""
        calls: list[object] = []

        def receiver(sender: object, **kwargs: object) -> None:
            calls.append(sender)

        connect(signals.post_save, receiver)
        connect(signals.post_save, receiver, Item)
        session.add(Item(name="a"))
        session.flush()
        assert calls == [Item]

    def test_receivers_called_in_connection_order(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """Receivers of one signal run in the order they were connected."""
        order: list[int] = []
        for n in range(20):
            connect(signals.post_save, lambda sender, n=n, **kw: order.append(n), Item)
        session.add(Item(name="a"))
        session.flush()
        assert order == list(range(20))

    def test_disconnected_receiver_no_longer_called(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """Disconnecting takes effect at once, despite the cached receiver lists."""
        calls = connect.record(signals.post_save, Item)
        session.add(Item(name="a"))
        session.flush()
        signals.post_save.disconnect(connect._connected[-1][1])
        session.add(Item(name="b"))
        session.flush()
        assert len(calls) == 1

    def test_weak_receiver_collected(self, session: sa_orm.Session) -> None:
        """A weakly connected receiver that is collected is no longer called."""
        calls: list[object] = []

        def receiver(sender: object, **kwargs: object) -> None:
            calls.append(sender)

        signals.post_save.connect(receiver)
        session.add(Item(name="a"))
        session.flush()
        del receiver
        session.add(Item(name="b"))
        session.flush()
        assert calls == [Item]

    def test_uninstalled_sessions_send_nothing(
        self, engine: sa.Engine, connect: Connector
    ) -> None:
        """Sessions of factories that were not installed send no signals (and, with nothing
        installed, warn that they do not)."""
        post = connect.record(signals.post_save)
        with sa_orm.Session(engine) as session:
            session.add(Item(name="a"))
            with pytest.warns(sa_signals.NotInstalledWarning, match="receivers of post_save"):
                session.commit()
        assert post == []


class TestInstall:
    def test_session_open_across_uninstall_refuses_callbacks(self, engine: sa.Engine) -> None:
        """A session that queued callbacks before uninstall() refuses new ones after it, and
        takes them again once installed anew."""
        done: list[int] = []
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)
        try:
            with maker() as session:
                session.add(Item(name="a"))
                sa_signals.on_commit(lambda: done.append(1), session)
                sa_signals.uninstall(maker)
                with pytest.raises(sa_signals.NotInstalledError, match="is not installed"):
                    sa_signals.on_commit(lambda: done.append(2), session)
                sa_signals.install(maker)
                sa_signals.on_commit(lambda: done.append(3), session)
                session.commit()
        finally:
            sa_signals.uninstall(maker)
        assert done == [1, 3]

    def test_install_is_idempotent_and_uninstall_removes_everything(
        self, engine: sa.Engine, connect: Connector
    ) -> None:
        """Installing twice adds nothing; uninstall removes every listener."""
        post = connect.record(signals.post_save)
        commits = connect.record(signals.after_commit)
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)
        sa_signals.install(maker)
        with maker() as session:
            session.add(Item(name="a"))
            session.commit()
        assert (len(post), len(commits)) == (1, 1)
        sa_signals.uninstall(maker)
        sa_signals.uninstall(maker)
        with maker() as session:
            session.add(Item(name="b"))
            session.commit()
            with pytest.raises(sa_signals.NotInstalledError):
                sa_signals.on_commit(lambda: None, session)
        assert (len(post), len(commits)) == (1, 1)

    def test_scoped_and_its_sessionmaker_are_one_installation(self, engine: sa.Engine) -> None:
        """A scoped_session and its sessionmaker cover the same sessions."""
        maker = sa_orm.sessionmaker(engine)
        scoped = sa_orm.scoped_session(maker)
        sa_signals.install(maker)
        sa_signals.install(scoped)
        try:
            seen: list[sa_orm.Session] = []
            scoped.add(Item(name="a"))
            sa_signals.on_commit(lambda: seen.append(scoped()), scoped)
            original = scoped()
            scoped.commit()
            assert seen[0] is not original
        finally:
            sa_signals.uninstall(scoped)
            scoped.remove()

    def test_overlapping_installs_refused(self, engine: sa.Engine) -> None:
        """Installing Session and a sessionmaker of it would handle sessions twice."""

        class AppSession(sa_orm.Session):
            pass

        maker = sa_orm.sessionmaker(engine, class_=AppSession)
        sa_signals.install(AppSession)
        try:
            with pytest.raises(sa_signals.InstallError, match="overlaps the installation"):
                sa_signals.install(maker)
        finally:
            sa_signals.uninstall(AppSession)

    def test_robust_mismatch_refused(self, engine: sa.Engine) -> None:
        """Reinstalling with another robust setting says to uninstall first."""
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker)
        try:
            with pytest.raises(sa_signals.InstallError, match="uninstall it first"):
                sa_signals.install(maker, robust=False)
        finally:
            sa_signals.uninstall(maker)

    def test_two_scoped_sessions_on_one_maker_refused(self, engine: sa.Engine) -> None:
        """Two registries over one sessionmaker cannot both receive the distinct sessions."""
        maker = sa_orm.sessionmaker(engine)
        scoped = sa_orm.scoped_session(maker)
        sa_signals.install(scoped)
        try:
            with pytest.raises(sa_signals.InstallError, match="its own sessionmaker"):
                sa_signals.install(sa_orm.scoped_session(maker))
        finally:
            sa_signals.uninstall(scoped)

    @pytest.mark.parametrize(
        ("target", "message"),
        [
            (42, "install\\(\\) takes a scoped_session, a sessionmaker, a Session subclass"),
            (sa_orm.Session(), "install the sessionmaker or scoped_session it came from"),
            (sa_orm.scoped_session(lambda: sa_orm.Session()), "built on a sessionmaker"),
        ],
    )
    def test_bad_targets_refused(self, target: object, message: str) -> None:
        """install() names what it accepts."""
        with pytest.raises(sa_signals.InstallError, match=message):
            sa_signals.install(target)  # type: ignore[arg-type]


class TestSignalClass:
    def test_connect_from_receiver_connected_does_not_deadlock(self) -> None:
        """A receiver_connected hook may connect more receivers to the same signal."""
        signal = signals.Signal("demo")
        calls: list[str] = []

        def extra(sender: object, **kwargs: object) -> None:
            calls.append("extra")

        def on_connect(connected_signal: object, **kwargs: object) -> None:
            if kwargs["receiver"] is not extra:
                signal.connect(extra, weak=False)

        signal.receiver_connected.connect(on_connect, weak=False)
        try:
            signal.connect(lambda sender, **kw: calls.append("first"), weak=False)
        finally:
            signal.receiver_connected.disconnect(on_connect)
        assert [r(None) for r, _ in signal.receivers_in_order(None)] == [None, None]
        assert sorted(calls) == ["extra", "first"]

    def test_receivers_for_specific_instance_sender(self) -> None:
        """A receiver connected to one session instance gets only that sender's events."""
        signal = signals.Signal("demo")
        first, second = object(), object()
        calls: list[object] = []
        signal.connect(lambda sender, **kw: calls.append(sender), sender=first, weak=False)
        for sender in (first, second, first):
            for receiver, _ in signal.receivers_in_order(sender):
                receiver(sender)
        assert calls == [first, first]

    def test_blinker_send_still_works(self) -> None:
        """The signals stay plain blinker signals for code that calls send() itself."""
        calls: list[object] = []
        signal = signals.Signal("demo")
        signal.connect(lambda sender, **kw: calls.append((sender, kw)), weak=False)
        signal.send("me", value=1)
        assert calls == [("me", {"value": 1})]


class TestDisconnect:
    def test_disconnect_from_its_only_sender_disconnects_it(self) -> None:
        """A receiver disconnected from the one sender it had is no longer connected."""
        signal = signals.Signal("demo")

        def receiver(sender: object, **kwargs: object) -> None: ...

        signal.connect(receiver, sender=Item, weak=False)
        assert signal.disconnect(receiver, sender=Item) is True
        assert not signal.receivers
        assert signal.receivers_in_order(Item) == []

    def test_disconnect_from_one_of_two_senders_keeps_the_other(self) -> None:
        """Disconnected from one sender, a receiver still receives the other's sends."""
        signal = signals.Signal("demo")

        def receiver(sender: object, **kwargs: object) -> None: ...

        signal.connect(receiver, sender=Item, weak=False)
        signal.connect(receiver, sender=Audit, weak=False)
        assert signal.disconnect(receiver, sender=Item) is True
        assert [r for r, _ in signal.receivers_in_order(Audit)] == [receiver]
        assert signal.receivers_in_order(Item) == []

    def test_disconnect_returns_whether_it_was_connected(self) -> None:
        """As in Django: True when a receiver was removed, False otherwise."""
        signal = signals.Signal("demo")

        def receiver(sender: object, **kwargs: object) -> None: ...

        assert signal.disconnect(receiver) is False
        signal.connect(receiver, weak=False)
        assert signal.disconnect(receiver, sender=Item) is False  # connected to any sender
        assert signal.disconnect(receiver) is True
        assert signal.disconnect(receiver) is False

    def test_disconnect_in_dispatch(self, session: sa_orm.Session) -> None:
        """Django's test_disconnect_in_dispatch: receivers that disconnect themselves while a
        save is sent both run, and no receiver is left connected."""

        class Handler:
            def __init__(self) -> None:
                self.ran = False

            def __call__(self, sender: type, **kwargs: object) -> None:
                self.ran = True
                signals.post_save.disconnect(self, sender=sender)

        first, second = Handler(), Handler()
        signals.post_save.connect(first, sender=Item, weak=False)
        signals.post_save.connect(second, sender=Item, weak=False)
        session.add(Item(name="a"))
        session.commit()
        assert first.ran
        assert second.ran
        assert not signals.post_save.receivers


class TestNoLoops:
    def test_after_commit_receiver_committing_the_sender_does_not_loop(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A receiver that commits the committed session again is not called again."""
        calls: list[object] = []

        def recommit(sender: sa_orm.Session, **kwargs: object) -> None:
            calls.append(sender)
            sender.commit()  # nothing to commit: an empty transaction

        connect(signals.after_commit, recommit)
        session.add(Item(name="a"))
        session.commit()
        assert calls == [session]
        assert not session.in_transaction()


def mapper_listening() -> bool:
    """Whether the layer's row-level listeners are attached to the mappers."""
    return sa_event.contains(sa_orm.Mapper, "after_insert", _bridge._after_insert)


class TestMapperListenersOnDemand:
    def test_not_attached_without_model_receivers(self, session: sa_orm.Session) -> None:
        """With no model receiver and no change tracking, flushed rows cost the layer nothing."""
        session.add(Item(name="a"))
        session.commit()
        assert not mapper_listening()

    def test_receiver_connected_after_install_gets_rows(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """Connecting a post_save receiver attaches them; it sees the next flush's rows."""
        calls = connect.record(signals.post_save, Item)
        session.add_all([Item(name="a"), Item(name="b")])
        session.commit()
        assert [kwargs["instance"].name for _, kwargs in calls] == ["a", "b"]
        assert mapper_listening()

    def test_kept_after_the_last_disconnect_until_uninstall(
        self, Session: Scoped, session: sa_orm.Session
    ) -> None:
        """Another thread's flush may be running them: only the last uninstall removes them."""

        def receiver(sender: object, **kwargs: object) -> None:
            pass

        signals.pre_delete.connect(receiver, weak=False)
        signals.pre_delete.disconnect(receiver)
        session.add(Item(name="a"))
        session.commit()
        assert mapper_listening()
        Session.remove()
        sa_signals.uninstall(Session)
        assert not mapper_listening()

    def test_attached_while_changes_are_tracked(self, Session: Scoped) -> None:
        """An install with track_changes=True records rows with no receiver connected."""
        sa_signals.install(Session, track_changes=True)
        try:
            assert mapper_listening()
        finally:
            sa_signals.uninstall(Session)
        sa_signals.install(Session)
        assert not mapper_listening()


def session_listening(Session: Scoped, name: str) -> bool:
    """Whether the layer's listener for session event ``name`` is attached to ``Session``."""
    listener = dict(_bridge._EVERY_SESSION_LISTENER)[name]
    return sa_event.contains(Session.session_factory.class_, name, listener)


class TestSessionListenersOnDemand:
    def test_idle_install_costs_two_listeners_and_no_state(
        self, Session: Scoped, session: sa_orm.Session
    ) -> None:
        """With nothing connected, a transaction meets only after_commit and
        after_transaction_end, and leaves nothing on the session."""
        session.add(Item(name="a"))
        session.commit()
        attached = [name for name, _ in _bridge._EVERY_SESSION_LISTENER]
        attached = [name for name in attached if session_listening(Session, name)]
        expected = ["after_commit", "after_transaction_end"]
        if not _state.CONNECTIONS_KNOWN:  # SQLAlchemy < 2.1.7 records the connections
            expected.insert(0, "after_begin")
        assert attached == expected
        assert [key for key in session.__dict__ if key.startswith("_sa_signals")] == (
            [] if _state.CONNECTIONS_KNOWN else [STATE_ATTR]
        )

    def test_receiver_attaches_its_listener_until_uninstall(
        self, Session: Scoped, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A before_flush receiver attaches that listener only, gets the next flush, and the
        listener stays after the disconnect until uninstall()."""
        calls = connect.record(signals.before_flush)
        assert session_listening(Session, "before_flush")
        assert not session_listening(Session, "after_flush")
        assert not session_listening(Session, "before_commit")
        session.add(Item(name="a"))
        session.flush()
        assert calls == [(session, {})]
        connect.disconnect_all()
        assert session_listening(Session, "before_flush")
        session.commit()
        Session.remove()
        sa_signals.uninstall(Session)
        assert not any(
            session_listening(Session, name) for name, _ in _bridge._EVERY_SESSION_LISTENER
        )

    def test_supported_sqlalchemy_takes_the_fast_paths(self) -> None:
        """SQLAlchemy's private layout is the one the hot paths read, and
        SessionTransaction.connections is used where it exists (2.1.7 and later)."""
        assert _state.TRANSACTION_FIELDS_KNOWN
        released = packaging.version.Version(sa.__version__).release
        assert _state.CONNECTIONS_KNOWN is (released >= (2, 1, 7))


IN_TRANSACTION = [
    "before_flush",
    "pre_save",
    "post_save",
    "after_flush",
    "before_commit",
    "before_models_committed",
]
"""Signals sent inside the transaction by a commit of a new row: their family vetoes."""


def fail(sender: object, **kwargs: object) -> None:
    raise LookupError("receiver failed")


class TestFailurePolicy:
    @pytest.mark.parametrize("name", IN_TRANSACTION)
    def test_in_transaction_receiver_vetoes_by_default(
        self,
        session: sa_orm.Session,
        connect: Connector,
        engine: sa.Engine,
        caplog: pytest.LogCaptureFixture,
        name: str,
    ) -> None:
        """A raising receiver of a signal sent inside the transaction aborts the commit; its
        exception is raised, and neither logged nor sent on receiver_failed."""
        reported = connect.record(signals.receiver_failed)
        connect(getattr(signals, name), fail)
        session.add(Item(name="a"))
        with pytest.raises(LookupError, match="receiver failed"):
            session.commit()
        session.rollback()
        assert count(engine, Item) == 0
        assert reported == []
        assert "receiver failed" not in caplog.text

    def test_robust_connect_isolates_an_in_transaction_receiver(
        self, session: sa_orm.Session, connect: Connector, engine: sa.Engine
    ) -> None:
        """Connected with robust=True, a raising pre_save receiver is reported; the row is
        saved."""
        reported = connect.record(signals.receiver_failed)
        connect(signals.pre_save, fail, robust=True)
        session.add(Item(name="a"))
        session.commit()
        assert count(engine, Item) == 1
        assert [kwargs["receiver"] for _, kwargs in reported] == [fail]

    def test_strict_connect_raises_a_commit_time_receiver_after_the_others(
        self,
        session: sa_orm.Session,
        connect: Connector,
        recorder: Recorder,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Connected with robust=False, a raising after_commit receiver leaves commit() once the
        other receivers and the callbacks ran, and is reported only by being raised."""
        reported = connect.record(signals.receiver_failed)
        connect(signals.after_commit, fail, robust=False)
        connect(signals.after_commit, lambda sender, **kw: recorder.done.append("after"))
        session.add(Item(name="a"))
        sa_signals.on_commit(recorder.do("callback"), session)
        with (
            caplog.at_level(logging.ERROR, logger="sa_signals"),
            pytest.raises(LookupError, match="receiver failed"),
        ):
            session.commit()
        recorder.assert_done(["after", "callback"])
        assert reported == []
        assert caplog.records == []

    def test_strict_install_makes_isolated_receivers_strict_unless_connected_robust(
        self, engine: sa.Engine, connect: Connector
    ) -> None:
        """install(robust=False) makes the commit-time receivers strict, except those connected
        with robust=True; the in-transaction ones veto either way."""
        maker = sa_orm.sessionmaker(engine)
        sa_signals.install(maker, robust=False)
        reported = connect.record(signals.receiver_failed)

        def lenient(sender: object, **kwargs: object) -> None:
            raise KeyError("lenient")

        connect(signals.after_commit, lenient, robust=True)
        connect(signals.after_commit, fail)
        try:
            with maker() as session:
                session.add(Item(name="a"))
                with pytest.raises(LookupError, match="receiver failed"):
                    session.commit()
        finally:
            sa_signals.uninstall(maker)
        assert [kwargs["receiver"] for _, kwargs in reported] == [lenient]
        assert count(engine, Item) == 1

    def test_second_strict_failure_is_reported(
        self, session: sa_orm.Session, connect: Connector, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Only the first strict failure can be raised: a later one is logged and sent, so that
        each failure is reported once."""
        reported = connect.record(signals.receiver_failed)

        def second(sender: object, **kwargs: object) -> None:
            raise KeyError("second")

        connect(signals.after_commit, fail, robust=False)
        connect(signals.after_commit, second, robust=False)
        session.add(Item(name="a"))
        with (
            caplog.at_level(logging.ERROR, logger="sa_signals"),
            pytest.raises(LookupError, match="receiver failed"),
        ):
            session.commit()
        assert [kwargs["receiver"] for _, kwargs in reported] == [second]
        assert [record.exc_info[1] for record in caplog.records] == [  # type: ignore[index]
            reported[0][1]["exception"]
        ]

    def test_robust_setting_forgotten_with_the_receiver(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A receiver disconnected and connected again without robust= follows its family."""
        signals.pre_save.connect(fail, weak=False, robust=True)
        signals.pre_save.disconnect(fail)
        connect(signals.pre_save, fail)
        session.add(Item(name="a"))
        with pytest.raises(LookupError):
            session.flush()
        session.rollback()

    @pytest.mark.parametrize(
        ("signal", "options", "error", "message"),
        [
            (signals.pre_save, {"robust": "yes"}, TypeError, "takes robust=True, False or None"),
            (signals.receiver_failed, {"robust": False}, TypeError, "always isolated"),
            (signals.post_save, {"on": "insert"}, TypeError, "filters the receivers of change"),
            (signals.committed, {"on": "save"}, ValueError, "among insert, update, delete"),
            (signals.committed, {"on": ()}, ValueError, "among insert, update, delete"),
        ],
    )
    def test_connect_options_checked_at_connect(
        self, signal: t.Any, options: dict[str, t.Any], error: type[Exception], message: str
    ) -> None:
        """A robust= or on= a signal cannot honour is refused when connecting, naming why."""
        with pytest.raises(error, match=message):
            signal.connect(fail, weak=False, **options)
        assert fail not in [receiver for receiver, _ in signal.receivers_in_order(Item)]

    @pytest.mark.flavours("async")
    def test_async_in_transaction_coroutine_receiver_vetoes(
        self, flavour: Flavour, any_session: t.Any, connect: Connector, engine: sa.Engine
    ) -> None:
        """An awaited coroutine receiver of before_commit that raises aborts the commit."""

        async def veto(sender: object, **kwargs: object) -> None:
            await asyncio.sleep(0)
            raise PermissionError("vetoed")

        connect(signals.before_commit, veto)
        any_session.add(Item(name="a"))
        with pytest.raises(PermissionError, match="vetoed"):
            flavour.aw(any_session.commit())
        flavour.aw(any_session.rollback())
        assert count(engine, Item) == 0


def _module_level(sender: object, **kwargs: object) -> None:
    """A receiver defined at module level."""


class _Handler:
    def __call__(self, sender: object, **kwargs: object) -> None: ...

    def method(self, sender: object, **kwargs: object) -> None: ...


class TestWeakReceivers:
    def test_lambda_connected_weakly_warns(self) -> None:
        """A lambda that only the call references is collected at once: the connect warns,
        naming the fix."""
        signal = signals.Signal("demo")
        with pytest.warns(sa_signals.WeakReceiverWarning, match="weak=False, or keep a ref"):
            signal.connect(lambda sender, **kwargs: None)
        assert not signal.receivers

    def test_nested_function_connected_by_decorator_warns(self) -> None:
        """The classic mistake: a receiver decorated inside a function (an app factory)."""
        signal = signals.Signal("demo")

        def create_app() -> None:
            @signal.connect
            def on_demo(sender: object, **kwargs: object) -> None: ...

        with pytest.warns(sa_signals.WeakReceiverWarning, match=r"demo\.connect\(<function"):
            create_app()

    @pytest.mark.parametrize(
        "make", [lambda: functools.partial(_module_level, 1), _Handler], ids=["partial", "object"]
    )
    def test_temporary_callable_connected_weakly_warns(self, make: t.Any) -> None:
        """A partial or a callable object made for the call dies with it, too."""
        signal = signals.Signal("demo")
        with pytest.warns(sa_signals.WeakReceiverWarning):
            signal.connect(make())

    def test_warning_points_at_the_connect(self) -> None:
        """The warning is attributed to the line that connected."""
        signal = signals.Signal("demo")
        with pytest.warns(sa_signals.WeakReceiverWarning) as caught:
            signal.connect(lambda sender: None)
        assert caught[0].filename == __file__

    def test_referenced_receivers_do_not_warn(self) -> None:
        """Module-level functions (also decorated ones), bound methods and nested functions kept
        in a variable connect weakly without a warning, and are called."""
        signal = signals.Signal("demo")
        handler = _Handler()
        calls: list[object] = []

        def kept(sender: object, **kwargs: object) -> None:
            calls.append(sender)

        module = types.ModuleType("receivers")
        module.signal = signal  # type: ignore[attr-defined]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            exec("@signal.connect\ndef decorated(sender, **kwargs): pass", module.__dict__)
            signal.connect(_module_level)
            signal.connect(handler.method)
            signal.connect(kept)
            signal.connect(lambda sender: None, weak=False)
        signal.send("demo")
        assert calls == ["demo"]
        assert len(signal.receivers) == 5


class TestStringSenders:
    def test_class_name_and_module_path_connect_to_the_mapped_class(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A receiver may name its sender: "Item", "models.Item" or "tests.models.Item"."""
        calls = [connect.record(signals.post_save, name) for name in ("Item", "models.Item")]
        calls.append(connect.record(signals.post_save, "tests.models.Item"))
        session.add_all([Item(name="a"), Audit(message="not an item")])
        session.flush()
        assert [[sender for sender, _ in each] for each in calls] == [[Item]] * 3
        assert not _dispatch.names_pending()

    def test_name_matches_mapped_subclasses(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A name stands for its class, so it receives the events of mapped subclasses too."""
        calls = connect.record(signals.post_save, "Animal")
        session.add(Dog(name="rex"))
        session.flush()
        assert [sender for sender, _ in calls] == [Dog]

    def test_unknown_name_fails_the_first_flush(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A name that no mapped class has waits; the first flush after raises, naming it and
        the fix, and raises again until the receiver is disconnected."""
        calls = connect.record(signals.post_save, "Itme")
        session.add(Item(name="a"))
        with pytest.raises(sa_signals.SenderNameError, match="no mapped class is named 'Itme'"):
            session.flush()
        session.rollback()
        with pytest.raises(sa_signals.SenderNameError):
            session.commit()  # a new flush of nothing: nothing to flush, nothing raised
            session.add(Item(name="b"))
            session.flush()
        session.rollback()
        assert signals.post_save.disconnect(connect._connected[-1][1], sender="Itme")
        session.add(Item(name="c"))
        session.commit()
        assert calls == []
        assert not _dispatch.names_pending()

    @pytest.mark.flavours("async")
    def test_named_sender_of_an_async_session(
        self, flavour: Flavour, any_session: t.Any, connect: Connector
    ) -> None:
        """A coroutine receiver connected by name is awaited for its class's objects flushed by
        an AsyncSession, and for no other class."""
        names: list[str] = []

        async def record(sender: type, *, instance: Item, **kwargs: object) -> None:
            await asyncio.sleep(0)
            names.append(instance.name)

        connect(signals.post_save, record, "models.Item")
        any_session.add_all([Item(name="a"), Audit(message="not an item")])
        flavour.aw(any_session.commit())
        assert names == ["a"]
        assert not _dispatch.names_pending()

    @pytest.mark.flavours("async")
    def test_unknown_name_fails_the_first_async_flush(
        self, flavour: Flavour, any_session: t.Any, connect: Connector
    ) -> None:
        """A name no mapped class has fails an AsyncSession's flush, naming it."""
        receiver = connect(signals.post_save, fail, "Itme")
        any_session.add(Item(name="a"))
        with pytest.raises(sa_signals.SenderNameError, match="no mapped class is named 'Itme'"):
            flavour.aw(any_session.flush())
        flavour.aw(any_session.rollback())
        assert signals.post_save.disconnect(receiver, sender="Itme")
        assert not _dispatch.names_pending()

    def test_ambiguous_name_refused_at_connect(self) -> None:
        """A name two mapped classes have is refused, listing them."""
        first, second = sa_orm.registry(), sa_orm.registry()
        twins = [type("Twin", (), {}), type("Twin", (), {})]  # held: registries hold them weakly
        try:
            for registry, twin in zip((first, second), twins, strict=True):
                table = sa.Table(
                    "twins", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True)
                )
                registry.map_imperatively(twin, table)
            with pytest.raises(sa_signals.SenderNameError, match="'Twin' names several"):
                signals.post_save.connect(fail, sender="Twin", weak=False)
        finally:
            first.dispose()
            second.dispose()
        assert not signals.post_save.receivers


class TestInitSignals:
    def test_construction_sends_pre_init_then_post_init(
        self, Session: Scoped, connect: Connector
    ) -> None:
        """pre_init gets the constructor's arguments before it runs, post_init the object
        after it ran; the sender is the mapped class."""
        seen: list[tuple[str, object]] = []

        def before(sender: type, *, instance: Item, args: tuple[object, ...], **kwargs: t.Any):
            seen.append(("pre_init", (sender, args, dict(kwargs["kwargs"]), instance.name)))

        def after(sender: type, *, instance: Item, session: object, **kwargs: object) -> None:
            seen.append(("post_init", (sender, instance.name, session)))

        connect(signals.pre_init, before)
        connect(signals.post_init, after)
        Dog(name="rex")
        assert seen == [
            ("pre_init", (Dog, (), {"name": "rex"}, None)),
            ("post_init", (Dog, "rex", None)),
        ]

    def test_pre_init_receiver_may_change_the_arguments(
        self, Session: Scoped, connect: Connector
    ) -> None:
        """The kwargs dict is the constructor's own: a receiver changes what it gets."""

        def shout(sender: type, *, kwargs: dict[str, t.Any], **rest: object) -> None:
            kwargs["name"] = kwargs["name"].upper()

        connect(signals.pre_init, shout, Item)
        assert Item(name="quiet").name == "QUIET"

    @pytest.mark.parametrize("name", ["pre_init", "post_init"])
    def test_raising_receiver_vetoes_the_construction(
        self, Session: Scoped, connect: Connector, name: str
    ) -> None:
        """A raising receiver's exception leaves the constructor: the object is not made."""
        connect(getattr(signals, name), fail, Item)
        with pytest.raises(LookupError, match="receiver failed"):
            Item(name="a")

    def test_post_init_on_load(
        self, flavour: Flavour, any_session: t.Any, connect: Connector, recorder: Recorder
    ) -> None:
        """Loading an object sends post_init with the session that loaded it; a coroutine
        receiver is awaited for an AsyncSession."""
        any_session.add(Item(name="a"))
        flavour.aw(any_session.commit())
        loaded: list[tuple[object, object]] = []

        async def arecord(sender: type, *, instance: Item, session: object, **kw: object) -> None:
            await asyncio.sleep(0)
            loaded.append((instance.name, session))

        def record(sender: type, *, instance: Item, session: object, **kw: object) -> None:
            loaded.append((instance.name, session))

        connect(signals.post_init, arecord if flavour.is_async else record, Item)
        any_session.expunge_all()
        flavour.aw(any_session.scalars(sa.select(Item))).all()
        flavour.aw(any_session.rollback())
        assert loaded == [("a", any_session)]

    def test_nothing_sent_or_attached_without_an_installation(
        self, engine: sa.Engine, connect: Connector
    ) -> None:
        """With no installation, construction and loads send nothing (a warning says so), and
        the constructors and listeners are SQLAlchemy's own."""
        calls = connect.record(signals.post_init)
        connect(signals.pre_init, fail)
        with sa_orm.Session(engine) as session:
            session.add(Item(name="a"))
            with pytest.warns(sa_signals.NotInstalledWarning, match="of pre_init, post_init"):
                session.commit()
            session.expunge_all()
            session.scalars(sa.select(Item)).all()
        assert calls == []
        manager = sa_orm.class_mapper(Item).class_manager
        assert not isinstance(manager.original_init, _instances._PostInit)
        assert not sa_event.contains(sa_orm.Mapper, "init", _instances._init)

    def test_listeners_attached_on_demand_and_constructors_given_back(
        self, Session: Scoped, connect: Connector
    ) -> None:
        """The init listener is attached once pre_init or post_init has a receiver; the last
        uninstall removes it and gives each wrapped class its constructor back."""
        assert not sa_event.contains(sa_orm.Mapper, "init", _instances._init)
        connect.record(signals.post_init, Item)
        Item(name="a")
        manager = sa_orm.class_mapper(Item).class_manager
        assert isinstance(manager.original_init, _instances._PostInit)
        Session.remove()
        sa_signals.uninstall(Session)
        assert not isinstance(manager.original_init, _instances._PostInit)
        assert not sa_event.contains(sa_orm.Mapper, "load", _instances._load)


class TestDeleteOrigin:
    def test_first_delete_is_the_origin(self, session: sa_orm.Session, connect: Connector) -> None:
        """An object deleted itself before its parent's delete cascaded to it is its own
        origin."""
        first, second = Page(text="1"), Page(text="2")
        book = Book(title="Rayuela", pages=[first, second])
        session.add(book)
        session.commit()
        pre = connect.record(signals.pre_delete, Page)
        session.delete(first)
        session.delete(book)
        session.flush()
        assert {kwargs["instance"].text: kwargs["origin"] for _, kwargs in pre} == {
            "1": first,
            "2": book,
        }
        session.commit()
        assert session.__dict__[STATE_ATTR].origins is None  # nothing held after the commit

    def test_orphan_is_its_own_origin(self, session: sa_orm.Session, connect: Connector) -> None:
        """A row the flush deletes for being taken out of its parent comes from itself."""
        page = Page(text="1")
        book = Book(title="Rayuela", pages=[page])
        session.add(book)
        session.commit()
        post = connect.record(signals.post_delete)
        book.pages.remove(page)
        session.commit()
        assert [(sender, kwargs["origin"]) for sender, kwargs in post] == [(Page, page)]


# Django's tests/signals/tests.py, test by test where the feature applies: the model signals of
# Django's ORM, translated to a session's flush (sender the mapped class, keyword arguments).


class TestDjangoSignalTests:
    def test_model_pre_init_and_post_init(self, Session: Scoped, connect: Connector) -> None:
        """Constructing an object sends pre_init with its arguments, then post_init with it."""
        data: list[object] = []
        connect(signals.pre_init, lambda sender, *, kwargs, **kw: data.append(dict(kwargs)))
        connect(signals.post_init, lambda sender, *, instance, **kw: data.append(instance))
        item = Item(name="John")
        assert data == [{"name": "John"}, item]

    def test_save_signals(self, session: sa_orm.Session, connect: Connector) -> None:
        """pre_save and post_save for an insert, an update, a primary key change (an UPDATE
        in SQLAlchemy, where Django inserts), and an object loaded with a deferred column."""
        data: list[tuple[object, ...]] = []
        connect(
            signals.pre_save, lambda sender, *, instance, **kw: data.append((instance, sender))
        )
        connect(
            signals.post_save,
            lambda sender, *, instance, created, **kw: data.append((instance, sender, created)),
        )
        item = Item(name="John")
        session.add(item)
        session.flush()
        assert data == [(item, Item), (item, Item, True)]
        data.clear()
        item.name = "Tom"
        session.flush()
        assert data == [(item, Item), (item, Item, False)]
        data.clear()
        item.id = -1  # a negative key moves no server's auto-increment counter
        session.flush()
        assert data == [(item, Item), (item, Item, False)]
        session.commit()
        data.clear()
        session.expunge_all()
        deferred = session.scalars(sa.select(Item).options(sa_orm.defer(Item.name))).one()
        deferred.value = 5
        session.flush()
        assert data == [(deferred, Item), (deferred, Item, False)]

    def test_delete_signals(self, session: sa_orm.Session, connect: Connector) -> None:
        """pre_delete and post_delete carry the instance, its class and the origin; any
        callable receives them, and the row still has its id in both."""
        data: list[tuple[object, ...]] = []

        class PostDeleteHandler:
            def __call__(self, sender: type, *, instance: Item, origin: object, **kw: object):
                data.append((instance, sender, instance.id is None, origin))

        handler = PostDeleteHandler()
        connect(
            signals.pre_delete,
            lambda sender, *, instance, origin, **kw: data.append(
                (instance, sender, instance.id is None, origin)
            ),
        )
        connect(signals.post_delete, handler)
        first, second = Item(name="John"), Item(name="James")
        session.add_all([first, second])
        session.flush()
        session.delete(first)
        session.flush()
        assert data == [(first, Item, False, first), (first, Item, False, first)]
        data.clear()
        second.id = -2
        session.flush()
        session.delete(second)
        session.flush()
        assert data == [(second, Item, False, second), (second, Item, False, second)]

    def test_delete_signals_origin_model(
        self, flavour: Flavour, any_session: t.Any, connect: Connector
    ) -> None:
        """An object's delete is its own origin; the rows its delete cascaded to have it as
        origin too (SQLAlchemy deletes table by table: the pages, then the book)."""
        data: list[tuple[str, object, object]] = []
        item = Item(name="John")
        book = Book(title="Rayuela", pages=[Page(text="Page 1"), Page(text="Page 2")])
        any_session.add_all([item, book])
        flavour.aw(any_session.commit())
        connect(
            signals.pre_delete,
            lambda sender, *, origin, **kw: data.append(("pre", sender, origin)),
        )
        connect(
            signals.post_delete,
            lambda sender, *, origin, **kw: data.append(("post", sender, origin)),
        )
        flavour.aw(any_session.delete(item))
        flavour.aw(any_session.commit())
        assert data == [("pre", Item, item), ("post", Item, item)]
        data.clear()
        flavour.aw(any_session.delete(book))
        flavour.aw(any_session.commit())
        assert data == [
            ("pre", Page, book),
            ("pre", Page, book),
            ("post", Page, book),
            ("post", Page, book),
            ("pre", Book, book),
            ("post", Book, book),
        ]

    def test_delete_signals_origin_queryset(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """A bulk DELETE (Django's queryset delete) loads no rows: it sends no pre_delete or
        post_delete, and bulk_delete with the statement it started from."""
        session.add_all([Item(name="John"), Item(name="James")])
        session.commit()
        deletes = connect.record(signals.pre_delete) + connect.record(signals.post_delete)
        bulk = connect.record(signals.bulk_delete)
        statement = sa.delete(Item)
        session.execute(statement)
        session.commit()
        assert deletes == []
        assert [(sender, kwargs["statement"], kwargs["rowcount"]) for sender, kwargs in bulk] == [
            (Item, statement, 2)
        ]

    def test_decorators(self, session: sa_orm.Session) -> None:
        """connect_via() connects strongly, to any sender or to one class."""
        data: list[object] = []

        @signals.pre_save.connect_via(blinker.ANY)
        def decorated_handler(sender: type, *, instance: object, **kw: object) -> None:
            data.append(instance)

        @signals.pre_save.connect_via(Item)
        def decorated_handler_with_sender_arg(sender: type, *, instance: object, **kw: object):
            data.append(instance)

        try:
            item = Item(name="Volkswagen")
            session.add(item)
            session.flush()
            assert data == [item, item]
        finally:
            signals.pre_save.disconnect(decorated_handler)
            signals.pre_save.disconnect(decorated_handler_with_sender_arg, sender=Item)

    def test_save_and_delete_signals_with_m2m(
        self, session: sa_orm.Session, connect: Connector
    ) -> None:
        """Changing a relationship saves the rows whose columns change, and no other."""
        data: list[str] = []
        connect(
            signals.post_save,
            lambda sender, *, created, **kw: data.append(
                f"{sender.__name__} {'created' if created else 'updated'}"
            ),
        )
        author, book = Author(name="Neal Stephenson"), Book(title="Snow Crash")
        session.add_all([author, book])
        session.flush()
        assert data == ["Author created", "Book created"]
        data.clear()
        author.books.append(book)
        session.flush()
        author.books.remove(book)
        session.flush()
        assert data == ["Book updated", "Book updated"]

    def test_lazy_model_signal(self, Session: Scoped) -> None:
        """A receiver connected by name is held as weakly as any other, unless weak=False."""
        calls: list[object] = []

        def callback(sender: type, **kwargs: object) -> None:
            calls.append(sender)

        signals.pre_init.connect(callback, sender="models.Item")
        assert signals.pre_init.disconnect(callback, sender="Item")
        signals.pre_init.connect(callback, sender="NotMappedYet", weak=False)
        assert signals.pre_init.disconnect(callback, sender="NotMappedYet")
        signals.pre_init.connect(callback, sender="Item")
        del callback
        Item(name="a")
        assert calls == []
        assert not signals.pre_init.receivers

    def test_disconnect_model(self, Session: Scoped, connect: Connector) -> None:
        """disconnect() says whether the receiver was connected, as Django's does."""
        calls = connect.record(signals.post_init, Item)
        receiver = connect._connected[-1][1]
        assert signals.post_init.disconnect(receiver, sender=Item) is True
        assert signals.post_init.disconnect(receiver, sender=Item) is False
        Item(name="a")
        assert calls == []


class TestDjangoLazyModelRefTests:
    def test_invalid_sender_model_name(self) -> None:
        """A string sender that cannot be a class name is refused at connect."""
        with pytest.raises(ValueError, match="a string sender names a mapped class"):
            signals.post_init.connect(fail, sender="in valid", weak=False)

    def test_already_loaded_model(self, Session: Scoped, connect: Connector) -> None:
        """A name whose class is mapped connects to it at once."""
        received = connect.record(signals.post_init, "models.Book")
        assert not _dispatch.names_pending()
        book = Book(title="a")
        assert received == [(Book, {"instance": book, "session": None})]

    def test_not_loaded_model(self, Session: Scoped, connect: Connector) -> None:
        """A name connected before its class is mapped receives its events once it is."""
        received = connect.record(signals.post_init, "Created")
        assert _dispatch.names_pending()
        registry = sa_orm.registry()
        try:

            class Created:
                pass

            table = sa.Table(
                "created", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True)
            )
            registry.map_imperatively(Created, table)
            instance = Created()
        finally:
            registry.dispose()
        assert received == [(Created, {"instance": instance, "session": None})]
        assert not _dispatch.names_pending()

    def test_disconnect_registered_model(self, Session: Scoped) -> None:
        """Disconnecting by name finds the mapped class: True once, then False."""
        received: list[object] = []

        def receiver(sender: type, **kwargs: object) -> None:
            received.append(kwargs)

        signals.post_init.connect(receiver, sender="Item", weak=False)
        assert signals.post_init.disconnect(receiver, sender="Item") is True
        assert signals.post_init.disconnect(receiver, sender="Item") is False
        Item(name="a")
        assert received == []

    def test_disconnect_unregistered_model(self, Session: Scoped) -> None:
        """Disconnecting a name not mapped yet forgets it: the class mapped later sends
        nothing, and no flush checks the name any more."""
        received: list[object] = []

        def receiver(sender: type, **kwargs: object) -> None:
            received.append(kwargs)

        signals.post_init.connect(receiver, sender="Unregistered", weak=False)
        assert signals.post_init.disconnect(receiver, sender="Unregistered") is True
        assert signals.post_init.disconnect(receiver, sender="Unregistered") is False
        assert not _dispatch.names_pending()
        registry = sa_orm.registry()
        try:

            class Unregistered:
                pass

            table = sa.Table("late", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
            registry.map_imperatively(Unregistered, table)
            Unregistered()
        finally:
            registry.dispose()
        assert received == []

    def test_register_model_class_senders_immediately(self, connect: Connector) -> None:
        """A class sender is connected as itself: no name is left to resolve."""
        connect.record(signals.post_init, Book)
        assert not _dispatch.names_pending()


class TestDjangoAsyncReceiversTests:
    @pytest.mark.flavours("async")
    def test_asend(self, flavour: Flavour, any_session: t.Any, connect: Connector) -> None:
        """A flush of an AsyncSession calls plain and coroutine receivers, awaiting the latter,
        in connection order."""
        calls: list[str] = []

        async def async_handler(sender: type, **kwargs: object) -> None:
            await asyncio.sleep(0)
            calls.append("async")

        connect(signals.post_save, lambda sender, **kw: calls.append("sync"))
        connect(signals.post_save, async_handler)
        any_session.add(Item(name="a"))
        flavour.aw(any_session.flush())
        assert calls == ["sync", "async"]
        flavour.aw(any_session.rollback())

    def test_send_robust(self, flavour: Flavour, any_session: t.Any, connect: Connector) -> None:
        """A receiver connected robustly that raises is reported; the others still run, in
        connection order, and the row is saved."""
        calls: list[str] = []

        async def failing_async_handler(sender: type, **kwargs: object) -> None:
            raise LookupError("receiver failed")

        reported = connect.record(signals.receiver_failed)
        failing = failing_async_handler if flavour.is_async else fail
        connect(signals.post_save, failing, robust=True)
        connect(signals.post_save, lambda sender, **kw: calls.append("sync"))
        any_session.add(Item(name="a"))
        flavour.aw(any_session.commit())
        assert calls == ["sync"]
        assert [(kwargs["receiver"], str(kwargs["exception"])) for _, kwargs in reported] == [
            (failing, "receiver failed")
        ]
