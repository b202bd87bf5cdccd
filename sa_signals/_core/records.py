"""What a transaction wrote: :class:`Record` while it is open, :class:`Change` once committed."""

from __future__ import annotations

import collections.abc as c
import dataclasses
import enum
import typing as t

if t.TYPE_CHECKING:
    import sqlalchemy as sa
    import sqlalchemy.orm as sa_orm

    from ..typing import Operation


class _NotLoaded(enum.Enum):
    NOT_LOADED = "NOT_LOADED"

    def __repr__(self) -> str:
        return "sa_signals.NOT_LOADED"


NOT_LOADED: t.Final = _NotLoaded.NOT_LOADED
"""A value SQLAlchemy never held in memory, so the layer cannot report it.

An ``old`` value is ``NOT_LOADED`` when the attribute was expired or deferred and then set
without being read; a ``new`` value is ``NOT_LOADED`` when the database computed it (a SQL
expression, or a server-side default that was not fetched back). Never a guess.
"""


@dataclasses.dataclass(frozen=True)
class Change:
    """The net effect of one committed transaction on one row (or one bulk statement).

    Every attribute holds plain values captured while the session was alive: reading them never
    loads anything, also after the session is closed.
    """

    operation: Operation
    """``"insert"``, ``"update"`` or ``"delete"``."""

    model: type[t.Any]
    """The mapped class of the object (its most specific class under inheritance)."""

    identity: tuple[t.Any, ...] | None
    """The primary key as a tuple; None for a bulk statement whose rows are unknown."""

    instance: t.Any = dataclasses.field(repr=False, hash=False)
    """The object; None for a bulk statement. Its attributes may be expired after the commit:
    read :attr:`identity` and :attr:`changes` instead, which never load anything."""

    changes: c.Mapping[str, tuple[t.Any, t.Any]] = dataclasses.field(hash=False)
    """Attribute key to ``(old, new)``: for an update, the value at the start of the transaction
    and the final value, only for attributes that differ; for an insert, ``(None, value)`` for
    every column attribute; for a delete, ``(value, None)`` for every column attribute. A value
    the layer cannot know is :data:`NOT_LOADED`."""

    statement: sa.Executable | None = dataclasses.field(default=None, repr=False, hash=False)
    """The ORM bulk statement this change comes from; None for a change made by a flush."""


class Record:
    """One write a flush or bulk statement made, waiting for its transaction to end."""

    __slots__ = (
        "identity",
        "instance",
        "model",
        "operation",
        "statement",
        "transaction",
        "values",
    )

    def __init__(
        self,
        transaction: sa_orm.SessionTransaction | None,
        operation: Operation,
        model: type[t.Any],
        identity: tuple[t.Any, ...] | None,
        instance: t.Any,
        values: dict[str, tuple[t.Any, t.Any]],
        statement: sa.Executable | None = None,
    ) -> None:
        self.transaction = transaction
        """The savepoint (or outermost transaction) that was innermost when it was written."""
        self.operation = operation
        self.model = model
        self.identity = identity
        self.instance = instance
        self.values = values
        self.statement = statement
