"""ORM bulk INSERT, UPDATE and DELETE statements, seen through the ``do_orm_execute`` event.

The statement is executed here, on behalf of SQLAlchemy, with the primary key columns added as
``return_defaults()`` (or ``RETURNING`` for a bulk INSERT) where the database supports it, so
that the affected rows are known; the caller gets the result it would have had.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
import sqlalchemy.engine.result as sa_result
import sqlalchemy.orm as sa_orm
import sqlalchemy.sql.util as sa_sql_util

from . import changes
from .records import NOT_LOADED

if t.TYPE_CHECKING:
    from ..typing import Operation

Row: t.TypeAlias = "dict[str, tuple[t.Any, t.Any]]"


class Executed:
    """What one bulk statement did."""

    __slots__ = ("identities", "model", "operation", "result", "rowcount", "rows", "statement")

    def __init__(
        self,
        operation: Operation,
        model: type[t.Any],
        statement: sa.Executable,
        result: sa.Result[t.Any],
        rowcount: int | None,
        identities: list[tuple[t.Any, ...]] | None,
        rows: list[Row] | None,
    ) -> None:
        self.operation = operation
        self.model = model
        self.statement = statement
        self.result = result
        self.rowcount = rowcount
        self.identities = identities
        self.rows = rows


def execute(orm_state: sa_orm.ORMExecuteState) -> Executed | None:
    """Execute the ORM bulk statement of ``orm_state``; None for anything else."""
    operation: Operation
    if orm_state.is_update:
        operation = "update"
    elif orm_state.is_delete:
        operation = "delete"
    elif orm_state.is_insert:
        operation = "insert"
    else:
        return None
    mapper = orm_state.bind_mapper
    if mapper is None or not orm_state.is_orm_statement:
        return None  # a Core statement on a Table: out of scope
    statement = orm_state.statement
    pk_keys = list(changes.pk_keys(mapper))
    params = orm_state.parameters
    param_rows: list[dict[str, t.Any]] | None = None
    if isinstance(params, dict):
        if params and operation == "insert":
            param_rows = [params]
    elif params:
        param_rows = list(params)  # type: ignore[arg-type]
    if getattr(statement, "_returning", ()):
        # The caller's own RETURNING: its rows are the affected rows. Replay them to the caller.
        frozen = orm_state.invoke_statement().freeze()
        returned = _returned_identities(frozen, mapper, pk_keys)
        count = len(frozen.data)
        return Executed(operation, mapper.class_, statement, frozen(), count, returned, None)
    if param_rows is not None and operation != "delete":
        return _by_parameters(orm_state, operation, mapper, pk_keys, param_rows)
    returning = operation != "insert" and _can_return(orm_state, operation, mapper)
    if returning:
        result: t.Any = orm_state.invoke_statement(
            statement=statement.return_defaults(*mapper.primary_key)  # type: ignore[attr-defined]
        )
    else:
        result = orm_state.invoke_statement()
    identities: list[tuple[t.Any, ...]] | None = None
    if operation == "insert":
        keys = getattr(result, "inserted_primary_key_rows", None)
        if keys and all(None not in key for key in keys):
            identities = [tuple(key) for key in keys]
    elif returning:
        # None when RETURNING gave nothing (no row matched: rowcount tells, see record_bulk).
        defaults = getattr(result, "returned_defaults_rows", None)
        if defaults is not None:
            identities = [tuple(row) for row in defaults]
    rows = [_set_values(statement, operation)]
    return Executed(
        operation,
        mapper.class_,
        statement,
        result,
        _count(result, identities),
        identities,
        rows,
    )


def _by_parameters(
    orm_state: sa_orm.ORMExecuteState,
    operation: Operation,
    mapper: sa_orm.Mapper[t.Any],
    pk_keys: list[str],
    param_rows: list[dict[str, t.Any]],
) -> Executed:
    # An INSERT of rows, or an UPDATE by primary key ("bulk" strategy): the rows are given.
    statement = orm_state.statement
    old = None if operation == "insert" else NOT_LOADED
    rows = [{key: (old, value) for key, value in row.items()} for row in param_rows]
    if all(key in row for row in param_rows for key in pk_keys):
        identities: list[tuple[t.Any, ...]] | None = [
            tuple(row[key] for key in pk_keys) for row in param_rows
        ]
        result: t.Any = orm_state.invoke_statement()
        if operation == "update":
            for row in rows:
                for key in pk_keys:
                    row.pop(key, None)
    else:
        identities = None
        result = None
        dialect = orm_state.session.get_bind(**orm_state.bind_arguments).dialect
        if dialect.insert_executemany_returning and mapper.local_table.implicit_returning:  # type: ignore[attr-defined]
            columns = [getattr(mapper.class_, key) for key in pk_keys]
            returned = orm_state.invoke_statement(
                statement=statement.returning(*columns, sort_by_parameter_order=True)  # type: ignore[attr-defined]
            ).all()
            identities = [tuple(row) for row in returned]
            if len(identities) == len(rows):
                for row, identity in zip(rows, identities, strict=True):
                    row.update(zip(pk_keys, ((None, value) for value in identity), strict=True))
            else:  # an upsert that skipped rows: which parameters went where is unknown
                rows = []
            # Without RETURNING of its own, the caller gets an empty result, as SQLAlchemy gives.
            result = sa_result.null_result()
        if result is None:
            result = orm_state.invoke_statement()
    return Executed(
        operation,
        mapper.class_,
        statement,
        result,
        _count(result, identities, len(param_rows)),
        identities,
        rows,
    )


def _returned_identities(
    frozen: sa_result.FrozenResult[t.Any], mapper: sa_orm.Mapper[t.Any], pk_keys: list[str]
) -> list[tuple[t.Any, ...]] | None:
    # The caller's RETURNING names the primary key, or returns the entities themselves.
    keys = list(frozen.metadata.keys)
    rows = frozen.data
    if all(key in keys for key in pk_keys):
        positions = [keys.index(key) for key in pk_keys]
        return [tuple(row[index] for index in positions) for row in rows]
    if len(keys) == 1:
        # One entity: FrozenResult keeps the bare objects of a single-entity ORM result.
        objects = [row if isinstance(row, mapper.class_) else row[0] for row in rows]
        if all(isinstance(obj, mapper.class_) for obj in objects):
            return [tuple(sa.inspect(obj).identity or ()) for obj in objects]
    return None


def _can_return(
    orm_state: sa_orm.ORMExecuteState, operation: Operation, mapper: sa_orm.Mapper[t.Any]
) -> bool:
    # Whether the database can RETURN from this UPDATE or DELETE, as SQLAlchemy decides it for
    # synchronize_session="fetch"; one naming other tables needs the "multifrom" support.
    dialect = orm_state.session.get_bind(**orm_state.bind_arguments).dialect
    if operation == "update":
        supported, multifrom = dialect.update_returning, dialect.update_returning_multifrom
    else:
        supported, multifrom = dialect.delete_returning, dialect.delete_returning_multifrom
    if not supported or not mapper.local_table.implicit_returning:  # type: ignore[attr-defined]
        return False
    if multifrom:
        return True
    whereclause = getattr(orm_state.statement, "whereclause", None)
    if whereclause is None:
        return True
    own = set(mapper.tables)
    return all(table in own for table in sa_sql_util.find_tables(whereclause, check_columns=True))


def _count(
    result: t.Any, identities: list[tuple[t.Any, ...]] | None, given: int | None = None
) -> int | None:
    rowcount = getattr(result, "rowcount", None)
    if isinstance(rowcount, int) and rowcount >= 0:
        return rowcount
    if identities is not None:
        return len(identities)
    return given


def _set_values(statement: sa.Executable, operation: Operation) -> Row:
    # The SET clause of update(...).values(...): plain values where the statement holds them.
    if operation != "update":
        return {}
    values: dict[t.Any, t.Any] = getattr(statement, "_values", None) or {}
    row: Row = {}
    for key, value in values.items():
        name = key if isinstance(key, str) else getattr(key, "key", str(key))
        if isinstance(value, sa.BindParameter) and value.callable is None:
            row[name] = (NOT_LOADED, value.value)
        else:
            row[name] = (NOT_LOADED, NOT_LOADED)
    return row
