"""What ``install()`` recorded for a session class, and what one session's transaction holds.

Plain bookkeeping: nothing here runs, sends or listens.
"""

from __future__ import annotations

import collections.abc as c
import inspect
import sys
import typing as t

import sqlalchemy.orm as sa_orm

if t.TYPE_CHECKING:
    import types

    import sqlalchemy as sa

    from ..typing import AsyncSessionFactory
    from .aio import AsyncSupport
    from .records import Record

INSTALLATION_ATTR = "_sa_signals_installation"
"""Class attribute set on an installed session class; subclasses inherit it."""

STATE_ATTR = "_sa_signals_state"
"""Instance attribute holding a session's :class:`SessionState`; None on an installed class."""

COMMITTED_ATTR = "_sa_signals_committed"
"""Instance attribute: the transaction the session committed last (a savepoint or the outermost
one), set by the ``after_commit`` listener; popped when the outermost one ends."""

TRANSACTIONAL_ATTR = "_sa_signals_transactional"
"""Instance attribute set on a Connection in the transactional test mode: a session's outermost
commit on it (a SAVEPOINT release) counts as a real COMMIT."""

Item: t.TypeAlias = c.Callable[[], object]
"""One call to make after a commit: an on_commit callback as registered (when robust), or a
:class:`~sa_signals._core.work.Work`."""


class Observer(t.Protocol):
    """What watches the on_commit queues of sessions: a test's capture."""

    def watch(self, state: SessionState, session: sa_orm.Session, start: int) -> None:
        """Watch the queue of ``session`` (whose state is ``state``) from ``start`` on."""

    def ended(
        self, state: SessionState, session: sa_orm.Session, items: list[Item], outcome: Outcome
    ) -> list[Item]:
        """Observe the callbacks ``items`` an outermost transaction left; return those to run
        or hold as usual (the others are the observer's now)."""


Outcome: t.TypeAlias = t.Literal["committed", "held", "rolled back"]
"""How a session's outermost transaction ended for its callbacks: they run now, wait for a
caller's Connection to commit, or are dropped."""


class Watch:
    """One observer of one session's queue, and where the part it watches begins."""

    __slots__ = ("observer", "start")

    def __init__(self, observer: Observer, start: int) -> None:
        self.observer = observer
        self.start = start


class Installation:
    """What ``install()`` recorded for one session class."""

    __slots__ = (
        "active",
        "aio",
        "maker",
        "observers",
        "robust",
        "scoped",
        "session_class",
        "track_changes",
    )

    def __init__(
        self,
        session_class: type[sa_orm.Session],
        maker: sa_orm.sessionmaker[t.Any] | None,
        scoped: sa_orm.scoped_session[t.Any] | None,
        robust: bool,
        track_changes: bool = False,
        aio: AsyncSupport | None = None,
    ) -> None:
        self.session_class = session_class
        self.maker = maker
        self.scoped = scoped
        self.robust = robust
        self.track_changes = track_changes
        self.aio = aio
        """Set for an ``async_sessionmaker`` or ``async_scoped_session`` install."""
        self.active = True
        """False once ``uninstall()`` removed it: a session state made before is stale."""
        self.observers: list[Observer] = []
        """Observers of every session whose state is made meanwhile (factory captures)."""

    def make_session(self, origin: sa_orm.Session) -> sa_orm.Session:
        """Return a fresh session configured like ``origin``."""
        connection = transactional_connection(origin)
        if connection is not None:
            # Join the test's outer transaction as the origin did, so the test's data is seen.
            factory = self.maker or self.session_class
            joined: sa_orm.Session = factory(
                bind=connection, join_transaction_mode="create_savepoint"
            )
            return joined
        if self.maker is not None:
            session: sa_orm.Session = self.maker()
            return session
        # A bare Session class install: reuse the origin's binds, nothing else is known.
        binds: dict[t.Any, t.Any] = getattr(origin, "_Session__binds", {})
        return self.session_class(bind=origin.bind, binds=dict(binds) or None)


def async_api() -> types.ModuleType | None:
    """Return ``sqlalchemy.ext.asyncio`` if it was imported; no async object exists before.

    Checking this instead of importing it keeps greenlet optional for sync users.
    """
    return sys.modules.get("sqlalchemy.ext.asyncio")


def is_async_factory(target: object) -> t.TypeGuard[AsyncSessionFactory]:
    """Whether ``target`` is an ``async_sessionmaker`` or an ``async_scoped_session``."""
    api = async_api()
    return api is not None and isinstance(
        target, (api.async_sessionmaker, api.async_scoped_session)
    )


def _transaction_fields_known() -> bool:
    # Session.in_transaction() is `self._transaction is not None`, get_nested_transaction()
    # returns `self._nested_transaction` and SessionTransaction.parent `self._parent`
    # (SQLAlchemy 2.0 and 2.1); checked once here, so that a different layout makes the hot
    # paths fall back to those methods.
    probe = sa_orm.Session()
    fields = vars(probe)
    if (
        fields.get("_transaction", 0) is not None
        or fields.get("_nested_transaction", 0) is not None
    ):
        return False
    try:
        root = probe.begin()
        savepoint = probe.begin_nested()
        return (
            probe.__dict__.get("_transaction") is savepoint
            and probe.get_transaction() is root
            and probe.__dict__.get("_nested_transaction") is savepoint
            and probe.get_nested_transaction() is savepoint
            and savepoint.__dict__.get("_parent") is root
            and root.__dict__.get("_parent", 0) is None
        )
    finally:
        probe.close()


TRANSACTION_FIELDS_KNOWN = _transaction_fields_known()
"""Whether the hot paths may read ``Session._transaction`` / ``_nested_transaction`` and
``SessionTransaction._parent``: an attribute read instead of a method call, on every commit,
``on_commit()`` and callback run."""

CONNECTIONS_KNOWN = isinstance(getattr(sa_orm.SessionTransaction, "connections", None), property)
"""Whether ``SessionTransaction.connections`` (SQLAlchemy 2.1.7) tells which connections the
outermost transaction used, after it ended; before that, an ``after_begin`` listener records
them in :attr:`SessionState.connections`."""


def installation_for(session: sa_orm.Session) -> Installation | None:
    """Return the installation covering ``session``'s class, or None."""
    inst: Installation | None = getattr(type(session), INSTALLATION_ATTR, None)
    return inst


def transactional_connection(session: sa_orm.Session) -> sa.Connection | None:
    """Return the Connection ``session`` is bound to if it is in the transactional test mode."""
    bind = session.bind
    if bind is not None and bind.__dict__.get(TRANSACTIONAL_ATTR):
        return bind  # type: ignore[return-value]
    return None


NOBODY: t.Final = object()
"""``SessionState.session`` of a state the fast path of ``on_commit()`` does not use."""

NO_TRANSACTION: t.Final = object()
"""``SessionState.current`` when no transaction of the session can match (never None, which
is what ``Session._transaction`` holds outside a transaction)."""


NO_FIELDS: t.Final[dict[str, t.Any]] = {"_transaction": NO_TRANSACTION}
"""``SessionState.fields`` of a state the fast path of ``on_commit()`` does not use."""


class SessionState:
    """What the layer tracks for one session during its outermost transaction.

    Everything but the watches is cleared when the outermost transaction ends, so nothing
    outlives it.
    """

    __slots__ = (
        "changes",
        "connections",
        "current",
        "fields",
        "installation",
        "marks",
        "origins",
        "plain",
        "public",
        "queue",
        "refused",
        "session",
        "watches",
    )

    def __init__(self, installation: Installation | None) -> None:
        self.installation = installation
        """The installation covering the session when the state was made."""
        self.session: object = NOBODY
        """The session, while ``on_commit()``'s fast path may append to :attr:`queue`."""
        self.public: object = NOBODY
        """Meanwhile, the ``AsyncSession`` of an async install's session: the fast path takes
        it as well (its ``sync_session`` never changes)."""
        self.refused = inspect.CO_COROUTINE
        """Meanwhile, the code flags of the functions the fast path leaves to the full path:
        coroutine functions, unless the session is an async install's, which awaits them."""
        self.current: object = NO_TRANSACTION
        """The session's innermost transaction (``Session._transaction``) when a callback was
        last queued by the full path: while it stays innermost, the fast path appends."""
        self.fields: dict[str, t.Any] = NO_FIELDS
        """The session's ``__dict__``, where the fast path reads ``_transaction``: a dict
        lookup costs less than the attribute read on a ``Session``."""
        self.queue: list[Item] = []
        """The on_commit callbacks, in registration order."""
        self.marks: list[tuple[sa_orm.SessionTransaction, int]] = []
        """``(savepoint, start)``: ``queue[start:]`` was registered inside open ``savepoint``,
        up to the next mark; one per open savepoint that holds callbacks, innermost last."""
        self.plain: object = None
        """The callback queued last if it is no coroutine function: not checked again when it is
        registered again (it is held by the queue anyway)."""
        self.watches: list[Watch] = []
        """The observers of the queue (test captures), each from its start."""
        self.changes: list[Record] = []
        """The writes of the transaction, in the order they were made."""
        self.connections: list[sa.Connection] = []
        """The outermost transaction's connections, where SQLAlchemy does not keep them."""
        self.origins: dict[int, tuple[object, object]] | None = None
        """What the deletes of the flush under way started from (see :mod:`.deletes`)."""


def state_of(session: sa_orm.Session) -> SessionState:
    """Return ``session``'s state, creating it on first use."""
    state: SessionState | None = session.__dict__.get(STATE_ATTR)
    if state is None:
        installation = installation_for(session)
        state = session.__dict__[STATE_ATTR] = SessionState(installation)
        if installation is not None and installation.observers:
            for observer in installation.observers:
                observer.watch(state, session, 0)
    return state


def current_transaction(session: sa_orm.Session) -> sa_orm.SessionTransaction | None:
    """Return the innermost savepoint of ``session``, else its outermost transaction."""
    return session.get_nested_transaction() or session.get_transaction()
