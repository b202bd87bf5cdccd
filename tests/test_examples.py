"""The examples run end to end against the real services."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
import types
import uuid

import pytest
import sqlalchemy as sa

pytestmark = [pytest.mark.services("redis"), pytest.mark.requires("redis")]

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


def load_example(name: str) -> types.ModuleType:
    """Import ``examples/<name>.py`` by path: the examples are scripts, not a package."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


REDIS_URL = os.environ.get("SA_SIGNALS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
"""The Redis server of the example test (every development and CI machine runs one)."""


class TestRedisCache:
    def test_invalidates_committed_changes_only(
        self, engine: sa.Engine, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Rolled-back changes keep the cache; committed ones, bulk included, invalidate it."""
        if engine.dialect.name == "sqlite":
            url = f"sqlite:///{tmp_path / 'shop.db'}"
        else:
            url = engine.url.render_as_string(hide_password=False)
        prefix = f"sa-signals-test:{uuid.uuid4().hex}:"
        cache = load_example("redis_cache").main(url, REDIS_URL, prefix)
        # Without UPDATE RETURNING (MariaDB) the bulk UPDATE's rows are unknown: all keys go.
        assert cache.invalidated == [1, 2 if engine.dialect.update_returning else None]
        assert list(cache.client.scan_iter(f"{prefix}*")) == []
        assert "jam now costs 6" in capsys.readouterr().out
