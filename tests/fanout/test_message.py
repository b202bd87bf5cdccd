"""The fan-out message format: versioned, compact, deduplicated, degraded to fit its limit."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import types
import typing as t
import uuid

import pytest

import sa_signals
from sa_signals.fanout.message import decode
from sa_signals.fanout.message import encode
from sa_signals.fanout.message import Message
from sa_signals.fanout.message import MessageError
from sa_signals.fanout.message import Record
from sa_signals.fanout.message import records_of
from sa_signals.fanout.names import table_name
from tests.models import Item
from tests.models import Tag


def change(
    operation: t.Any, identity: t.Any, *fields: str, model: type = Item
) -> sa_signals.Change:
    values = types.MappingProxyType({field: (None, 1) for field in fields})
    return sa_signals.Change(operation, model, identity, None, values)


def message(**models: tuple[Record, ...]) -> Message:
    return Message(
        publisher="host:1:ab.1", sequence=7, lost=0, at=1.5, heartbeat=10.0, models=models
    )


class TestRecords:
    def test_one_record_per_row_with_its_fields(self) -> None:
        """Each committed row becomes a record of its operation, identity and field names."""
        records = records_of(
            [change("update", (1,), "value"), change("insert", (2,), "id", "name")], table_name
        )
        assert records == {
            "items": (
                Record("update", (1,), frozenset({"value"})),
                Record("insert", (2,), frozenset({"id", "name"})),
            )
        }

    def test_rows_reported_twice_are_merged(self) -> None:
        """A row changed by a flush and by a bulk statement is one record with both fields."""
        records = records_of(
            [
                change("update", (1,), "value"),
                change("update", (1,), "name"),
                change("update", None, "value"),
            ],
            table_name,
        )
        assert records["items"] == (
            Record("update", (1,), frozenset({"value", "name"})),
            Record("update", None, frozenset({"value"})),
        )

    @pytest.mark.parametrize(
        ("first", "then", "net"),
        [
            ("insert", "update", "insert"),
            ("insert", "delete", "delete"),
            ("update", "delete", "delete"),
        ],
    )
    def test_merged_operation_is_the_net_one(self, first: t.Any, then: t.Any, net: str) -> None:
        """A delete wins over anything; an inserted row stays inserted when updated again."""
        records = records_of(
            [change(first, (1,), "value"), change(then, (1,), "value")], table_name
        )
        assert records["items"][0].operation == net

    def test_models_are_named_by_the_namer(self) -> None:
        """Each model is keyed by the stable name the namer gives it."""
        records = records_of(
            [change("insert", ("a", "b"), "label", model=Tag)], lambda m: m.__name__
        )
        assert list(records) == ["Tag"]


class TestEncoding:
    def test_round_trip(self) -> None:
        """What encode() writes, decode() reads back unchanged."""
        original = message(
            items=(
                Record("update", (1,), frozenset({"value"})),
                Record("delete", None, frozenset()),
            )
        )
        payload, degraded = encode(original, 8000)
        assert not degraded
        decoded = decode(payload)
        assert decoded == original
        with pytest.raises(dataclasses.FrozenInstanceError):
            decoded.sequence = 2  # type: ignore[misc]
        assert decode(payload.decode()) == original  # also from text

    def test_payload_is_compact_ascii_json(self) -> None:
        """The payload is one JSON object with short keys and one-letter operations."""
        payload, _ = encode(message(items=(Record("insert", ("é",), frozenset({"name"})),)), 8000)
        assert payload.isascii()
        assert json.loads(payload) == {
            "v": 1,
            "p": "host:1:ab.1",
            "s": 7,
            "l": 0,
            "t": 1.5,
            "h": 10.0,
            "m": {"items": [["i", ["é"], ["name"]]]},
        }

    def test_last_message_is_marked(self) -> None:
        """A publisher's last message says so."""
        payload, _ = encode(Message(publisher="p.1", sequence=1, end=True), 8000)
        assert decode(payload).end

    def test_identities_without_json_form_are_written_as_text(self) -> None:
        """UUIDs, decimals and dates travel as strings."""
        key = uuid.uuid4()
        identity = (
            key,
            decimal.Decimal("1.5"),
            datetime.date(2024, 1, 2),
            datetime.datetime(2024, 1, 2, 3, 4),
        )
        payload, _ = encode(message(items=(Record("update", identity, frozenset()),)), 8000)
        assert decode(payload).models["items"][0].identity == (
            str(key),
            "1.5",
            "2024-01-02",
            "2024-01-02T03:04:00",
        )

    def test_unknown_identity_types_mean_unknown_rows(self) -> None:
        """A primary key value with no JSON form is sent as rows unknown, never as a failure."""
        payload, _ = encode(
            message(items=(Record("update", (object(),), frozenset({"value"})),)), 8000
        )
        assert decode(payload).models["items"][0].identity is None

    def test_too_large_keeps_small_models_exact(self) -> None:
        """Over the limit, the largest model loses its identities first: the table changed."""
        big = tuple(Record("update", (n,), frozenset({"value"})) for n in range(500))
        big += tuple(Record("insert", (n,), frozenset({"name"})) for n in range(500, 600))
        small = (Record("delete", ("a", "b"), frozenset({"label"})),)
        payload, degraded = encode(message(items=big, tags=small), 1000)
        assert degraded
        assert len(payload) <= 1000
        models = decode(payload).models
        assert models is not None
        assert models["tags"] == small
        assert set(models["items"]) == {
            Record("update", None, frozenset({"value"})),
            Record("insert", None, frozenset({"name"})),
        }

    def test_far_too_large_says_anything_may_have_changed(self) -> None:
        """When even the table names do not fit, the message says anything may have changed."""
        models = {
            f"table_{n:04}": (Record("update", (n,), frozenset({"value"})),) for n in range(200)
        }
        payload, degraded = encode(message(**models), 600)
        assert degraded
        assert len(payload) <= 600
        assert decode(payload).models is None


class TestDecoding:
    def test_other_versions_are_refused_with_the_fix(self) -> None:
        """A message of another format version names the upgrade to make."""
        with pytest.raises(
            MessageError, match="version 2, this sa_signals reads version 1; upgrade"
        ):
            decode(b'{"v": 2, "p": "x", "s": 1}')

    @pytest.mark.parametrize(
        "payload",
        [
            b"not json",
            b"[1]",
            b'{"v": 1}',
            b'{"v": 1, "p": "x", "s": 1, "m": {"t": [["x", null, []]]}}',
            b'{"v": 1, "p": "\xff", "s": 1, "m": {}}',
        ],
    )
    def test_garbage_is_refused(self, payload: bytes) -> None:
        """A payload that is not a fan-out message raises MessageError."""
        with pytest.raises(MessageError, match="is not a fan-out message"):
            decode(payload)
