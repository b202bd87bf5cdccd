"""The documentation: its Python examples run as written, its API reference names everything.

Each page's ```python blocks together form one program, run in a fresh interpreter, unless the
line just above a block marks it: ``<!-- fragment -->`` (an excerpt, not meant to run) or
``<!-- example: path -->`` (a copy of that file, which its own tests run). See DEVELOPERS.md.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest
import sqlalchemy as sa

import sa_signals
from tests import not_installed

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md"))]
"""Every page that may hold examples (the API reference in docs/api/ holds none)."""

FRAGMENT = "<!-- fragment -->"
EXAMPLE = re.compile(r"<!-- example: \S+ -->")
BLOCK = re.compile(
    r"^(?:(?P<marker><!--[^\n]*-->)\n)?```(?P<language>[\w+-]*)[^\n]*\n(?P<code>.*?)^```",
    flags=re.MULTILINE | re.DOTALL,
)


def blocks(page: str) -> list[re.Match[str]]:
    """The fenced code blocks of ``page``, with the marker on the line above each, if any."""
    return list(BLOCK.finditer((ROOT / page).read_text()))


def program(page: str) -> str:
    """The unmarked ``python`` blocks of ``page``, in order: the program its examples form."""
    return "\n".join(
        block["code"]
        for block in blocks(page)
        if block["language"] == "python" and block["marker"] is None
    )


SERVERS: dict[str, tuple[list[str], str]] = {
    "docs/fanout.md": (["redis"], "redis"),
}
"""Pages whose program talks to a server: the packages it needs beyond its own imports (a
transport's driver, imported by sa_signals), and the server, named by ``services(...)`` and
handed to the program as ``REDIS_URL``."""


def needs(page: str) -> list[pytest.MarkDecorator]:
    """A ``requires`` mark for the packages the page's program imports, and a ``services``
    mark for the server it talks to."""
    try:
        imported = not_installed.top_level_imports(program(page))
    except SyntaxError:
        return []  # the run reports it
    marks = []
    if page in SERVERS:
        packages, server = SERVERS[page]
        imported.update(packages)
        marks.append(pytest.mark.services(server))
    return [pytest.mark.requires(*sorted(imported)), *marks]


RUNNABLE = [page for page in PAGES if program(page)]


def test_every_python_block_is_run_or_marked() -> None:
    """Python blocks are fenced ```python, and a marker above one is a known one."""
    for page in PAGES:
        for block in blocks(page):
            where = f"{page}: the block at offset {block.start()}"
            assert block["language"] not in ("py", "python3", "pycon"), (
                f"{where}: fence Python code as ```python"
            )
            marker = block["marker"]
            if block["language"] == "python" and marker is not None:
                assert marker == FRAGMENT or EXAMPLE.fullmatch(marker), (
                    f"{where}: {marker!r} is neither {FRAGMENT!r} nor <!-- example: path -->"
                )


def test_runnable_pages_are_found() -> None:
    """The pages known to hold complete examples are among those run."""
    assert {"README.md", "docs/index.md", "docs/integrations.md"} <= set(RUNNABLE)


@pytest.mark.parametrize("page", [pytest.param(page, marks=needs(page)) for page in RUNNABLE])
def test_page_examples_run(page: str, tmp_path: pathlib.Path) -> None:
    """The unmarked python blocks of the page run without error, in a fresh interpreter."""
    script = tmp_path / "example.py"
    script.write_text(program(page))
    env = dict(os.environ)
    if os.environ.get("SA_SIGNALS_TEST_REDIS_URL"):
        env["REDIS_URL"] = os.environ["SA_SIGNALS_TEST_REDIS_URL"]
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_readme_tour_prints_after_commit(tmp_path: pathlib.Path) -> None:
    """The README's on_commit example really prints once the block committed."""
    script = tmp_path / "tour.py"
    script.write_text(program("README.md"))
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


def test_example_script_runs_again_on_the_same_database(
    engine: sa.Engine, tmp_path: pathlib.Path
) -> None:
    """The quick-start example drops its tables at the end, and left ones at the start."""
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name == "sqlite":
        url = f"sqlite:///{tmp_path / 'shop.db'}"
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "cache_invalidation.py"), url],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == "audit: product 1 now costs 4"
    assert not sa.inspect(engine).has_table("products")


API_PAGES = ROOT / "docs" / "api"
DIRECTIVE = re.compile(r"^::: (\S+)$", flags=re.MULTILINE)


def directives() -> set[str]:
    """The paths of the objects the API reference renders (``::: path`` lines)."""
    return {
        path for page in API_PAGES.glob("*.md") for path in DIRECTIVE.findall(page.read_text())
    }


DOCUMENTED_WHOLE = [
    "sa_signals.signals",
    "sa_signals.exceptions",
    "sa_signals.typing",
    "sa_signals.testing",
    "sa_signals.pytest_plugin",
    "sa_signals.contrib.asgi",
    "sa_signals.contrib.celery",
    "sa_signals.contrib.flask",
    "sa_signals.contrib.scopes",
    "sa_signals.contrib.starlette",
    "sa_signals.contrib.wsgi",
    "sa_signals.fanout",
    "sa_signals.fanout.postgresql",
    "sa_signals.fanout.redis_pubsub",
    "sa_signals.fanout.redis_streams",
    "sa_signals.outbox",
]
"""The public modules the API reference renders whole: every public member with its docstring."""

NOT_API = {"sa_signals.contrib.flask.msg", "sa_signals.fanout.postgresql.msg"}
"""Module-level names that are not API (the message of the error raised without Flask, or
without psycopg)."""


def resolve(path: str) -> object:
    """The object at the dotted ``path``: a module, or an attribute of one (None if missing)."""
    try:
        return importlib.import_module(path)
    except ImportError:
        module, _, name = path.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name, None)
        except ImportError:
            return None


@pytest.mark.requires("griffe")
def test_api_reference_names_every_export() -> None:
    """Each name of ``sa_signals.__all__`` has a docstring and an entry in the API reference.

    The exceptions are rendered with their module, ``signals`` on a page of its own.
    """
    import griffe

    package = griffe.load("sa_signals", resolve_aliases=True)
    rendered = [resolve(path) for path in directives()]
    exceptions = importlib.import_module("sa_signals.exceptions")
    for name in sa_signals.__all__:
        obj = getattr(sa_signals, name)
        # A constant's docstring follows it in the source, where only griffe finds it.
        documented = inspect.getdoc(obj) if callable(obj) else package[name].docstring
        assert documented, f"sa_signals.{name} has no docstring"
        if getattr(exceptions, name, None) is obj:
            continue
        assert any(each is obj for each in rendered), f"sa_signals.{name} is not in docs/api/"


@pytest.mark.requires("griffe")
def test_api_reference_documents_every_public_module() -> None:
    """The public modules are rendered whole, each public member with a docstring to show.

    Members without a docstring would be left out of the page.
    """
    import griffe

    assert set(DOCUMENTED_WHOLE) <= directives()
    contrib = {f"sa_signals.contrib.{name}" for name in griffe.load("sa_signals.contrib").modules}
    assert contrib <= set(DOCUMENTED_WHOLE), "a contrib module is missing from docs/api/"
    package = griffe.load("sa_signals", resolve_aliases=False)
    for path in DOCUMENTED_WHOLE:
        module = package[path.removeprefix("sa_signals.")]
        for name, member in module.members.items():
            if name.startswith(("_", "pytest_")) or member.is_alias or f"{path}.{name}" in NOT_API:
                continue
            if member.is_attribute and str(member.value).startswith("t.TypeVar("):
                continue
            assert member.docstring, f"{path}.{name} has no docstring"
