"""table(): the outbox table on the user's MetaData."""

from __future__ import annotations

import importlib

import pytest
import sqlalchemy as sa

from sa_signals import outbox
from tests.outbox import app

# The package's table() function shadows its module of the same name.
table_module = importlib.import_module("sa_signals.outbox.table")


def test_create_all_creates_the_table(engine, ob):
    """The table is created by create_all() with its indexes."""
    inspector = sa.inspect(engine)
    assert "sa_signals_outbox" in inspector.get_table_names()
    indexes = {index["name"] for index in inspector.get_indexes("sa_signals_outbox")}
    assert "ix_sa_signals_outbox_state_run_at" in indexes


def test_declared_twice_returns_the_same_table():
    """A second call on the same MetaData returns the table already there."""
    assert outbox.table(app.metadata) is app.outbox_table


def test_enqueue_without_a_table_names_the_fix(monkeypatch):
    """Without a declared table, the error says to declare one."""
    monkeypatch.setattr(table_module, "_current", [])
    with pytest.raises(outbox.NoTableError, match=r"call sa_signals.outbox.table\(metadata\)"):
        table_module.current_table()


def test_standalone_does_not_change_the_current_table():
    """The CLI's own table definition leaves enqueue()'s table alone."""
    assert table_module.standalone("elsewhere").name == "elsewhere"
    assert table_module.current_table() is app.outbox_table
