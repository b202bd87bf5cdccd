"""Tests whose packages are not installed: found before import, and deselected.

``pip install -e ".[test]"`` installs what the core's tests need; the integrations' tests need
the ``test-integrations`` extra, the server drivers ``test-servers`` (``dev`` has them all). A test
module importing a package that is missing cannot even be imported: it is collected as one
placeholder item marked ``requires(...)``, which ``tests/conftest.py`` deselects like any test
whose ``requires`` marker names a missing package.
"""

from __future__ import annotations

import ast
import collections.abc as c
import functools
import importlib.util
import pathlib
import typing as t

import pytest


def missing(names: c.Iterable[str]) -> list[str]:
    """The packages among ``names`` (top-level import names) that cannot be imported."""
    return sorted({name for name in names if not installed(name)})


@functools.cache
def installed(name: str) -> bool:
    """Whether the top-level package ``name`` can be imported."""
    return importlib.util.find_spec(name) is not None


def top_level_imports(source: str) -> set[str]:
    """The top-level packages that ``source`` imports unconditionally, at module level."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


class NotInstalled(pytest.File):
    """A test module that imports missing packages: one placeholder stands for its tests."""

    def __init__(self, *, packages: list[str], **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self.packages = packages

    def collect(self) -> c.Iterator[pytest.Item]:
        yield Placeholder.from_parent(
            self, name=f"needs {', '.join(self.packages)}", packages=self.packages
        )


class Placeholder(pytest.Item):
    """The tests of a module whose packages are missing; always deselected, never run."""

    def __init__(self, *, packages: list[str], **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self.add_marker(pytest.mark.requires(*packages))

    def runtest(self) -> None:
        msg = f"{self.nodeid} stands for tests that cannot be imported; it is never run"
        raise AssertionError(msg)

    def reportinfo(self) -> tuple[pathlib.Path, int | None, str]:
        return self.path, None, self.name


def module_collector(module_path: pathlib.Path, parent: pytest.Collector) -> pytest.File | None:
    """A placeholder collector for ``module_path`` if it imports missing packages, else None."""
    packages = missing(top_level_imports(module_path.read_text()))
    if not packages:
        return None
    return NotInstalled.from_parent(parent, path=module_path, packages=packages)
