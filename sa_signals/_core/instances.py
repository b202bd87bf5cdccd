"""``pre_init`` and ``post_init``: mapped objects constructed, or loaded from the database.

SQLAlchemy's ``init`` event comes before the constructor runs, and none after it: so, while
``post_init`` has receivers, the ``init`` listener wraps the constructor SQLAlchemy calls for
the object's class (``ClassManager.original_init``, read on every construction) once, with one
that sends ``post_init`` when it returns; :func:`unwrap` puts the constructors back. Loads send
``post_init`` from SQLAlchemy's ``load`` event. Constructions belong to no session: they are
sent for every mapped class while an installation exists, and no coroutine can be awaited there.
"""

from __future__ import annotations

import typing as t
import weakref

import sqlalchemy.orm as sa_orm

from .. import signals
from .send import send
from .state import installation_for

if t.TYPE_CHECKING:
    import collections.abc as c

_wrapped: weakref.WeakSet[sa_orm.ClassManager[t.Any]] = weakref.WeakSet()
"""The class managers whose constructor :func:`_init` wrapped (each held by its class)."""


def _init(target: object, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]) -> None:
    # SQLAlchemy passes the constructor's own kwargs dict: a receiver's changes reach it.
    if signals.pre_init.receivers:
        # This listener may run before the mapper's own, which configures the mappers on a
        # first construction: a receiver may read the instance's attributes.
        sa_orm.configure_mappers()
        send(
            signals.pre_init,
            type(target),
            None,
            True,
            None,
            instance=target,
            args=args,
            kwargs=kwargs,
        )
    if signals.post_init.receivers:
        manager = sa_orm.attributes.instance_state(target).manager
        if type(manager.original_init) is not _PostInit:
            manager.original_init = _PostInit(manager.original_init)  # type: ignore[arg-type]
            _wrapped.add(manager)


class _PostInit:
    """A mapped class's constructor, followed by the ``post_init`` send."""

    __slots__ = ("original",)

    def __init__(self, original: c.Callable[..., None]) -> None:
        self.original = original

    def __call__(self, instance: object, *args: t.Any, **kwargs: t.Any) -> None:
        self.original(instance, *args, **kwargs)
        if signals.post_init.receivers:
            send(
                signals.post_init,
                type(instance),
                None,
                True,
                None,
                instance=instance,
                session=None,
            )


def _load(target: object, context: sa_orm.QueryContext) -> None:
    if not signals.post_init.receivers:
        return
    session = context.session
    installation = installation_for(session) if session is not None else None
    if installation is None:
        return
    aio = installation.aio
    public = session if aio is None else aio.public(session)
    send(
        signals.post_init,
        type(target),
        public,
        installation.robust,
        aio,
        instance=target,
        session=public,
    )


LISTENERS: tuple[tuple[str, c.Callable[..., None], tuple[t.Any, ...]], ...] = (
    ("init", _init, (signals.pre_init, signals.post_init)),
    ("load", _load, (signals.post_init,)),
)
"""The instance listeners, attached to every mapper once one of their signals has a receiver
(see ``bridge.sync_listeners()``)."""


def unwrap() -> None:
    """Give every class wrapped for ``post_init`` its own constructor back."""
    for manager in list(_wrapped):
        original_init = manager.original_init
        if isinstance(original_init, _PostInit):
            manager.original_init = original_init.original
    _wrapped.clear()
