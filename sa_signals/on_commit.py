"""``on_commit()``: run a callback once the outermost transaction of a session committed."""

from __future__ import annotations

import types
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from ._core import external
from ._core import queue as _queue
from ._core.bridge import installed
from ._core.commit import observe
from ._core.install import installation_of
from ._core.queue import push
from ._core.runner import run
from ._core.state import async_api
from ._core.state import installation_for
from ._core.state import STATE_ATTR
from ._core.state import state_of
from ._core.state import TRANSACTIONAL_ATTR
from ._core.work import Work
from ._dispatch import is_coroutine_function
from .exceptions import CoroutineMisuseError
from .exceptions import ExternalTransactionError
from .exceptions import NotInstalledError

if t.TYPE_CHECKING:
    from ._core.state import Item
    from .typing import Callback
    from .typing import SessionTarget

_FunctionType = types.FunctionType
_Session = sa_orm.Session


def on_commit(
    callback: Callback, target: SessionTarget | None = None, /, robust: bool = True
) -> None:
    """Run ``callback`` after the outermost transaction of ``target`` truly commits.

    ``target`` is a session, or a ``scoped_session`` standing for its current session; an
    ``AsyncSession`` or ``async_scoped_session`` also takes coroutine functions, awaited
    before ``await commit()`` returns (see ``docs/asyncio.md``). Left out, it is the one
    installed ``scoped_session`` or ``async_scoped_session``, as Django's ``on_commit(func)``
    uses the current connection; with none or several installed, the session must be given.

    The callback is dropped if that transaction, or a savepoint it was registered in, rolls
    back. It runs with no arguments inside a distinct session (see :func:`current_session`).
    Registered while the session is not in a transaction, it runs at once. A session joined
    into a Connection's transaction that its caller began (``Session(bind=conn)``) commits
    nothing: the callback waits for that Connection's COMMIT (see ``docs/guarantees.md``).

    With ``robust=True`` an exception from the callback is logged and sent on
    :data:`~sa_signals.signals.on_commit_failed`; with ``robust=False`` it propagates out of
    ``commit()`` once every other callback has run. The data stays committed either way.
    ``robust`` may be passed by position, as with Django's ``on_commit(func, using, robust)``:
    a function without keyword-only parameters is the cheaper call in CPython.
    """
    # The hot path, inlined: a plain function (no coroutine flag, unless the install is async)
    # queued on the session on_commit() queued on last, whose innermost transaction is the same
    # as then. The full path (_register) checks everything else, and lets this one take the
    # next registrations (see _core.queue.last). It reads no Session attribute: _transaction
    # comes from the session's __dict__, a cheaper lookup. An AsyncSession stands for its sync
    # session.
    state = _queue.last
    if (
        (target is state.session or target is state.public)
        and state.fields["_transaction"] is state.current
        and robust is True
        and (
            callback is state.plain
            or (type(callback) is _FunctionType and not callback.__code__.co_flags & state.refused)
        )
    ):
        state.queue.append(callback)
        return
    session = _session_of(target)
    if session is not target and session is state.session:
        # A scoped_session (or an AsyncSession) standing for the session of the fast path.
        on_commit(callback, session, robust=robust)
        return
    _register(callback, session, robust)


def _register(callback: Callback, session: sa_orm.Session, robust: bool) -> None:
    """Check ``callback`` and ``session`` fully, then queue, hold or run ``callback``."""
    if not callable(callback):
        msg = f"on_commit() needs a callable, got {callback!r}"
        raise TypeError(msg)
    item = callback if robust is True else _strict(callback, robust)
    installation = installation_for(session)
    if installation is None:
        msg = (
            f"{type(session).__name__} is not installed: call sa_signals.install() on its"
            " sessionmaker or scoped_session before registering on_commit callbacks."
        )
        raise NotInstalledError(msg)
    aio = installation.aio
    is_coroutine = is_coroutine_function(callback)
    if is_coroutine and aio is None:
        msg = (
            f"on_commit() got the coroutine function {callback!r} for a synchronous Session,"
            " where nothing can await it; pass a plain function."
        )
        raise CoroutineMisuseError(msg)
    if not session.in_transaction():
        bind = session.bind
        if (
            isinstance(bind, sa.Connection)
            and bind.in_transaction()
            and not bind.__dict__.get(TRANSACTIONAL_ATTR)
        ):
            # The session will join the transaction its caller began: wait for its COMMIT.
            if not external.can_hold():
                msg = (
                    "on_commit() cannot follow the COMMIT of the Connection this session is"
                    " bound to, whose transaction its caller began; register the callback"
                    " after that Connection commits, or bind the session to the Engine."
                )
                raise ExternalTransactionError(msg)
            items = [item]
            state = state_of(session)
            if state.watches:
                items = observe(state, session, items, "held")
            if items:
                external.hold([bind], items, session, installation)
            return
        if is_coroutine and aio is not None and not aio.can_await():
            msg = (
                f"on_commit() cannot await the coroutine function {callback!r} now: the"
                " AsyncSession is not in a transaction, so it would run at once; use"
                " `await sa_signals.on_commit_async(callback, session)`."
            )
            raise CoroutineMisuseError(msg)
        items = [item]
        # A capture watching the session, or watching every new one, lists what runs at once.
        watched = state_of(session) if installation.observers else session.__dict__.get(STATE_ATTR)
        if watched is not None and watched.watches:
            items = observe(watched, session, items, "committed")
        error = run(items, session, installation)
        if error is not None:
            raise error
        return
    state = state_of(session)
    state.installation = installation  # made before an uninstall(), a state is stale
    push(state, session.get_nested_transaction(), item)
    if not is_coroutine:
        state.plain = callback
    _queue.remember(state, session, aio)


def _strict(callback: Callback, robust: object) -> Item:
    """Return the item of a callback registered with ``robust`` other than True."""
    if robust is not False:
        msg = f"on_commit() takes robust=True or robust=False, got robust={robust!r}"
        raise TypeError(msg)
    return Work(callback, False)


def _session_of(target: object) -> sa_orm.Session:
    if isinstance(target, _Session):
        return target
    if isinstance(target, sa_orm.scoped_session):
        session: sa_orm.Session = target()
        return session
    api = async_api()
    if api is not None:
        if isinstance(target, api.AsyncSession):
            session = target.sync_session
            return session
        if isinstance(target, api.async_scoped_session):
            session = target().sync_session
            return session
    if target is None:
        return _session_of(_the_scoped_session())
    msg = (
        "on_commit() needs a Session or a scoped_session (or an AsyncSession or an"
        f" async_scoped_session), got {target!r}"
    )
    raise TypeError(msg)


def _the_scoped_session() -> object:
    """Return the one installed ``scoped_session`` or ``async_scoped_session``."""
    # installation_of() is None for a class uninstalled meanwhile.
    installations = [each for each in map(installation_of, installed()) if each is not None]
    if not installations:
        msg = (
            "on_commit() was given no session and no session factory is installed: call"
            " sa_signals.install() on your scoped_session, or pass the session."
        )
        raise NotInstalledError(msg)
    scoped: list[object] = []
    for installation in installations:
        if installation.scoped is not None:
            scoped.append(installation.scoped)
        elif installation.aio is not None and installation.aio.scoped is not None:
            scoped.append(installation.aio.scoped)
    if len(scoped) != 1:
        found = "none is" if not scoped else f"{len(scoped)} are"
        msg = (
            "on_commit() without a session registers on the current session of the installed"
            f" scoped_session, but {found} installed: pass the session,"
            " on_commit(callback, session)."
        )
        raise TypeError(msg)
    return scoped[0]
