"""The distinct session a commit-time call runs in, and the registry swap behind it."""

from __future__ import annotations

import threading
import typing as t

import sqlalchemy.orm as sa_orm
import sqlalchemy.util as sa_util

from ._dispatch import logger

if t.TYPE_CHECKING:
    from ._state import Installation


class Slot(t.Protocol):
    """The distinct session of the running commit-time call: :class:`DistinctSlot` or its twin."""

    origin: sa_orm.Session

    def get(self) -> sa_orm.Session: ...

    def created(self) -> sa_orm.Session | None: ...

    def holds(self, session: sa_orm.Session) -> bool: ...


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


class RegistrySwap:
    """A scoped registry emptied for the items of one run and put back as it was afterwards.

    Emptying it once per run rather than once per item keeps an item that never touches the
    database cheap. It is put back before a failure is reported, before a batch of another
    installation runs, and at the end of the run, so nothing outside the items sees it empty.
    """

    __slots__ = ("active", "had_previous", "local", "previous", "registry")

    def __init__(self, registry: t.Any) -> None:
        self.registry = registry
        self.local = _thread_local_of(registry)
        self.active = False
        self.had_previous = False
        self.previous: sa_orm.Session | None = None

    def empty(self) -> None:
        """Save what the registry holds and empty it (callers check :attr:`active` first)."""
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


class DistinctSlot:
    """The distinct session of the item being run, created on first use.

    One slot serves the items of a batch of a synchronous install in turn, each getting a
    session of its own.
    """

    __slots__ = ("installation", "local", "origin", "registry", "scoped", "session", "swap")

    def __init__(
        self, installation: Installation, origin: sa_orm.Session, swap: RegistrySwap | None
    ) -> None:
        self.installation = installation
        self.origin = origin
        self.session: sa_orm.Session | None = None
        self.swap = swap
        # Pinned for the whole batch, like the swap.
        self.scoped = installation.scoped if swap is not None else None
        self.registry = None if swap is None else swap.registry
        self.local = None if swap is None else swap.local

    def get(self) -> sa_orm.Session:
        """Return the distinct session, creating it (and registering it) on first use."""
        scoped = self.scoped
        if scoped is not None:
            session: sa_orm.Session = scoped()
            return session
        if self.session is None:
            self.session = self.installation.make_session(self.origin)
        return self.session

    def created(self) -> sa_orm.Session | None:
        """Return the distinct session if the item asked for one."""
        registry = self.registry
        if registry is None:
            return self.session
        local = self.local
        if local is not None:
            made: sa_orm.Session | None = local.__dict__.get("value")
            return made
        return registry() if registry.has() else None

    def holds(self, session: sa_orm.Session) -> bool:
        """Whether ``session`` is this slot's distinct session."""
        return session is self.created()

    def finish(self, session: sa_orm.Session) -> None:
        """Commit ``session``, the distinct session the item made, then close it."""
        try:
            if session.in_transaction():
                session.commit()
        finally:
            self._close(session)

    def release(self) -> None:
        """Close the distinct session the item made, if any. Never raises."""
        session = self.created()
        if session is not None:
            self._close(session)

    def _close(self, session: sa_orm.Session) -> None:
        # Empties the registry again for the next item; the slot serves a whole batch.
        try:
            session.close()
        except Exception:
            logger.exception("closing the distinct session %r failed", session)
        finally:
            self.session = None
            if self.registry is not None:
                self.registry.clear()
