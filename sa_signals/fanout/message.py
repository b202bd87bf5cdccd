"""The fan-out message: what one committed transaction changed, versioned, as compact JSON.

One message per transaction, or a heartbeat with no models. Encoded as an ASCII JSON object::

    {"v": 1, "p": "host:4242:1f3a9c.1", "s": 17, "l": 0, "t": 1733500000.123456, "h": 10.0,
     "m": {"products": [["u", [3], ["price"]], ["i", [4], ["id", "name", "price"]]]}}

``v`` the format version; ``p`` the publisher (unique per process and ``publish()`` handle);
``s`` its sequence number, one more per message it meant to send; ``l`` how many messages right
before this one it failed to send; ``t`` the commit time (``time.time()``); ``h`` the
publisher's heartbeat interval in seconds; ``m`` per stable model name a list of records
``[operation, identity, fields]`` with operation ``"i"``, ``"u"`` or ``"d"``, identity the
primary key as a list (``null``: the rows are unknown, the whole table may have changed) and
fields the changed attribute keys. ``"m": null`` means that anything may have changed; ``"e":
true`` marks the publisher's last message.
"""

from __future__ import annotations

import collections.abc as c
import dataclasses
import datetime
import decimal
import json
import typing as t
import uuid

from ..exceptions import SaSignalsError

VERSION: t.Final = 1
"""The format version this module writes and reads."""

Operation: t.TypeAlias = t.Literal["insert", "update", "delete"]
"""What a record did to its row, as in :class:`sa_signals.Change`."""

Identity: t.TypeAlias = "tuple[t.Any, ...] | None"
"""A primary key as a tuple; None when the rows are unknown."""

_CODES: dict[str, Operation] = {"i": "insert", "u": "update", "d": "delete"}
_OPERATION_CODES: dict[str, str] = {name: code for code, name in _CODES.items()}

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
"""One encoder for every payload: ``json.dumps()`` with separators makes a new one per call."""

_DECODER = json.JSONDecoder()
"""Decodes the text of a payload: ``json.loads()`` of bytes first guesses their encoding."""

_T = t.TypeVar("_T")


class MessageError(SaSignalsError, ValueError):
    """A payload is not a fan-out message this version can read."""


class Record(t.NamedTuple):
    """One row a transaction changed, as the message carries it."""

    operation: Operation
    """``"insert"``, ``"update"`` or ``"delete"``."""
    identity: Identity
    """The primary key; None when the rows are unknown (a bulk statement, a degraded message)."""
    fields: frozenset[str]
    """The changed attribute keys (every column attribute for an insert or a delete)."""


@dataclasses.dataclass(frozen=True)
class Message:
    """A decoded fan-out message."""

    publisher: str
    """Who sent it: unique per process and ``publish()`` handle."""
    sequence: int
    """The publisher's sequence number: one more per message it meant to send."""
    lost: int = 0
    """How many messages right before this one the publisher failed to send."""
    at: float = 0.0
    """When the transaction committed, as ``time.time()`` of the publishing process."""
    heartbeat: float = 0.0
    """The publisher's heartbeat interval in seconds (0: it sends none)."""
    models: c.Mapping[str, tuple[Record, ...]] | None = dataclasses.field(default_factory=dict)
    """Stable model name to its records; empty for a heartbeat; None when anything may have
    changed (the message was too large even without identities)."""
    end: bool = False
    """Whether the publisher stopped after this message."""


def records_of(
    changes: c.Iterable[t.Any], name: c.Callable[[type[t.Any]], str]
) -> dict[str, tuple[Record, ...]]:
    """Turn committed :class:`sa_signals.Change` records into per-model records, deduplicated.

    A row reported twice (an ORM update and a bulk statement on it) becomes one record with the
    fields of both; the operation is the net one (a delete wins, an insert stays an insert).
    """
    merged: dict[str, dict[Identity, tuple[Operation, set[str]]]] = {}
    for change in changes:
        rows = merged.setdefault(name(change.model), {})
        identity = change.identity
        existing = rows.get(identity)
        if existing is None:
            rows[identity] = (change.operation, set(change.changes))
            continue
        operation, fields = existing
        fields.update(change.changes)
        if change.operation == "delete" or operation != "insert":
            operation = change.operation
        rows[identity] = (operation, fields)
    return {
        model: tuple(
            Record(operation, identity, frozenset(fields))
            for identity, (operation, fields) in rows.items()
        )
        for model, rows in merged.items()
    }


def encode(message: Message, max_bytes: int) -> tuple[bytes, bool]:
    """Return the payload of ``message`` and whether it had to be degraded to fit ``max_bytes``.

    A payload over the limit loses the identities of its largest models first (each becomes
    one record per operation with the rows unknown), then, if that is not enough, every model
    (``"m": null``: anything may have changed). The result always fits a limit of 512 bytes or
    more.
    """
    # Formatted by hand around the models: a third of what json.dumps() of the whole costs.
    end = ',"e":true' if message.end else ""
    head = (
        f'{{"v":{VERSION},"p":{json.dumps(message.publisher)},"s":{message.sequence:d},'
        f'"l":{message.lost:d},"t":{message.at:.6f},"h":{message.heartbeat!r}{end},"m":'
    ).encode("ascii")
    if message.models is None:
        return head + b"null}", False
    models = {
        model: [_record(record) for record in records] for model, records in message.models.items()
    }
    payload = head + _dump(models) + b"}"
    if len(payload) <= max_bytes:
        return payload, False
    # The largest models lose their identities first, one at a time, until the payload fits.
    for model in sorted(models, key=lambda key: len(models[key]), reverse=True):
        models[model] = [_record(record) for record in _tables_only(message.models[model])]
        payload = head + _dump(models) + b"}"
        if len(payload) <= max_bytes:
            return payload, True
    return head + b"null}", True


def _tables_only(records: c.Iterable[Record]) -> list[Record]:
    by_operation: dict[Operation, set[str]] = {}
    for record in records:
        by_operation.setdefault(record.operation, set()).update(record.fields)
    return [
        Record(operation, None, frozenset(fields)) for operation, fields in by_operation.items()
    ]


def _record(record: Record) -> list[t.Any]:
    identity = None if record.identity is None else _plain_identity(record.identity)
    return [_OPERATION_CODES[record.operation], identity, sorted(record.fields)]


def _plain_identity(identity: tuple[t.Any, ...]) -> list[t.Any] | None:
    """Return ``identity`` as JSON values; None (rows unknown) if a value has no JSON form."""
    values: list[t.Any] = []
    for value in identity:
        if value is None or isinstance(value, (bool, int, float, str)):
            values.append(value)
        elif isinstance(value, (uuid.UUID, decimal.Decimal)):
            values.append(str(value))
        elif isinstance(value, (datetime.date, datetime.time)):
            values.append(value.isoformat())
        else:
            return None
    return values


def _dump(body: t.Any) -> bytes:
    return _ENCODER.encode(body).encode("ascii")


def construct(cls: type[_T], /, **fields: t.Any) -> _T:
    """Return an instance of the frozen dataclass ``cls`` holding ``fields``, every one of them,
    without calling its ``__init__``.

    For the objects a listener makes per message: a frozen dataclass's ``__init__`` sets each
    field through ``object.__setattr__`` (about 100 bytecodes for a :class:`Message`).
    """
    instance = object.__new__(cls)
    instance.__dict__.update(fields)
    return instance


def decode(payload: bytes | str) -> Message:
    """Read a payload written by :func:`encode`; raise :class:`MessageError` if it is not one."""
    try:
        body = _DECODER.decode(payload.decode() if isinstance(payload, bytes) else payload)
        if not isinstance(body, dict):
            msg = "a fan-out message is a JSON object"
            raise TypeError(msg)
        version = body.get("v")
        if version != VERSION:
            msg = (
                f"a fan-out message of version {version!r}, this sa_signals reads version"
                f" {VERSION}; upgrade sa_signals on the listening side."
            )
            raise MessageError(msg)
        raw_models = body.get("m")
        models: dict[str, tuple[Record, ...]] | None = None
        if raw_models is not None:
            models = {
                str(model): tuple(
                    Record(
                        _CODES[code],
                        None if identity is None else tuple(identity),
                        frozenset(map(str, fields)),
                    )
                    for code, identity, fields in records
                )
                for model, records in raw_models.items()
            }
        return construct(
            Message,
            publisher=str(body["p"]),
            sequence=int(body["s"]),
            lost=int(body.get("l", 0)),
            at=float(body.get("t", 0.0)),
            heartbeat=float(body.get("h", 0.0)),
            models=models,
            end=bool(body.get("e", False)),
        )
    except MessageError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        preview = payload[:80]
        msg = f"{preview!r} is not a fan-out message: {exc}"
        raise MessageError(msg) from exc
