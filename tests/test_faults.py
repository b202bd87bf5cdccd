"""Faults from the database: killed connections, failing COMMITs, an exhausted pool.

In each case no callback of an uncommitted transaction runs, every callback of a committed one
runs once, nothing is left checked out or registered, and the error raised is the database's.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import logging
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.ext.asyncio as sa_asyncio
import sqlalchemy.orm as sa_orm
import sqlalchemy.pool as sa_pool

import sa_signals
from sa_signals import signals
from sa_signals._core import bridge as _bridge
from sa_signals._core import runner as _runner
from sa_signals._core.state import STATE_ATTR
from tests.conftest import async_url
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
    assert _runner.active_run() is None


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
            assert failures == []  # raised, so not reported as well
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


class TestLayerFails:
    @pytest.mark.backends("sqlite", "postgresql", "mariadb")
    @pytest.mark.internal_error
    def test_a_failure_of_the_layer_after_commit_is_logged_not_raised(
        self,
        Session: Scoped,
        recorder: Recorder,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A bug of the layer at the end of a committed transaction is logged, naming the
        session; commit() returns, the data stays committed, and the session commits again."""

        def broken(*args: object) -> None:
            raise RuntimeError("a bug of the layer")

        with monkeypatch.context() as patch:
            patch.setattr(_bridge, "end_outermost", broken)
            session = Session()
            session.add(Item(name="kept"))
            with caplog.at_level(logging.ERROR, logger="sa_signals"):
                session.commit()
        assert names(engine_of(Session), Item.name) == ["kept"]
        assert "sa_signals failed at the end of a transaction of" in caplog.text
        assert "a bug of the layer" in caplog.text
        assert not session.in_transaction()
        Session.remove()
        assert_usable(Session, recorder, "again")


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


AsyncScoped = sa_asyncio.async_scoped_session[sa_asyncio.AsyncSession]


@pytest.fixture
def make_async_session(
    arunner: asyncio.Runner, backend: str, engine: sa.Engine
) -> c.Iterator[c.Callable[..., AsyncScoped]]:
    """Build an installed ``async_scoped_session`` (per task) on a private async engine."""
    made: list[tuple[AsyncScoped, sa_asyncio.AsyncEngine]] = []

    def make(**pool: t.Any) -> AsyncScoped:
        private = sa_asyncio.create_async_engine(async_url(backend, engine), **pool)
        scoped = sa_asyncio.async_scoped_session(
            sa_asyncio.async_sessionmaker(private), scopefunc=asyncio.current_task
        )
        sa_signals.install(scoped)
        made.append((scoped, private))
        return scoped

    yield make

    async def close() -> None:
        for scoped, private in made:
            for session in list(scoped.registry.registry.values()):
                await session.close()
            await private.dispose()

    for scoped, _ in made:
        sa_signals.uninstall(scoped)
    arunner.run(close())


@pytest.fixture
def AsyncSession(make_async_session: c.Callable[..., AsyncScoped]) -> AsyncScoped:
    return make_async_session()


def async_engine_of(Session: AsyncScoped) -> sa_asyncio.AsyncEngine:
    bind = Session.session_factory.kw["bind"]
    assert isinstance(bind, sa_asyncio.AsyncEngine)
    return bind


async def async_server_pid(session: sa_asyncio.AsyncSession) -> int:
    connection = await session.connection()
    return int((await connection.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one())


def assert_async_database_error(exc: BaseException) -> None:
    """``exc`` is SQLAlchemy's wrapper of asyncpg's own error, not one of the layer's."""
    assert isinstance(exc, sa_exc.DBAPIError)
    assert not isinstance(exc, sa_signals.SaSignalsError)
    # SQLAlchemy's asyncpg adapter re-raises asyncpg's exception as a DBAPI-style one.
    cause = exc.orig.__cause__ if exc.orig is not None else None
    assert type(cause).__module__.split(".")[0] == "asyncpg", repr(cause)


def assert_async_nothing_left(Session: AsyncScoped, original: sa_asyncio.AsyncSession) -> None:
    """No connection checked out, the registry holding ``original`` only, no queued work."""
    assert async_engine_of(Session).sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert list(Session.registry.registry.values()) == [original]
    assert not original.in_transaction()
    state = original.sync_session.__dict__.get(STATE_ATTR)
    assert state is None or (not state.queue and not state.connections)
    assert _runner.active_run() is None


async def anames(Session: AsyncScoped, column: sa.ColumnElement[t.Any]) -> list[t.Any]:
    async with async_engine_of(Session).connect() as connection:
        return sorted(await connection.scalars(sa.select(column)))


def arecord(done: list[str], name: str) -> c.Callable[[], c.Awaitable[None]]:
    async def callback() -> None:
        await asyncio.sleep(0)
        done.append(name)

    callback.__qualname__ = f"arecord({name!r})"
    return callback


async def assert_async_usable(Session: AsyncScoped, done: list[str], name: str) -> None:
    """The session commits again in a new task, and that commit runs its callback once."""

    async def again() -> None:
        session = Session()
        session.add(Item(name=name))
        sa_signals.on_commit(arecord(done, name), session)
        await session.commit()
        await Session.remove()

    await asyncio.create_task(again())
    assert done[-1] == name
    assert done.count(name) == 1


@pytest.mark.backends("postgresql")
class TestAsyncConnectionKilled:
    async def test_killed_before_commit(
        self,
        arunner: asyncio.Runner,
        AsyncSession: AsyncScoped,
        kill: c.Callable[[sa.Connection | int], None],
        connect: Connector,
    ) -> None:
        """COMMIT on a dead asyncpg connection: asyncpg's error, nothing runs, nothing is left."""
        after_commit = connect.record(signals.after_commit)
        done: list[str] = []
        session = AsyncSession()
        session.add(Item(name="lost"))
        await session.flush()
        sa_signals.on_commit(arecord(done, "lost"), session)
        sa_signals.on_commit(lambda: done.append("plain"), session)
        kill(await async_server_pid(session))
        with pytest.raises(sa_exc.DBAPIError) as excinfo:
            await session.commit()
        assert_async_database_error(excinfo.value)
        await session.rollback()
        assert done == []
        assert after_commit == []
        assert_async_nothing_left(AsyncSession, session)
        assert await anames(AsyncSession, Item.name) == []
        await assert_async_usable(AsyncSession, done, "again")
        assert len(after_commit) == 1

    @pytest.mark.parametrize("robust", [True, False])
    async def test_killed_inside_callback_distinct_session(
        self,
        arunner: asyncio.Runner,
        AsyncSession: AsyncScoped,
        kill: c.Callable[[sa.Connection | int], None],
        connect: Connector,
        robust: bool,
    ) -> None:
        """A coroutine callback whose own session dies fails alone; the commit and others stand."""
        failures = connect.record(signals.on_commit_failed)
        done: list[str] = []
        distinct: list[sa_asyncio.AsyncSession] = []

        async def doomed() -> None:
            done.append("doomed")
            own = AsyncSession()
            distinct.append(own)
            own.add(Audit(message="doomed"))
            await own.flush()
            kill(await async_server_pid(own))

        async def survivor() -> None:
            await asyncio.sleep(0)
            done.append("survivor")
            AsyncSession().add(Audit(message="survivor"))

        session = AsyncSession()
        session.add(Item(name="kept"))
        sa_signals.on_commit(doomed, session, robust=robust)
        sa_signals.on_commit(survivor, session)
        if robust:
            await session.commit()
            [(sender, kwargs)] = failures
            assert sender is session
            assert kwargs["callback"] is doomed
            error = kwargs["exception"]
        else:
            with pytest.raises(sa_exc.DBAPIError) as excinfo:
                await session.commit()
            error = excinfo.value
            assert failures == []  # raised, so not reported as well
        assert_async_database_error(error)
        assert done == ["doomed", "survivor"]
        assert distinct[0] is not session
        assert not distinct[0].in_transaction()
        assert len(distinct[0].identity_map) == 0
        assert_async_nothing_left(AsyncSession, session)
        assert await anames(AsyncSession, Item.name) == ["kept"]
        assert await anames(AsyncSession, Audit.message) == ["survivor"]
        await assert_async_usable(AsyncSession, done, "again")


@pytest.fixture
def slow_commits(engine: sa.Engine) -> c.Iterator[sa.Table]:
    """A table whose deferred constraint trigger makes COMMIT sleep on the server."""
    table = sa.Table("slow_commits", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    with engine.begin() as connection:
        table.create(connection)
        connection.exec_driver_sql(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN PERFORM pg_sleep(10); RETURN NULL; END $$"
        )
        connection.exec_driver_sql(
            "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON slow_commits"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
        )
    yield table
    with engine.begin() as connection:
        table.drop(connection)
        connection.exec_driver_sql("DROP FUNCTION slow_commit()")


async def wait_for_statement(engine: sa.Engine, pid: int, statement: str) -> None:
    """Return once the server process ``pid`` is running ``statement``."""
    query = sa.text("SELECT query, state FROM pg_stat_activity WHERE pid = :pid")
    for _ in range(500):
        with engine.connect() as connection:
            row = connection.execute(query, {"pid": pid}).one()
        if row.state == "active" and row.query.rstrip(";") == statement:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{statement} never ran: {row}")  # pragma: no cover


@pytest.mark.backends("postgresql")
class TestAsyncCancelled:
    """``task.cancel()`` while a task awaits ``session.commit()``, at each point it can land."""

    @pytest.mark.parametrize("where", ["pre_save", "before_commit"])
    async def test_cancelled_before_the_commit_statement(
        self,
        arunner: asyncio.Runner,
        AsyncSession: AsyncScoped,
        connect: Connector,
        where: str,
    ) -> None:
        """Cancelled in a receiver awaiting inside the commit: nothing commits or runs."""
        waiting = asyncio.Event()
        done: list[str] = []
        after_commit = connect.record(signals.after_commit)

        async def stall(sender: object, **kwargs: object) -> None:
            waiting.set()
            await asyncio.sleep(30)

        connect(getattr(signals, where), stall, Item if where == "pre_save" else None)
        sessions: list[sa_asyncio.AsyncSession] = []

        async def commit() -> None:
            session = AsyncSession()
            sessions.append(session)
            session.add(Item(name="a"))
            sa_signals.on_commit(arecord(done, "a"), session)
            sa_signals.on_commit(lambda: done.append("plain"), session)
            await session.commit()

        task = asyncio.create_task(commit())
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        connect.disconnect_all()
        [session] = sessions
        await session.rollback()
        assert done == []
        assert after_commit == []
        assert await anames(AsyncSession, Item.name) == []
        assert_async_nothing_left(AsyncSession, session)
        await assert_async_usable(AsyncSession, done, "again")

    async def test_cancelled_while_the_commit_statement_runs(
        self,
        arunner: asyncio.Runner,
        AsyncSession: AsyncScoped,
        engine: sa.Engine,
        slow_commits: sa.Table,
        connect: Connector,
    ) -> None:
        """Cancelled during COMMIT: no callback, no after_commit; the rollback leaves nothing.

        Here the server cancels the COMMIT (its deferred trigger is interrupted), so nothing
        was committed either.
        """
        done: list[str] = []
        after_commit = connect.record(signals.after_commit)
        sessions: list[sa_asyncio.AsyncSession] = []
        pids: list[int] = []
        ready = asyncio.Event()

        async def commit() -> None:
            session = AsyncSession()
            sessions.append(session)
            session.add(Item(name="a"))
            await session.execute(slow_commits.insert().values(id=1))
            pids.append(await async_server_pid(session))
            sa_signals.on_commit(arecord(done, "a"), session)
            sa_signals.on_commit(lambda: done.append("plain"), session)
            ready.set()
            await session.commit()

        task = asyncio.create_task(commit())
        await ready.wait()
        await wait_for_statement(engine, pids[0], "COMMIT")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [session] = sessions
        await session.rollback()
        assert done == []
        assert after_commit == []
        assert await anames(AsyncSession, Item.name) == []
        assert_async_nothing_left(AsyncSession, session)
        await assert_async_usable(AsyncSession, done, "again")

    @pytest.mark.parametrize("robust", [True, False])
    async def test_cancelled_while_a_callback_awaits_its_query(
        self,
        arunner: asyncio.Runner,
        AsyncSession: AsyncScoped,
        engine: sa.Engine,
        caplog: pytest.LogCaptureFixture,
        robust: bool,
    ) -> None:
        """Data committed; the earlier callbacks ran once, the rest are logged, none runs later.

        The interrupted callback's distinct session, cancelled in the middle of a query, is
        rolled back, closed and unswapped, and its connection goes back to the pool.
        """
        done: list[str] = []
        sessions: list[sa_asyncio.AsyncSession] = []
        pids: list[int] = []
        waiting = asyncio.Event()

        async def slow() -> None:
            own = AsyncSession()
            own.add(Audit(message="interrupted"))
            await own.flush()
            pids.append(await async_server_pid(own))
            waiting.set()
            await own.execute(sa.text("SELECT pg_sleep(10)"))
            done.append("slow")  # pragma: no cover - cancelled first

        async def commit() -> None:
            session = AsyncSession()
            sessions.append(session)
            session.add(Item(name="a"))
            sa_signals.on_commit(arecord(done, "first"), session)
            sa_signals.on_commit(slow, session, robust=robust)
            sa_signals.on_commit(arecord(done, "later"), session)
            sa_signals.on_commit(lambda: done.append("plain"), session)
            await session.commit()

        task = asyncio.create_task(commit())
        await waiting.wait()
        await wait_for_statement(engine, pids[0], "SELECT pg_sleep(10)")
        with caplog.at_level(logging.ERROR, logger="sa_signals"):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert done == ["first"]
        [session] = sessions
        assert_async_nothing_left(AsyncSession, session)
        assert await anames(AsyncSession, Item.name) == ["a"]
        assert await anames(AsyncSession, Audit.message) == []
        messages = [record.getMessage() for record in caplog.records]
        assert [m for m in messages if "interrupted" in m] == [
            "commit-time call tests.test_faults.TestAsyncCancelled."
            "test_cancelled_while_a_callback_awaits_its_query.<locals>.slow was interrupted by"
            " CancelledError()",
            "2 commit-time call(s) did not run: the run was interrupted"
            " (tests.test_faults.arecord('later'),"
            " tests.test_faults.TestAsyncCancelled."
            "test_cancelled_while_a_callback_awaits_its_query.<locals>.commit.<locals>.<lambda>)",
        ]
        await assert_async_usable(AsyncSession, done, "again")
        assert done == ["first", "again"]

    async def test_cancelled_while_a_callback_session_commits(
        self,
        arunner: asyncio.Runner,
        AsyncSession: AsyncScoped,
        engine: sa.Engine,
        slow_commits: sa.Table,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Cancelled during the COMMIT of a callback's own session: its work and the rest are lost.

        The callback had returned; the layer was committing its distinct session. The server
        cancels that COMMIT, the interruption is logged, and nothing is left checked out.
        """
        done: list[str] = []
        sessions: list[sa_asyncio.AsyncSession] = []
        pids: list[int] = []
        ready = asyncio.Event()

        async def writes() -> None:
            own = AsyncSession()
            own.add(Audit(message="lost"))
            await own.execute(slow_commits.insert().values(id=1))
            pids.append(await async_server_pid(own))
            done.append("writes")
            ready.set()

        async def commit() -> None:
            session = AsyncSession()
            sessions.append(session)
            session.add(Item(name="a"))
            sa_signals.on_commit(writes, session)
            sa_signals.on_commit(arecord(done, "later"), session)
            await session.commit()

        task = asyncio.create_task(commit())
        await ready.wait()
        await wait_for_statement(engine, pids[0], "COMMIT")
        with caplog.at_level(logging.ERROR, logger="sa_signals"):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert done == ["writes"]
        [session] = sessions
        assert_async_nothing_left(AsyncSession, session)
        assert await anames(AsyncSession, Item.name) == ["a"]
        assert await anames(AsyncSession, Audit.message) == []
        assert "writes was interrupted by CancelledError()" in caplog.text
        assert "1 commit-time call(s) did not run" in caplog.text
        await assert_async_usable(AsyncSession, done, "again")

    async def test_cancelled_while_an_after_commit_receiver_awaits(
        self,
        arunner: asyncio.Runner,
        AsyncSession: AsyncScoped,
        connect: Connector,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Committed; the receiver's writes roll back, every callback is logged as not run."""
        done: list[str] = []
        sessions: list[sa_asyncio.AsyncSession] = []
        waiting = asyncio.Event()

        async def stall(sender: object, **kwargs: object) -> None:
            AsyncSession().add(Audit(message="receiver"))
            await AsyncSession().flush()
            waiting.set()
            await asyncio.sleep(30)

        connect(signals.after_commit, stall)

        async def commit() -> None:
            session = AsyncSession()
            sessions.append(session)
            session.add(Item(name="a"))
            sa_signals.on_commit(arecord(done, "a"), session)
            await session.commit()

        task = asyncio.create_task(commit())
        await waiting.wait()
        with caplog.at_level(logging.ERROR, logger="sa_signals"):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        connect.disconnect_all()
        assert done == []
        [session] = sessions
        assert_async_nothing_left(AsyncSession, session)
        assert await anames(AsyncSession, Item.name) == ["a"]
        assert await anames(AsyncSession, Audit.message) == []
        assert "1 commit-time call(s) did not run" in caplog.text
        assert "arecord('a')" in caplog.text
        await assert_async_usable(AsyncSession, done, "again")
