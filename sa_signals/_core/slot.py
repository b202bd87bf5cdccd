"""The distinct session a commit-time call runs in, and the registry swap behind it."""

from __future__ import annotations

import collections.abc as c
import contextlib
import sys
import threading
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
import sqlalchemy.util as sa_util

from .._log import logger
from ..exceptions import CoroutineMisuseError

if t.TYPE_CHECKING:
    from .state import Installation


def _local_layout_known() -> bool:
    # ThreadLocalRegistry keeps its object in a threading.local, as attribute "value"; checked
    # once here, so that a different layout falls back to the registry's own has().
    probe: sa_util.ThreadLocalRegistry[object] = sa_util.ThreadLocalRegistry(object)
    local = getattr(probe, "registry", None)
    if not isinstance(local, threading.local) or "value" in local.__dict__:
        return False
    made = probe()
    return local.__dict__.get("value") is made and probe.has()


_LOCAL_LAYOUT_KNOWN = _local_layout_known()


def _scoped_layout_known() -> bool:
    # ScopedRegistry keeps its objects in a dict, under what its scopefunc returns; checked
    # once here, so that a different layout falls back to the registry's own has().
    probe: sa_util.ScopedRegistry[object] = sa_util.ScopedRegistry(object, lambda: "key")
    objects = getattr(probe, "registry", None)
    if not isinstance(objects, dict) or objects:
        return False
    made = probe()
    return objects.get("key") is made and probe.has()


_SCOPED_LAYOUT_KNOWN = _scoped_layout_known()


def _thread_local_of(registry: object) -> threading.local | None:
    """Return the ``threading.local`` a ``scoped_session``'s thread-local registry uses.

    Looking into its ``__dict__`` tells whether the registry holds a session without the
    ``AttributeError`` that ``has()`` raises and catches when it holds none (~0.25 us).
    """
    if _LOCAL_LAYOUT_KNOWN and type(registry) is sa_util.ThreadLocalRegistry:
        local = getattr(registry, "registry", None)
        if isinstance(local, threading.local):
            return local
    return None


def _by_task_of(registry: object) -> dict[object, object] | None:
    """Return the dict of an ``async_scoped_session``'s registry scoped by asyncio task.

    Its key is the same for all the items of a run (one task), so looking it up in the dict
    tells whether the registry holds a session without a call of the ``scopefunc`` per item.
    """
    if _SCOPED_LAYOUT_KNOWN and type(registry) is sa_util.ScopedRegistry:
        aio = sys.modules.get("asyncio")
        objects = getattr(registry, "registry", None)
        if aio is not None and registry.scopefunc is aio.current_task and type(objects) is dict:
            return objects
    return None


class RegistrySwap:
    """A scoped registry emptied for the items of one run and put back as it was afterwards.

    Emptying it once per run rather than once per item keeps an item that never touches the
    database cheap. It is put back before a failure is reported, before a batch of another
    installation runs, and at the end of the run, so nothing outside the items sees it empty.
    """

    __slots__ = ("active", "by_task", "had_previous", "local", "previous", "registry")

    def __init__(self, registry: t.Any) -> None:
        self.registry = registry
        self.local = _thread_local_of(registry)
        self.by_task = None if self.local is not None else _by_task_of(registry)
        self.active = False
        self.had_previous = False
        self.previous: object = None

    def empty(self) -> None:
        """Save what the registry holds and empty it, unless it is emptied already."""
        if self.active:
            return
        registry = self.registry
        self.had_previous = registry.has()
        if self.had_previous:
            self.previous = registry()
            registry.clear()
        self.active = True

    def restore(self) -> None:
        """Put back what the registry held before :meth:`empty`."""
        if not self.active:
            return
        self.active = False
        if self.had_previous:
            self.registry.set(self.previous)
        else:
            self.registry.clear()
        self.previous = None


@contextlib.contextmanager
def registry_holding(registry: t.Any, session: object) -> c.Iterator[None]:
    """Set ``session`` into a scoped ``registry`` for the block; put back what it held after."""
    swap = RegistrySwap(registry)
    swap.empty()
    registry.set(session)
    try:
        yield
    finally:
        swap.restore()


class Slot:
    """The distinct session of the item being run, made on first use.

    One slot serves the items of a batch in turn, each getting a session of its own: a
    ``Session``, or for an async install an ``AsyncSession``, committed and closed by awaiting.
    With a scoped registry (swapped by :attr:`swap`), the session is made through it, so that
    calling the ``scoped_session`` inside the item returns it.
    """

    __slots__ = (
        "aio",
        "bind",
        "by_task",
        "installation",
        "key",
        "local",
        "origin",
        "registry",
        "scoped",
        "session",
        "swap",
    )

    def __init__(
        self,
        installation: Installation,
        origin: sa_orm.Session,
        swap: RegistrySwap | None,
        away_from: sa.Connection | None = None,
    ) -> None:
        self.installation = installation
        self.aio = installation.aio
        self.origin = origin
        self.bind: t.Any = None
        """The bind to give distinct sessions in place of the Connection they would use."""
        if away_from is not None and origin.bind is away_from:
            self.bind = away_from.engine
            if self.aio is not None:
                self.bind = sys.modules["sqlalchemy.ext.asyncio"].AsyncEngine(away_from.engine)
        self.session: t.Any = None
        self.swap = swap
        self.scoped: t.Any = None
        self.registry: t.Any = None
        self.local: threading.local | None = None
        self.by_task: dict[object, object] | None = None
        self.key: object = None
        """The key of this task in :attr:`by_task`: a slot serves the items of one run."""
        if swap is not None:
            # Pinned for the whole batch, like the swap.
            aio = self.aio
            self.scoped = installation.scoped if aio is None else aio.scoped
            self.registry = swap.registry
            self.local = swap.local
            self.by_task = swap.by_task
            if self.by_task is not None:
                self.key = self.registry.scopefunc()

    def get(self) -> sa_orm.Session:
        """Return the distinct ``Session`` (the sync one of an ``AsyncSession``)."""
        made = self.get_made()
        session: sa_orm.Session = made if self.aio is None else made.sync_session
        return session

    def get_made(self) -> t.Any:
        """Return the distinct session as made: a ``Session`` or an ``AsyncSession``."""
        scoped = self.scoped
        bind = self.bind
        if scoped is not None:
            return scoped() if bind is None else scoped(bind=bind)
        if self.session is None:
            aio = self.aio
            if bind is not None:
                factory = self.installation.maker or self.installation.session_class
                self.session = factory(bind=bind) if aio is None else aio.maker(bind=bind)
            elif aio is None:
                self.session = self.installation.make_session(self.origin)
            else:
                self.session = aio.maker()
        return self.session

    def created(self) -> t.Any:
        """Return the distinct session if the item asked for one, else None."""
        registry = self.registry
        if registry is None:
            return self.session
        local = self.local
        if local is not None:
            return local.__dict__.get("value")
        by_task = self.by_task
        if by_task is not None:
            return by_task.get(self.key)
        return registry() if registry.has() else None

    def holds(self, session: sa_orm.Session) -> bool:
        """Whether ``session`` is (the sync session of) this slot's distinct session."""
        made = self.created()
        if made is None:
            return False
        return (made if self.aio is None else made.sync_session) is session

    def finish(self, made: t.Any) -> None:
        """Commit ``made``, the distinct session the item made, then close it."""
        aio = self.aio
        try:
            if made.in_transaction():
                if aio is None:
                    made.commit()
                elif aio.can_await():
                    # AsyncSession.commit() runs this in a greenlet of its own; in SQLAlchemy's
                    # greenlet already, its I/O is awaited from here, without the switches.
                    made.sync_session.commit()
                else:
                    try:
                        aio.await_(made.commit())
                    except sa_exc.MissingGreenlet as exc:
                        msg = (
                            "a callback run at once by on_commit() outside a transaction wrote"
                            " through its distinct AsyncSession, which cannot be committed"
                            " outside SQLAlchemy's greenlet; register it with"
                            " `await sa_signals.on_commit_async(...)`."
                        )
                        raise CoroutineMisuseError(msg) from exc
        finally:
            self._close(made)

    def release(self) -> None:
        """Close the distinct session the item made, if any. Never raises."""
        made = self.created()
        if made is not None:
            self._close(made)

    def _close(self, made: t.Any) -> None:
        # Empties the registry again for the next item; the slot serves a whole batch.
        try:
            if self.aio is None:
                made.close()
            else:
                # What AsyncSession.close() runs in a greenlet of its own: in SQLAlchemy's
                # greenlet already, its I/O is awaited from here, without the switches.
                made.sync_session.close()
        except Exception:
            logger.exception("closing the distinct session %r failed", made)
        finally:
            self.session = None
            if self.registry is not None:
                self.registry.clear()
