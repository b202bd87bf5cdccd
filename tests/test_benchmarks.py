"""The benchmark harness, run in quick mode so that it cannot rot (no timing is checked)."""

from __future__ import annotations

import asyncio
import collections
import collections.abc as c
import os
import re
import typing as t

import pytest
import sqlalchemy as sa

from benchmarks import django_system
from benchmarks import run
from benchmarks import systems
from sa_signals import signals
from tests.conftest import URL_VARIABLES

NUMBER = r"-?\d+\.\d+"


def quick_run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert run.main(["--quick", "--memory", "300", *args]) == 0
    return capsys.readouterr().out


def rows(output: str, title: str) -> dict[tuple[str, str], str]:
    """Map ``(workload, system)`` to the rest of its row, in the table titled ``title``."""
    section = output.split(f"== {title}:")[1].split("\n== ")[0]
    found = {}
    for line in section.splitlines():
        for label in run.SYSTEM_LABELS:
            if line.split(" ", 1)[0] in run.ALL_WORKLOADS and f" {label} " in line:
                found[(line.split()[0], label)] = line.split(label)[1]
    return found


def assert_runs_on_server(
    capsys: pytest.CaptureFixture[str], backend: str, db: str, workload: str
) -> None:
    """One quick run of ``workload`` on the server of ``backend`` as ``db`` gives a row for
    each SQLAlchemy system."""
    url = os.environ[URL_VARIABLES[backend]]
    output = quick_run(capsys, "--db", db, "--postgresql", url, "--workload", workload)
    table = rows(output, run.DATABASES[db])
    assert set(table) == {(workload, label) for label in run.SYSTEM_LABELS[:3]}


class TestQuickRun:
    def test_prints_every_workload_for_every_system(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each SQLite table has a median, a p90 and a ratio for every workload and system."""
        output = quick_run(capsys)
        labels = run.SYSTEM_LABELS if django_system.AVAILABLE else run.SYSTEM_LABELS[:3]
        for title in (run.DATABASES["sqlite-memory"], run.DATABASES["sqlite-file"]):
            table = rows(output, title)
            for workload in run.WORKLOADS:
                for label in labels:
                    cells = table[(workload, label)].split()
                    if workload == "W6" and label == "sa_signals":
                        unavailable = not hasattr(signals, "models_committed")
                        assert (cells == ["n/a"] * 3) is unavailable
                        continue
                    assert len(cells) == 3
                    assert all(re.fullmatch(NUMBER, cell) for cell in cells), cells
                    if label == "bare SQLAlchemy":
                        assert cells[2] == "1.000"

    def test_prints_per_call_memory_and_targets(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The per-call table, the memory checkpoints and the target checks are printed."""
        output = quick_run(capsys, "--db", "sqlite-memory")
        for label in ("on_commit callback", "post_save receiver call", "doing one query"):
            line = next(x for x in output.splitlines() if x.startswith("per ") and label in x)
            assert len(re.findall(NUMBER, line)) == (4 if django_system.AVAILABLE else 3)
        memory = output.split("Memory:")[1].split("Targets")[0]
        checkpoints = re.findall(r"^\s+(\d+)\s+\d+\.\d+\s+\d+$", memory, re.MULTILINE)
        assert [int(n) for n in checkpoints] == list(range(30, 301, 30))
        targets = output.split("Targets")[1]
        assert "W1, sa_signals with no receivers" in targets
        assert "per on_commit callback" in targets
        assert "no memory growth" in targets

    @pytest.mark.backends("postgresql")
    def test_runs_on_postgresql(self, capsys: pytest.CaptureFixture[str], backend: str) -> None:
        """With a URL, the SQLAlchemy systems run on PostgreSQL too (Django stays on SQLite)."""
        assert_runs_on_server(capsys, backend, "postgresql", "W1")


class TestAsyncio:
    def test_prints_every_workload_on_aiosqlite(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The async table has a median, a p90 and a ratio for every workload and system."""
        output = quick_run(capsys, "--db", "aiosqlite-memory")
        table = rows(output, run.DATABASES["aiosqlite-memory"])
        labels = run.SYSTEM_LABELS[:3]
        assert set(table) == {(w, label) for w in run.ALL_WORKLOADS for label in labels}
        for (_, label), cells in table.items():
            assert len(cells.split()) == 3
            assert all(re.fullmatch(NUMBER, cell) for cell in cells.split()), cells
            if label == "bare SQLAlchemy":
                assert cells.split()[2] == "1.000"
        per_call = output.split(run.DATABASES["aiosqlite-memory"])[1].split("Memory:")[0]
        assert "per callback doing one query" in per_call
        assert "per coroutine callback (no DB)" in per_call

    @pytest.mark.backends("postgresql")
    def test_runs_on_asyncpg(self, capsys: pytest.CaptureFixture[str], backend: str) -> None:
        """With a PostgreSQL URL of any driver, the async systems run on asyncpg."""
        assert_runs_on_server(capsys, backend, "asyncpg", "W2")

    @pytest.mark.parametrize("workload", list(run.ALL_WORKLOADS))
    def test_every_system_does_the_same_work(
        self, workload: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One transaction of each async system leaves the same rows, and makes the same calls
        of callbacks, receivers and change-set receivers."""
        from benchmarks import asystems

        def make_receiver() -> c.Callable[..., None]:
            def receiver(sender: object, **kwargs: object) -> None:
                calls["receiver"] += 1

            return receiver

        def read_changes(sender: object, *, changes: t.Any, **kwargs: object) -> None:
            calls["change"] += len(changes)

        async def anoop() -> None:
            calls["coroutine"] += 1

        monkeypatch.setattr(systems, "noop", lambda: calls.update(["callback"]))
        monkeypatch.setattr(asystems, "anoop", anoop)
        monkeypatch.setattr(systems, "make_receiver", make_receiver)
        monkeypatch.setattr(systems, "read_changes", read_changes)
        done = set()
        with asyncio.Runner() as runner:
            for system in asystems.make_systems("aiosqlite-memory", None, 30, runner):
                calls: collections.Counter[str] = collections.Counter()
                try:
                    assert system.setup(workload)
                    system.enter()
                    system.before_batch(workload)
                    try:
                        runner.run(system.transaction(workload)())
                    finally:
                        system.after_batch(workload)
                        system.exit()
                        system.teardown(workload)
                    rows = runner.run(count_rows(system))
                finally:
                    system.close()
                done.add((rows, tuple(sorted(calls.items()))))
        assert len(done) == 1, done
        assert not signals.post_save.receivers


async def count_rows(system: t.Any) -> int:
    """Return how many rows the table of ``system`` holds."""
    async with system.engine.connect() as connection:
        count = sa.select(sa.func.count()).select_from(system.Item)
        return int(await connection.scalar(count))
