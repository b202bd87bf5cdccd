"""Types for annotating code that uses sa_signals."""

from __future__ import annotations

import collections.abc as c
import typing as t

import sqlalchemy.orm as sa_orm

Callback: t.TypeAlias = c.Callable[[], object]
"""A callback for ``on_commit``: called with no arguments, its return value ignored."""

SessionTarget: t.TypeAlias = "sa_orm.Session | sa_orm.scoped_session[t.Any]"
"""What ``on_commit`` accepts: a session, or a ``scoped_session`` standing for its current one."""

SessionFactory: t.TypeAlias = "sa_orm.sessionmaker[t.Any] | sa_orm.scoped_session[t.Any]"
"""A factory the scope helpers make sessions from."""

InstallTarget: t.TypeAlias = (
    "sa_orm.scoped_session[t.Any] | sa_orm.sessionmaker[t.Any] | type[sa_orm.Session]"
)
"""What ``install()`` accepts."""
