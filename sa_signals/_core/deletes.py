"""Where a flush's deletes started from: the ``origin`` of ``pre_delete`` and ``post_delete``.

``session.delete(obj)`` marks ``obj`` and, through the relationships that cascade deletes, the
objects it cascades to, in that order. At the start of a flush the layer maps each marked
object to the object whose ``delete()`` marked it first, as Django's ``origin`` is the instance
whose ``delete()`` was called. An object the flush itself deletes (an orphan) is its own origin.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa

from .state import STATE_ATTR

if t.TYPE_CHECKING:
    import sqlalchemy.orm as sa_orm

    from .state import SessionState

Origins: t.TypeAlias = dict[int, tuple[object, object]]
"""``id(obj)`` -> ``(obj, origin)``; holding ``obj`` keeps its id from being reused meanwhile."""


def origins(session: sa_orm.Session) -> Origins | None:
    """Map every object marked for deletion in ``session`` to its origin; None if none is."""
    deleted = session.deleted  # in the order delete() marked them: a cascade after its origin
    if not deleted:
        return None
    found: Origins = {}
    for obj in deleted:
        if id(obj) in found:
            continue
        found[id(obj)] = (obj, obj)
        state: sa_orm.InstanceState[t.Any] = sa.inspect(obj)
        for child, _, _, _ in state.mapper.cascade_iterator("delete", state):
            found.setdefault(id(child), (child, obj))
    return found


def origin_of(target: object, session: sa_orm.Session | None) -> object:
    """Return the origin of the delete of ``target``, flushed by ``session``."""
    state: SessionState | None = session.__dict__.get(STATE_ATTR) if session is not None else None
    if state is None or not state.origins:
        return target
    entry = state.origins.get(id(target))
    return entry[1] if entry is not None and entry[0] is target else target
