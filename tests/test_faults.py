"""Faults from the database: killed connections, failing COMMITs, an exhausted pool.

In each case no callback of an uncommitted transaction runs, every callback of a committed one
runs once, nothing is left checked out or registered, and the error raised is the database's.
"""

from __future__ import annotations

import collections.abc as c
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
import sqlalchemy.pool as sa_pool

import sa_signals
from sa_signals import _runner
from sa_signals import signals
from sa_signals._state import STATE_ATTR
from tests.models import Audit
from tests.models import customers
from tests.models import Item
from tests.models import orders

if t.TYPE_CHECKING:
    from tests.conftest import Connector
    from tests.conftest import Recorder

Scoped = sa_orm.scoped_session[sa_orm.Session]

pytestmark = pytest.mark.backends("postgresql", "mariadb")

DRIVERS = ("psycopg", "pymysql")
"""Top-level modules of the DBAPI drivers whose exceptions count as the database's own."""


@pytest.fixture
def make_session(engine: sa.Engine) -> c.Iterator[c.Callable[..., Scoped]]:
    """Build an installed ``scoped_session`` on a private engine with the given pool options."""
    made: list[tuple[Scoped, sa.Engine]] = []

    def make(**pool: t.Any) -> Scoped:
        private = sa.create_engine(engine.url, **pool)
        scoped = sa_orm.scoped_session(sa_orm.sessionmaker(private))
        sa_signals.install(scoped)
        made.append((scoped, private))
        return scoped

    yield make
    for scoped, private in made:
        scoped.remove()
        sa_signals.uninstall(scoped)
        private.dispose()


@pytest.fixture
def Session(make_session: c.Callable[..., Scoped]) -> Scoped:
    return make_session()


@pytest.fixture
def kill(engine: sa.Engine) -> c.Iterator[c.Callable[[sa.Connection | int], None]]:
    """Kill the server side of a connection (or server process id) from another connection."""
    killer = sa.create_engine(engine.url, poolclass=sa_pool.NullPool, isolation_level="AUTOCOMMIT")
    postgresql = engine.dialect.name == "postgresql"

    def kill(victim: sa.Connection | int) -> None:
        pid = victim if isinstance(victim, int) else server_pid(victim)
        with killer.connect() as connection:
            if postgresql:
                # Waits until the server process has gone.
                terminate = sa.text("SELECT pg_terminate_backend(:pid, 5000)")
                assert connection.execute(terminate, {"pid": pid}).scalar()
            else:
                connection.exec_driver_sql(f"KILL {pid:d}")

    yield kill
    killer.dispose()


def server_pid(connection: sa.Connection) -> int:
    """The server's id for ``connection``: its backend pid, or its MariaDB thread id."""
    postgresql = connection.dialect.name == "postgresql"
    query = "SELECT pg_backend_pid()" if postgresql else "SELECT CONNECTION_ID()"
    return int(connection.exec_driver_sql(query).scalar_one())


def engine_of(Session: Scoped) -> sa.Engine:
    bind = Session.session_factory.kw["bind"]
    assert isinstance(bind, sa.Engine)
    return bind


def assert_database_error(exc: BaseException) -> None:
    """``exc`` is SQLAlchemy's wrapper of the driver's own error, not one of the layer's."""
    assert isinstance(exc, sa_exc.DBAPIError)
    assert type(exc.orig).__module__.split(".")[0] in DRIVERS
    assert not isinstance(exc, sa_signals.SaSignalsError)


def assert_nothing_left(Session: Scoped, original: sa_orm.Session) -> None:
    """No connection checked out, the registry back to ``original``, no queued work."""
    assert engine_of(Session).pool.checkedout() == 0  # type: ignore[attr-defined]
    assert Session.registry.has()
    assert Session() is original
    assert not original.in_transaction()
    state = original.__dict__.get(STATE_ATTR)
    assert state is None or (not state.queue and not state.connections)
    assert _runner._current.get() is None
    assert _runner._pending.get() is None


def names(engine: sa.Engine, column: sa.ColumnElement[t.Any]) -> list[t.Any]:
    with engine.connect() as connection:
        return sorted(connection.scalars(sa.select(column)))


def assert_usable(Session: Scoped, recorder: Recorder, name: str) -> None:
    """The session commits again, and that commit runs its callback once."""
    session = Session()
    session.add(Item(name=name))
    sa_signals.on_commit(recorder.do(name), session)
    session.commit()
    assert recorder.done[-1] == name
    assert recorder.done.count(name) == 1


class TestConnectionKilled:
    def test_killed_before_commit(
        self,
        Session: Scoped,
        kill: c.Callable[[sa.Connection | int], None],
        recorder: Recorder,
        connect: Connector,
    ) -> None:
        """COMMIT on a dead connection: the driver's error, nothing runs, nothing is left."""
        after_commit = connect.record(signals.after_commit)
        session = Session()
        session.add(Item(name="lost"))
        session.flush()
        sa_signals.on_commit(recorder.do("lost"), session)
        kill(session.connection())
        with pytest.raises(sa_exc.OperationalError) as excinfo:
            session.commit()
        assert_database_error(excinfo.value)
        session.rollback()
        recorder.assert_done([])
        assert after_commit == []
        assert_nothing_left(Session, session)
        assert names(engine_of(Session), Item.name) == []
        assert_usable(Session, recorder, "again")
        assert len(after_commit) == 1

    def test_killed_during_flush(
        self,
        Session: Scoped,
        kill: c.Callable[[sa.Connection | int], None],
        recorder: Recorder,
        connect: Connector,
    ) -> None:
        """The connection dies between a pre_save receiver and its INSERT: nothing runs."""
        session = Session()
        victim = server_pid(session.connection())

        def killer(sender: object, **kwargs: object) -> None:
            kill(victim)

        connect(signals.pre_save, killer, Item)
        sa_signals.on_commit(recorder.do("outer"), session)
        with session.begin_nested():
            sa_signals.on_commit(recorder.do("released"), session)
        session.add(Item(name="lost"))
        with pytest.raises(sa_exc.DBAPIError) as excinfo:
            session.commit()
        assert_database_error(excinfo.value)
        assert excinfo.value.connection_invalidated
        session.rollback()
        connect.disconnect_all()
        recorder.assert_done([])
        assert_nothing_left(Session, session)
        assert names(engine_of(Session), Item.name) == []
        assert_usable(Session, recorder, "again")

    @pytest.mark.parametrize("robust", [True, False])
    def test_killed_inside_callback_distinct_session(
        self,
        Session: Scoped,
        kill: c.Callable[[sa.Connection | int], None],
        recorder: Recorder,
        connect: Connector,
        robust: bool,
    ) -> None:
        """A callback whose own session dies fails alone; the commit and the others stand."""
        failures = connect.record(signals.on_commit_failed)
        distinct: list[sa_orm.Session] = []

        def doomed() -> None:
            recorder.done.append("doomed")
            Session.add(Audit(message="doomed"))
            Session.flush()
            distinct.append(Session())
            kill(Session.connection())

        def survivor() -> None:
            recorder.done.append("survivor")
            Session.add(Audit(message="survivor"))

        session = Session()
        session.add(Item(name="kept"))
        sa_signals.on_commit(doomed, session, robust=robust)
        sa_signals.on_commit(survivor, session)
        if robust:
            session.commit()
            [(sender, kwargs)] = failures
            assert sender is session
            assert kwargs["callback"] is doomed
            error = kwargs["exception"]
        else:
            with pytest.raises(sa_exc.DBAPIError) as excinfo:
                session.commit()
            error = excinfo.value
            assert failures[0][1]["exception"] is error
        assert_database_error(error)
        recorder.assert_done(["doomed", "survivor"])
        assert not distinct[0].in_transaction()
        assert len(distinct[0].identity_map) == 0
        assert_nothing_left(Session, session)
        engine = engine_of(Session)
        assert names(engine, Item.name) == ["kept"]
        assert names(engine, Audit.message) == ["survivor"]
        assert_usable(Session, recorder, "again")

    @pytest.mark.parametrize("pre_ping", [True, False])
    def test_killed_in_the_pool_between_commit_and_callbacks(
        self,
        make_session: c.Callable[..., Scoped],
        kill: c.Callable[[sa.Connection | int], None],
        connect: Connector,
        pre_ping: bool,
    ) -> None:
        """The released connection dies before a callback takes it: it fails alone, never twice.

        With ``pool_pre_ping`` the pool replaces the dead connection and every callback writes.
        """
        Session = make_session(pool_size=1, max_overflow=0, pool_pre_ping=pre_ping)
        failures = connect.record(signals.on_commit_failed)
        kill_reports = connect.record(signals.receiver_failed)
        calls: list[str] = []
        session = Session()
        session.add(Item(name="kept"))
        victim = server_pid(session.connection())

        def killer(sender: object, **kwargs: object) -> None:
            # Commit-time receivers run before the callbacks, once the connection is pooled.
            kill(victim)

        def write(name: str) -> c.Callable[[], None]:
            def callback() -> None:
                calls.append(name)
                Session.add(Audit(message=name))

            return callback

        connect(signals.after_commit, killer)
        sa_signals.on_commit(write("first"), session)
        sa_signals.on_commit(write("second"), session)
        session.commit()
        assert calls == ["first", "second"]
        engine = engine_of(Session)
        assert kill_reports == []
        if pre_ping:
            assert failures == []
            assert names(engine, Audit.message) == ["first", "second"]
        else:
            [(_, kwargs)] = failures
            assert_database_error(kwargs["exception"])
            assert names(engine, Audit.message) == ["second"]
        assert names(engine, Item.name) == ["kept"]
        assert_nothing_left(Session, session)


class TestCommitFails:
    @pytest.mark.backends("postgresql")
    def test_deferred_constraint_fails_at_commit(
        self, Session: Scoped, recorder: Recorder, connect: Connector
    ) -> None:
        """The COMMIT itself fails: the driver's IntegrityError, no callback, no after_commit."""
        after_commit = connect.record(signals.after_commit)
        after_rollback = connect.record(signals.after_rollback)
        session = Session()
        with session.begin_nested():
            session.execute(orders.insert().values(id=1, customer_id=404))
            sa_signals.on_commit(recorder.do("order"), session)
        with pytest.raises(sa_exc.IntegrityError) as excinfo:
            session.commit()
        assert_database_error(excinfo.value)
        assert "orders" in str(excinfo.value.orig)
        session.rollback()
        recorder.assert_done([])
        assert after_commit == []
        assert len(after_rollback) == 1
        assert_nothing_left(Session, session)
        session.execute(customers.insert().values(id=1))
        assert_usable(Session, recorder, "again")

    @pytest.mark.backends("postgresql")
    def test_serialization_failure_under_serializable(
        self, make_session: c.Callable[..., Scoped], recorder: Recorder
    ) -> None:
        """Of two conflicting SERIALIZABLE transactions only the survivor's callbacks run."""
        Session = make_session(isolation_level="SERIALIZABLE")
        first = Session()
        second = Session.session_factory()
        try:
            for session, name in ((first, "first"), (second, "second")):
                taken = session.scalar(sa.select(sa.func.count()).select_from(Item))
                session.add(Item(name=name, value=taken or 0))
                session.flush()
                sa_signals.on_commit(recorder.do(name), session)
            first.commit()
            with pytest.raises(sa_exc.OperationalError) as excinfo:
                second.commit()
            assert_database_error(excinfo.value)
            assert type(excinfo.value.orig).__name__ == "SerializationFailure"
            second.rollback()
            recorder.assert_done(["first"])
            assert not second.in_transaction()
            assert_nothing_left(Session, first)
            # The retry sees the committed row and commits.
            second.add(Item(name="second", value=1))
            sa_signals.on_commit(recorder.do("second"), second)
            second.commit()
            recorder.assert_done(["first", "second"])
        finally:
            second.close()
        assert names(engine_of(Session), Item.name) == ["first", "second"]


class TestPoolExhausted:
    POOL: t.ClassVar[dict[str, t.Any]] = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2}

    def test_callbacks_use_the_connection_the_commit_released(
        self, make_session: c.Callable[..., Scoped], recorder: Recorder
    ) -> None:
        """With a pool of one, every callback can still write: the commit gave it back first."""
        Session = make_session(**self.POOL)
        session = Session()
        session.add(Item(name="a"))
        for n in range(3):
            sa_signals.on_commit(lambda n=n: Session.add(Audit(message=str(n))), session)
        session.commit()
        assert names(engine_of(Session), Audit.message) == ["0", "1", "2"]
        assert_nothing_left(Session, session)

    def test_callback_waiting_for_a_second_connection(
        self,
        make_session: c.Callable[..., Scoped],
        recorder: Recorder,
        connect: Connector,
    ) -> None:
        """A callback that times out on the pool fails alone and gives its connection back."""
        Session = make_session(**self.POOL)
        engine = engine_of(Session)
        failures = connect.record(signals.on_commit_failed)

        def greedy() -> None:
            Session.add(Audit(message="greedy"))
            Session.flush()
            with engine.connect():
                pass  # pragma: no cover - the pool has nothing left

        def after() -> None:
            recorder.done.append("after")
            Session.add(Audit(message="after"))

        session = Session()
        session.add(Item(name="a"))
        sa_signals.on_commit(greedy, session)
        sa_signals.on_commit(after, session)
        session.commit()
        [(_, kwargs)] = failures
        assert isinstance(kwargs["exception"], sa_exc.TimeoutError)
        recorder.assert_done(["after"])
        assert names(engine, Audit.message) == ["after"]
        assert_nothing_left(Session, session)

    def test_uncommitted_session_starved_by_another(
        self, make_session: c.Callable[..., Scoped], recorder: Recorder
    ) -> None:
        """A session that cannot get a connection runs nothing; the holder's callbacks run."""
        Session = make_session(**self.POOL)
        holder = Session.session_factory()
        try:
            holder.add(Item(name="holder"))
            holder.flush()
            sa_signals.on_commit(recorder.do("holder"), holder)
            starved = Session()
            starved.add(Item(name="starved"))
            sa_signals.on_commit(recorder.do("starved"), starved)
            with pytest.raises(sa_exc.TimeoutError):
                starved.flush()
            starved.rollback()
            holder.commit()
            recorder.assert_done(["holder"])
            assert_nothing_left(Session, starved)
        finally:
            holder.close()
        assert names(engine_of(Session), Item.name) == ["holder"]
        assert_usable(Session, recorder, "again")
