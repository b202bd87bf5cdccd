"""The command line: stats, retry and purge on a real database."""

from __future__ import annotations

import datetime
import importlib
import os
import signal
import threading

import pytest
import sqlalchemy as sa

from sa_signals import outbox
from sa_signals.outbox import cli
from tests.conftest import async_url
from tests.outbox import app
from tests.outbox.helpers import wait_for


def url_of(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def dead_row(factory) -> None:
    with factory.begin() as session:
        outbox.enqueue(session, app.always_fails, "x")
    outbox.drain(factory)


class TestCommands:
    def test_stats_counts_rows_by_state(self, ob, engine, factory, capsys):
        """stats prints pending, due, dead and done counts and the oldest pending row's age."""
        dead_row(factory)
        with factory.begin() as session:
            outbox.enqueue(session, app.record_later, "p")
            outbox.enqueue(session, app.record, "d", delay=60)
        assert cli.main(["stats", "--url", url_of(engine)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[:4] == ["pending 2", "due 1", "dead 1", "done 0"]
        assert lines[4].startswith("oldest_pending_age ")
        assert lines[4].endswith("s")

    def test_stats_of_an_empty_outbox(self, ob, engine, capsys):
        """With nothing pending the age is a dash."""
        cli.main(["stats", "--url", url_of(engine)])
        assert capsys.readouterr().out.splitlines()[-1] == "oldest_pending_age -"

    def test_retry_makes_dead_rows_pending(self, ob, engine, factory, capsys):
        """retry puts dead rows back, due now, with their attempts reset."""
        dead_row(factory)
        assert cli.main(["retry", "--url", url_of(engine), "--handler", "nope"]) == 0
        assert capsys.readouterr().out == "0 dead rows are pending again\n"
        (row,) = ob.rows()
        assert cli.main(["retry", "--url", url_of(engine), "--id", str(row.id)]) == 0
        assert capsys.readouterr().out == "1 dead rows are pending again\n"
        assert [(r.state, r.attempts) for r in ob.rows()] == [("pending", 0)]

    def test_purge_deletes_old_rows_only(self, ob, engine, factory, capsys):
        """purge deletes done rows older than the age; --dead deletes dead ones too."""
        dead_row(factory)
        cli.main(["purge", "--url", url_of(engine), "--older-than", "0"])
        assert capsys.readouterr().out == "0 rows deleted\n"
        cli.main(["purge", "--url", url_of(engine), "--older-than", "3600", "--dead"])
        assert capsys.readouterr().out == "0 rows deleted\n"
        cli.main(["purge", "--url", url_of(engine), "--older-than", "0", "--dead"])
        assert capsys.readouterr().out == "1 rows deleted\n"
        assert ob.rows() == []

    def test_a_table_of_another_name(self, ob, engine, capsys):
        """--table names an outbox table that the imported modules did not declare."""
        other = outbox.table(sa.MetaData(), "other_outbox")
        other.create(engine)
        try:
            now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
            with engine.begin() as connection:
                connection.execute(
                    other.insert(),
                    {"handler": "h", "payload": "[[],{}]", "run_at": now, "created_at": now},
                )
            outbox.table(app.metadata)
            cli.main(["stats", "--url", url_of(engine), "--table", "other_outbox"])
            assert capsys.readouterr().out.splitlines()[0] == "pending 1"
        finally:
            other.drop(engine)

    def test_without_a_declared_table_uses_the_named_one(self, ob, engine, monkeypatch, capsys):
        """When no imported module declared a table, --table's name is used as is."""
        monkeypatch.setattr(importlib.import_module("sa_signals.outbox.table"), "_current", [])
        cli.main(["stats", "--url", url_of(engine)])
        assert capsys.readouterr().out.splitlines()[0] == "pending 0"

    def test_needs_a_command(self, capsys):
        """Without a command the parser exits with its usage."""
        with pytest.raises(SystemExit):
            cli.main([])
        assert "usage: python -m sa_signals.outbox" in capsys.readouterr().err


class TestMakeEngine:
    def test_sqlite_transactions_begin_immediate(self, tmp_path):
        """On SQLite the worker's transactions take the write lock at BEGIN."""
        engine = cli.make_engine(f"sqlite:///{tmp_path / 'w.db'}")
        seen: list[str] = []
        sa.event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
        with engine.begin() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
        assert seen[0] == "BEGIN IMMEDIATE"


@pytest.fixture
def restore_signals():
    """Put back the SIGTERM and SIGINT handlers that the worker command replaces."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


class TestWorkerCommand:
    @pytest.mark.parametrize("driver", ["sync", "async"])
    def test_runs_rows_until_sigterm(self, ob, engine, backend, factory, restore_signals, driver):
        """worker runs due rows, a sync or an async worker by the URL, and returns on SIGTERM."""
        url = url_of(engine)
        if driver == "async":
            url = async_url(backend, engine).render_as_string(hide_password=False)
        with factory.begin() as session:
            outbox.enqueue(session, app.record_later, "in-process")
            outbox.enqueue(session, app.arecord if driver == "async" else app.record, "d", delay=0)

        def stop_when_done() -> None:
            wait_for(lambda: len(ob.effects()) == 2, "the worker command")
            os.kill(os.getpid(), signal.SIGTERM)

        stopper = threading.Thread(target=stop_when_done)
        stopper.start()
        status = cli.main(
            [
                "worker",
                "--url",
                url,
                "--import",
                "tests.outbox.app",
                "--poll",
                "0.05",
                "--keep-done",
                "60",
            ]
        )
        stopper.join()
        assert status == 0
        assert sorted(ob.effects()) == ["d", "in-process"]
        assert ob.states() == ["done", "done"]
