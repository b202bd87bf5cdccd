"""``install()`` and ``uninstall()``: which session classes the layer listens on."""

from __future__ import annotations

import typing as t

import sqlalchemy.orm as sa_orm

from ..exceptions import InstallError
from . import bridge
from . import changes
from . import queue
from .aio import AsyncSupport
from .aio import MISSING
from .state import Installation
from .state import INSTALLATION_ATTR
from .state import is_async_factory
from .state import STATE_ATTR

if t.TYPE_CHECKING:
    from ..typing import AsyncSessionFactory
    from ..typing import InstallTarget


def install(target: InstallTarget, /, *, robust: bool = True, track_changes: bool = False) -> None:
    """Send sa_signals signals and run on_commit callbacks for sessions made by ``target``.

    ``target`` is a ``scoped_session``, a ``sessionmaker`` or a ``Session`` subclass, or an
    ``async_scoped_session`` or ``async_sessionmaker`` (see ``docs/asyncio.md``). Installing
    the same target again does nothing. Give the ``scoped_session`` when there is one: its
    registry is where callbacks find their distinct session.

    ``robust`` decides for the receivers of the commit- and rollback-time signals
    (``after_commit``, ``models_committed``, ``committed``, ``after_rollback``,
    ``models_rolled_back``, ``rolled_back``) that were connected without a ``robust=`` of their
    own: with True (the default) a failure is logged and sent on ``receiver_failed`` and the
    others run; with False it is raised, out of ``commit()`` after the others ran, or out of
    ``rollback()`` at once. Receivers of the signals sent inside the transaction (and
    ``pre_init`` / ``post_init``) veto either way unless connected with ``robust=True``; see
    ``docs/signals.md``.

    With ``track_changes=True``, the writes of every transaction are recorded for the change
    signals (``models_committed`` ...) even while they have no receivers; otherwise recording
    happens only while one of them has a receiver.
    """
    if not isinstance(robust, bool) or not isinstance(track_changes, bool):
        msg = (
            f"install() takes robust and track_changes as True or False, got"
            f" robust={robust!r}, track_changes={track_changes!r}"
        )
        raise TypeError(msg)
    with bridge.lock():
        aio = None
        if is_async_factory(target):
            aio = async_support(target, create=True)
            assert aio is not None
            session_class, maker, scoped = aio.session_class, None, None
        else:
            session_class, maker, scoped = _resolve(target)
        existing: Installation | None = session_class.__dict__.get(INSTALLATION_ATTR)
        if existing is not None:
            if existing.aio is not None and aio is not None:
                _check_same_async(existing, target, robust)
            else:
                _check_same(existing, scoped, robust, target)
                if scoped is not None:
                    existing.scoped = scoped
            if track_changes and not existing.track_changes:
                existing.track_changes = True
                changes.force_tracking(1)
                bridge.sync_listeners()
            return
        for other in bridge.installed():
            if issubclass(session_class, other) or issubclass(other, session_class):
                msg = (
                    f"{target!r} overlaps the installation on {other.__name__}: sessions of"
                    " one class would be handled twice. Install either the base class or its"
                    " factories, not both."
                )
                raise InstallError(msg)
        installation = Installation(session_class, maker, scoped, robust, track_changes, aio)
        setattr(session_class, INSTALLATION_ATTR, installation)
        # A class default, so that on_commit()'s hot path finds None, not an AttributeError,
        # on a session that has no state yet.
        setattr(session_class, STATE_ATTR, None)
        if track_changes:
            changes.force_tracking(1)
        bridge.attach(session_class)
        if aio is not None:
            aio.apply()


def uninstall(target: InstallTarget, /) -> None:
    """Remove every listener ``install(target)`` added. Does nothing if it was not installed.

    Callbacks still queued on open transactions of its sessions will not run. Uninstalling a
    ``sessionmaker`` whose ``scoped_session`` was installed raises: uninstall that.
    """
    with bridge.lock():
        aio = None
        if is_async_factory(target):
            aio = async_support(target, create=False)
            if aio is None:
                return
            session_class = aio.session_class
        else:
            session_class, _, scoped = _resolve(target)
            installation = session_class.__dict__.get(INSTALLATION_ATTR)
            if (
                installation is not None
                and installation.scoped is not None
                and scoped is None
                and not isinstance(target, type)
            ):
                msg = (
                    f"{target!r} was installed through {installation.scoped!r}: uninstall the"
                    " scoped_session, which also stops its sessionmaker's sessions."
                )
                raise InstallError(msg)
        if session_class not in bridge.installed():
            return
        if aio is not None:
            aio.restore()
        installation = session_class.__dict__[INSTALLATION_ATTR]
        if installation.track_changes:
            changes.force_tracking(-1)
        installation.active = False
        queue.forget_all()
        delattr(session_class, INSTALLATION_ATTR)
        delattr(session_class, STATE_ATTR)
        bridge.detach(session_class)


def installation_of(target: object) -> Installation | None:
    """Return the installation covering the sessions ``target`` makes, or None.

    ``target`` is anything :func:`install` takes.
    """
    if is_async_factory(target):
        aio = async_support(target, create=False)
        if aio is None:
            return None
        session_class = aio.session_class
    else:
        session_class, _, _ = _resolve(target)
    installation: Installation | None = getattr(session_class, INSTALLATION_ATTR, None)
    return installation


def async_support(target: AsyncSessionFactory, *, create: bool) -> AsyncSupport | None:
    """Return the install of ``target``; a new, not yet applied one if ``create`` is set."""
    import sqlalchemy.ext.asyncio as sa_asyncio  # the user imported it: an async factory exists

    if isinstance(target, sa_asyncio.async_scoped_session):
        maker = target.session_factory
        scoped: sa_asyncio.async_scoped_session[t.Any] | None = target
        if not isinstance(maker, sa_asyncio.async_sessionmaker):
            msg = (
                f"the async_scoped_session {target!r} was built on {maker!r}; install() needs"
                " one built on an async_sessionmaker."
            )
            raise InstallError(msg)
    else:
        maker, scoped = target, None
    previous = maker.kw.get("sync_session_class", MISSING)
    current: type[sa_orm.Session] = (
        maker.class_.sync_session_class if previous is MISSING else previous
    )
    installation: Installation | None = current.__dict__.get(INSTALLATION_ATTR)
    if (
        installation is not None
        and installation.aio is not None
        and installation.aio.maker is maker
    ):
        return installation.aio
    if not create:
        return None
    subclass = type(current.__name__, (current,), {"__module__": current.__module__})
    return AsyncSupport(maker, scoped, subclass, previous)


def _check_same_async(existing: Installation, target: t.Any, robust: bool) -> None:
    assert existing.aio is not None
    if existing.robust != robust:
        msg = f"{target!r} is already installed with robust={existing.robust}; uninstall it first."
        raise InstallError(msg)
    scoped = None if target is existing.aio.maker else target
    if (
        scoped is not None
        and existing.aio.scoped is not None
        and existing.aio.scoped is not scoped
    ):
        msg = (
            f"{target!r} shares its async_sessionmaker with an async_scoped_session that is"
            " already installed; give each async_scoped_session its own async_sessionmaker."
        )
        raise InstallError(msg)
    if scoped is not None:
        existing.aio.scoped = scoped


def _check_same(
    existing: Installation,
    scoped: sa_orm.scoped_session[t.Any] | None,
    robust: bool,
    target: object,
) -> None:
    if existing.robust != robust:
        msg = f"{target!r} is already installed with robust={existing.robust}; uninstall it first."
        raise InstallError(msg)
    if scoped is not None and existing.scoped is not None and existing.scoped is not scoped:
        msg = (
            f"{target!r} shares its sessionmaker with a scoped_session that is already"
            " installed; give each scoped_session its own sessionmaker."
        )
        raise InstallError(msg)


def _resolve(
    target: object,
) -> tuple[
    type[sa_orm.Session], sa_orm.sessionmaker[t.Any] | None, sa_orm.scoped_session[t.Any] | None
]:
    if isinstance(target, sa_orm.scoped_session):
        factory = target.session_factory
        if not isinstance(factory, sa_orm.sessionmaker):
            msg = (
                f"the scoped_session {target!r} was built on {factory!r}; install() needs one"
                " built on a sessionmaker."
            )
            raise InstallError(msg)
        return factory.class_, factory, target
    if isinstance(target, sa_orm.sessionmaker):
        return target.class_, target, None
    if isinstance(target, type) and issubclass(target, sa_orm.Session):
        return target, None, None
    hint = ""
    if isinstance(target, sa_orm.Session):
        hint = " To cover one session, install the sessionmaker or scoped_session it came from."
    msg = (
        "install() takes a scoped_session, a sessionmaker, a Session subclass, an"
        " async_scoped_session or an async_sessionmaker,"
        f" got {target!r}.{hint}"
    )
    raise InstallError(msg)
