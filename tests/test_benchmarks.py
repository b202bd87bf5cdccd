"""The benchmark harness, run in quick mode so that it cannot rot (no timing is checked)."""

from __future__ import annotations

import os
import re

import pytest

from benchmarks import django_system
from benchmarks import run
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
            if line.split(" ", 1)[0] in run.WORKLOADS and f" {label} " in line:
                found[(line.split()[0], label)] = line.split(label)[1]
    return found


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
        url = os.environ[URL_VARIABLES[backend]]
        output = quick_run(capsys, "--db", "postgresql", "--postgresql", url, "--workload", "W1")
        table = rows(output, run.DATABASES["postgresql"])
        assert set(table) == {("W1", label) for label in run.SYSTEM_LABELS[:3]}
