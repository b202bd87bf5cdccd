"""The instruction counter: its worker natively, one tiny callgrind run, and its table."""

from __future__ import annotations

import pathlib
import re
import shutil

import pytest

from benchmarks import django_system
from benchmarks import instructions
from benchmarks.systems import Layer
from sa_signals import signals

SYSTEMS = [name for name in instructions.LABELS if name != "django" or django_system.AVAILABLE]


class TestWorker:
    @pytest.mark.parametrize("db", ["sqlite-memory", "sqlite-file"])
    @pytest.mark.parametrize("workload", ["W4", "W6", "A-recv"])
    @pytest.mark.parametrize("system", SYSTEMS)
    def test_runs_every_system_natively(
        self,
        system: str,
        workload: str,
        db: str,
        tmp_path: pathlib.Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Uncounted, the worker runs a few transactions and leaves no receiver connected."""
        instructions.work(system, workload, db, 2, str(tmp_path))
        assert capsys.readouterr().out == ""
        assert not signals.post_save.receivers

    @pytest.mark.parametrize("workload", ["W5", "W6", "A-query"])
    @pytest.mark.parametrize("system", ["bare", "hand", "layer"])
    def test_runs_the_async_systems_natively(
        self,
        system: str,
        workload: str,
        tmp_path: pathlib.Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """On aiosqlite the worker runs the async twin's transactions in an event loop."""
        instructions.work(system, workload, "aiosqlite-memory", 2, str(tmp_path))
        assert capsys.readouterr().out == ""
        assert not signals.models_committed.receivers

    def test_reports_a_workload_the_system_does_not_run(
        self,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: pathlib.Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A system without field diffs makes the worker print that it does not run W6."""
        monkeypatch.setattr(Layer, "connect_diffs", lambda self: False)
        instructions.work("layer", "W6", "sqlite-memory", 2, str(tmp_path))
        assert capsys.readouterr().out == f"{instructions.UNSUPPORTED}\n"


class TestReport:
    def test_prints_ratios_spread_and_per_call_figures(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Ratios are to bare SQLAlchemy; A-cb gets (A-cb - W1) / 300 per call; n/a stays n/a."""
        results: dict[instructions.Key, list[float] | None] = {
            ("sqlite-memory", "W1", "bare"): [1000.0, 1010.0, 990.0],
            ("sqlite-memory", "W1", "layer"): [1100.0],
            ("sqlite-memory", "A-cb", "bare"): [4000.0],
            ("sqlite-memory", "A-cb", "layer"): [31100.0],
            ("sqlite-memory", "W6", "layer"): None,
        }
        instructions.report(results, ["bare", "layer"])
        lines = capsys.readouterr().out.splitlines()[3:]
        assert [line.split() for line in lines] == [
            ["W1", "bare", "SQLAlchemy", "1,000", "2.00%", "1.000"],
            ["W1", "sa_signals", "1,100", "0.00%", "1.100"],
            ["A-cb", "bare", "SQLAlchemy", "4,000", "0.00%", "1.000", "10"],
            ["A-cb", "sa_signals", "31,100", "0.00%", "7.775", "100"],
            ["W6", "sa_signals", "n/a"],
        ]


class TestCallgrind:
    @pytest.mark.services("valgrind")
    def test_counts_instructions_of_bare_and_sa_signals(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Two tiny callgrind runs give positive counts per transaction and bare's ratio 1.000."""
        assert shutil.which("valgrind"), "SA_SIGNALS_TEST_VALGRIND is set, but valgrind is missing"
        argv = ["--workload", "W1", "--system", "bare", "--system", "layer"]
        argv += ["--transactions", "2", "--layouts", "1", "--jobs", "2"]
        assert instructions.main(argv) == 0
        rows = re.findall(
            r"^W1 +(bare SQLAlchemy|sa_signals) +([\d,]+) +0\.00% +(\d\.\d{3})$",
            capsys.readouterr().out,
            re.MULTILINE,
        )
        assert [label for label, _, _ in rows] == ["bare SQLAlchemy", "sa_signals"]
        assert rows[0][2] == "1.000"
        assert all(int(count.replace(",", "")) > 1_000_000 for _, count, _ in rows)

    def test_names_the_fix_when_valgrind_is_missing(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
    ) -> None:
        """Without valgrind on PATH the counter stops with a message that says to install it."""
        monkeypatch.setenv("PATH", str(tmp_path))
        with pytest.raises(SystemExit, match=r"valgrind was not found on PATH: install valgrind"):
            instructions.main(["--workload", "W1"])
