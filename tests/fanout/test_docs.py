"""The Python examples of docs/fanout.md run as written, against the test's Redis."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from tests.fanout.conftest import new_name
from tests.fanout.transports import redis_url
from tests.test_docs import python_blocks
from tests.test_docs import ROOT

pytestmark = pytest.mark.services("redis")


def test_fanout_page_examples_run(tmp_path: pathlib.Path) -> None:
    """Every python block of docs/fanout.md runs, in order, in a fresh interpreter."""
    blocks = python_blocks(ROOT / "docs" / "fanout.md")
    assert len(blocks) >= 4
    script = "\n".join(blocks)
    assert script.count("redis://127.0.0.1:6379/0") == 1
    script = script.replace("redis://127.0.0.1:6379/0", redis_url())
    script = script.replace('"shop-invalidations"', repr(new_name()))
    (tmp_path / "example.py").write_text(script)
    result = subprocess.run(
        [sys.executable, "example.py"], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr
