"""The warning of a forgotten install(): when a unit of work or a session's transaction begins,
never in start-up order."""

from __future__ import annotations

import collections.abc as c
import contextlib
import typing as t
import warnings

import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm

import sa_signals
from sa_signals import signals
from sa_signals.contrib.scopes import Scope

if t.TYPE_CHECKING:
    import asyncio

    from tests.conftest import Connector


def on_post_save(sender: t.Any, **kwargs: t.Any) -> None:
    pass  # pragma: no cover - never called: that is the point


@pytest.fixture
def receiver(connect: Connector) -> None:
    """A receiver connected to post_save."""
    connect(signals.post_save, on_post_save)


@pytest.mark.usefixtures("receiver")
class TestWarns:
    @pytest.mark.parametrize("scope", [sa_signals.session_scope, sa_signals.distinct_session])
    def test_a_scope_with_nothing_installed(self, engine: sa.Engine, scope: t.Any) -> None:
        """A scope begun while a signal has receivers and nothing is installed warns, naming
        the signal, the fix, and the line of the scope."""
        maker = sa_orm.sessionmaker(engine)
        with (
            pytest.warns(sa_signals.NotInstalledWarning, match=r"receivers of post_save") as got,
            scope(maker),
        ):
            pass
        assert r"Call sa_signals.install()" in str(got[0].message)
        assert got[0].filename == __file__

    def test_a_plain_session_with_nothing_installed(self, engine: sa.Engine) -> None:
        """A session used without a scope, as in `with Session.begin():`, warns at the line
        that began its transaction, once: the first transaction after the connect."""
        maker = sa_orm.sessionmaker(engine)
        with (
            pytest.warns(sa_signals.NotInstalledWarning, match=r"receivers of post_save") as got,
            maker.begin() as session,
        ):
            session.execute(sa.text("SELECT 1"))
        with silent(), maker.begin() as session:
            session.execute(sa.text("SELECT 1"))
        assert len(got) == 1
        assert r"Call sa_signals.install()" in str(got[0].message)
        assert got[0].filename == __file__

    async def test_a_plain_async_session_with_nothing_installed(
        self, arunner: asyncio.Runner, aengine: sa_asyncio.AsyncEngine
    ) -> None:
        """An AsyncSession used without a scope warns alike."""
        maker = sa_asyncio.async_sessionmaker(aengine)
        with pytest.warns(sa_signals.NotInstalledWarning, match=r"receivers of post_save"):
            async with maker.begin() as session:
                await session.execute(sa.text("SELECT 1"))

    def test_a_unit_of_a_scope_with_nothing_installed(self, engine: sa.Engine) -> None:
        """A contrib Scope's unit of work (a request of the WSGI middleware) warns too."""
        scope = Scope("jobs")
        scope.scoped_session(sa_orm.sessionmaker(engine))
        with (
            pytest.warns(sa_signals.NotInstalledWarning, match=r"unit of work of Scope\('jobs'\)"),
            scope.enter(),
        ):
            pass

    async def test_async_scopes_with_nothing_installed(
        self, arunner: asyncio.Runner, aengine: sa_asyncio.AsyncEngine
    ) -> None:
        """The async scopes warn alike."""
        maker = sa_asyncio.async_sessionmaker(aengine)
        with pytest.warns(sa_signals.NotInstalledWarning, match=r"session_scope\("):
            async with sa_signals.session_scope(maker):
                pass
        scope = Scope()
        scope.async_scoped_session(maker)
        with pytest.warns(sa_signals.NotInstalledWarning, match=r"unit of work of Scope"):
            async with scope.enter_async():
                pass


@contextlib.contextmanager
def silent() -> c.Iterator[None]:
    """Turn any warning in the block into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


class TestQuiet:
    def test_connected_before_install(self, engine: sa.Engine, connect: Connector) -> None:
        """The start-up order, receivers connected and then install(), says nothing."""
        connect(signals.post_save, on_post_save)
        Session = sa_orm.scoped_session(sa_orm.sessionmaker(engine))
        sa_signals.install(Session)
        try:
            with silent(), sa_signals.session_scope(Session):
                pass
        finally:
            sa_signals.uninstall(Session)

    @pytest.mark.usefixtures("receiver")
    def test_another_factory_installed(
        self, engine: sa.Engine, Session: sa_orm.scoped_session[sa_orm.Session]
    ) -> None:
        """With a factory installed, one left out may be deliberate: nothing is said."""
        maker = sa_orm.sessionmaker(engine)
        with silent(), sa_signals.session_scope(maker):
            pass
        with silent(), maker.begin() as session:
            session.execute(sa.text("SELECT 1"))

    def test_installed_before_the_first_transaction(
        self, engine: sa.Engine, connect: Connector
    ) -> None:
        """Receivers connected, then install(), then sessions of any factory: nothing is said."""
        connect(signals.post_save, on_post_save)
        Session = sa_orm.scoped_session(sa_orm.sessionmaker(engine))
        sa_signals.install(Session)
        try:
            with silent(), sa_orm.Session(engine) as session, session.begin():
                session.execute(sa.text("SELECT 1"))
        finally:
            sa_signals.uninstall(Session)

    def test_receivers_of_signals_no_session_sends(
        self, engine: sa.Engine, connect: Connector
    ) -> None:
        """The fan-out's and the outbox's signals are not sent by sessions' events: their
        receivers (a process that only listens, say) wait for nothing install() does, and
        nothing is said."""
        for signal in (signals.remote_committed, signals.remote_gap, signals.outbox_failed):
            connect(signal, on_post_save)
        with silent(), sa_signals.session_scope(sa_orm.sessionmaker(engine)):
            pass

    def test_no_receiver_waiting(self, engine: sa.Engine, connect: Connector) -> None:
        """Without receivers, or with receivers of the failure signals only, nothing is said."""
        connect(signals.on_commit_failed, on_post_save)
        connect(signals.receiver_failed, on_post_save)
        with silent(), sa_signals.session_scope(sa_orm.sessionmaker(engine)):
            pass
