"""The Python examples of the README and the docs run as written."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNNABLE = [
    "README.md",
    "docs/index.md",
    "docs/integrations.md",
    "docs/signals.md",
    "docs/changes.md",
    "docs/on_commit.md",
]
"""Pages whose ``python`` blocks are complete programs, run one page at a time in order."""


def python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("page", RUNNABLE)
def test_page_examples_run(page: str, tmp_path: pathlib.Path) -> None:
    """Every python block of the page runs without error, in a fresh interpreter."""
    blocks = python_blocks(ROOT / page)
    assert blocks, f"{page} has no python example"
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr


def test_readme_tour_prints_after_commit(tmp_path: pathlib.Path) -> None:
    """The README's on_commit example really prints once the block committed."""
    script = tmp_path / "tour.py"
    script.write_text("\n".join(python_blocks(ROOT / "README.md")))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == ["committed!"]


def test_example_script_runs() -> None:
    """The quick-start example ends with the committed price read through the cache."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "cache_invalidation.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "2. a change inside a rolled-back savepoint never invalidates:" in result.stdout
    assert result.stdout.count("cache entry dropped") == 2
    assert result.stdout.splitlines()[-1] == "audit: product 1 now costs 4"
