"""Killed producers and workers lose nothing and run nothing twice (benchmarks/outbox_crash.py).

A scaled-down run of the crash test: CI kills 4 producers and a worker per backend; the
figures of the full run (120 kills per backend) are in benchmarks/README.md.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.outbox.helpers import ROOT


@pytest.mark.slow
def test_every_committed_effect_exists_once_after_kills(engine):
    """After SIGKILLs around COMMIT and mid-handler, each committed row ran exactly once."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.outbox_crash",
            "--url",
            engine.url.render_as_string(hide_password=False),
            "--kills",
            "4",
            "--worker-kills",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    figures = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert figures["committed"] == figures["effects"] > 0
    assert sum(figures["producer_kills"].values()) == 4
