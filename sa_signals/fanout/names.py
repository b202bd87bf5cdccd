"""Stable model names: how a publisher names a mapped class, and how a listener finds it again."""

from __future__ import annotations

import collections.abc as c
import datetime
import decimal
import logging
import threading
import typing as t
import uuid

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

logger = logging.getLogger("sa_signals.fanout")

Namer: t.TypeAlias = c.Callable[[type[t.Any]], str]
"""Gives the stable name of a mapped class; the same function on both sides."""

Models: t.TypeAlias = "type[sa_orm.DeclarativeBase] | sa_orm.registry | c.Iterable[type[t.Any]]"
"""What a listener resolves names against: a declarative base, a registry, or mapped classes."""


def table_name(model: type[t.Any]) -> str:
    """Return the name of the table ``model`` is mapped to, with its schema if it has one.

    A single-table inheritance subclass has its base's table, hence its base's name; a
    joined-table subclass has its own.
    """
    table = sa.inspect(model).local_table
    return str(getattr(table, "fullname", getattr(table, "name", model.__name__)))


def cached(namer: Namer) -> Namer:
    """Return ``namer`` with its answers remembered per class."""
    names: dict[type[t.Any], str] = {}

    def name(model: type[t.Any]) -> str:
        found = names.get(model)
        if found is None:
            found = names[model] = namer(model)
        return found

    return name


_COERCIONS: dict[type[t.Any], c.Callable[[str], t.Any]] = {
    uuid.UUID: uuid.UUID,
    decimal.Decimal: decimal.Decimal,
    datetime.datetime: datetime.datetime.fromisoformat,
    datetime.date: datetime.date.fromisoformat,
    datetime.time: datetime.time.fromisoformat,
}
"""Primary key types a message carries as strings, and how to read them back."""


class Resolver:
    """Finds the mapped class of a stable name among ``models``; rebuilt when mappers are added.

    Where several classes share a name (single-table inheritance), the one that maps the table
    itself wins: receivers connected to it also get the changes of its subclasses.
    """

    def __init__(self, models: Models, namer: Namer) -> None:
        self._models = models
        self._namer = namer
        self._lock = threading.Lock()
        self._classes: dict[str, type[t.Any]] = {}
        self._seen = -1
        self._unknown: set[str] = set()
        self._readers: dict[type[t.Any], tuple[c.Callable[[t.Any], t.Any] | None, ...]] = {}

    def resolve(self, name: str) -> type[t.Any] | None:
        """Return the mapped class named ``name``, or None if none of the models has that name."""
        model = self._classes.get(name)
        if model is None:
            model = self._rebuild().get(name)
            if model is None and name not in self._unknown:
                self._unknown.add(name)
                logger.info("no mapped class is named %r here; its changes are sent by name", name)
        return model

    def identity(
        self, model: type[t.Any] | None, identity: tuple[t.Any, ...]
    ) -> tuple[t.Any, ...]:
        """Give ``identity`` the Python types of ``model``'s primary key (UUIDs, dates ...)."""
        if model is None or not any(isinstance(value, str) for value in identity):
            return identity
        readers = self._readers.get(model)
        if readers is None:
            readers = self._readers[model] = tuple(
                _coercion(column) for column in sa.inspect(model).primary_key
            )
        return tuple(
            reader(value) if reader is not None and isinstance(value, str) else value
            for value, reader in zip(identity, readers + (None,) * len(identity), strict=False)
        )

    def _rebuild(self) -> dict[str, type[t.Any]]:
        with self._lock:
            mappers = list(_mappers(self._models))
            if len(mappers) == self._seen:
                return self._classes
            classes: dict[str, type[t.Any]] = {}
            for mapper in mappers:
                inherited = mapper.inherits
                if inherited is not None and inherited.local_table is mapper.local_table:
                    continue  # single-table inheritance: the base names the table
                name = self._namer(mapper.class_)
                other = classes.setdefault(name, mapper.class_)
                if other is not mapper.class_:
                    logger.warning(
                        "%s and %s are both named %r; changes named so go to %s",
                        other.__name__,
                        mapper.class_.__name__,
                        name,
                        other.__name__,
                    )
            self._classes = classes
            self._seen = len(mappers)
            return classes


def _coercion(column: sa.ColumnElement[t.Any]) -> c.Callable[[str], t.Any] | None:
    try:
        python_type: type[t.Any] = column.type.python_type
    except NotImplementedError:
        return None
    return _COERCIONS.get(python_type)


def _mappers(models: Models) -> c.Iterator[sa_orm.Mapper[t.Any]]:
    if isinstance(models, sa_orm.registry):
        yield from models.mappers
    elif isinstance(models, type) and isinstance(
        getattr(models, "registry", None), sa_orm.registry
    ):
        yield from models.registry.mappers
    else:
        for model in t.cast("c.Iterable[type[t.Any]]", models):
            yield sa.inspect(model)
