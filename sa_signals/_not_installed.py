"""The warning of a forgotten ``install()``, given when a unit of work begins.

Connecting receivers before installing is the usual start-up order, so connecting warns of
nothing. A unit of work that begins while signals have receivers and no session factory at all is
installed is the mistake: its sessions' events reach nobody. A scope checks when it is entered;
a session used without one, at the first transaction of any session after a receiver was
connected while nothing was installed. When anything is installed, a factory left out may be
deliberate (another database, say), and nothing is said.
"""

from __future__ import annotations

import contextlib
import sys
import typing as t
import warnings

import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

from . import signals
from ._core.bridge import installed
from ._core.bridge import lock
from ._dispatch import Signal
from .exceptions import NotInstalledWarning

EVENT_SIGNALS: tuple[Signal, ...] = tuple(
    value
    for value in vars(signals).values()
    if isinstance(value, Signal)
    and value
    not in (
        signals.on_commit_failed,
        signals.receiver_failed,
        # Sent by fanout.listen() and the outbox's runs, whatever install() did.
        signals.remote_committed,
        signals.remote_gap,
        signals.outbox_failed,
    )
)
"""The signals that report sessions' events: all but the failure, fan-out and outbox signals."""


def warn_if_nothing_installed(unit: object) -> None:
    """Warn that ``unit``, a unit of work beginning, sends no signal to their receivers, if no
    session factory is installed while signals have receivers."""
    if installed():
        return
    waiting = [signal.name for signal in EVENT_SIGNALS if signal.receivers]
    if not waiting:
        return
    msg = (
        f"{unit} began, but no session factory is installed: the receivers of"
        f" {', '.join(waiting)} will not be called. Call sa_signals.install() on the"
        " scoped_session or sessionmaker at start-up, before the first unit of work."
    )
    warnings.warn(msg, NotInstalledWarning, stacklevel=_user_level())


_armed = False
"""Whether the next transaction of any session checks that something is installed."""

_listening = False


def _transaction_began(session: sa_orm.Session, *args: object) -> None:
    """Warn if nothing is installed at the first session transaction after a receiver was
    connected while nothing was (``after_begin`` of every session class)."""
    global _armed
    if _armed:
        _armed = False
        warn_if_nothing_installed("a session's transaction")


def _arm(*args: object, **kwargs: object) -> None:
    """Make the next session transaction check for a forgotten ``install()``, if nothing is
    installed now (a receiver was just connected).

    The ``after_begin`` listener stays once attached: SQLAlchemy iterates listeners in place,
    so removing one while another thread's session begins would break that session.
    """
    global _armed, _listening  # changed under the bridge's lock
    if installed():
        return
    with lock():
        if not _listening:
            sa_event.listen(sa_orm.Session, "after_begin", _transaction_began)
            _listening = True
        _armed = True


for _signal in EVENT_SIGNALS:
    _signal.receiver_connected.connect(_arm, weak=False)


def _user_level() -> int:
    """Return the ``stacklevel`` that names the first frame outside sa_signals, SQLAlchemy and
    contextlib."""
    level = 1
    frame = sys._getframe(1)
    while frame.f_back is not None and (
        frame.f_globals.get("__name__", "").startswith(_INTERNAL)
        or frame.f_code.co_filename == contextlib.__file__
    ):
        frame = frame.f_back
        level += 1
    return level


_INTERNAL: t.Final = ("sa_signals.", "sqlalchemy.")
