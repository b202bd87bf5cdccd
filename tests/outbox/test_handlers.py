"""@handler: the registry of functions that rows name."""

from __future__ import annotations

import pytest

from sa_signals import outbox
from sa_signals.outbox import handlers
from tests.outbox import app


def test_default_name_is_module_and_qualified_name():
    """A bare @handler registers under its module and qualified name."""
    assert app.record.name == "tests.outbox.app.record"
    assert handlers.get("tests.outbox.app.record") is app.record


def test_handler_is_still_callable():
    """The decorated function can be called directly."""
    assert app.record.func.__name__ == "record"


def test_options_are_kept():
    """max_attempts, retry and inline are recorded on the handler."""
    assert (app.flaky.max_attempts, app.flaky.delay(3), app.flaky.inline) == (3, 0.0, True)
    assert app.record_later.inline is False
    assert isinstance(app.record.retry, outbox.Backoff)


def test_a_taken_name_is_refused():
    """Another function under a registered name raises HandlerNameError."""

    def other() -> None: ...

    with pytest.raises(outbox.HandlerNameError, match="is taken by"):
        outbox.handler("tests.outbox.app.record")(other)


def test_a_local_function_needs_a_name():
    """A function without a stable import path must be given a name."""

    def local() -> None: ...

    with pytest.raises(outbox.HandlerNameError, match="no stable name"):
        outbox.handler(local)
    named = outbox.handler("tests.local")(local)
    try:
        assert handlers.registered()["tests.local"] is named
    finally:
        handlers.unregister("tests.local")


def test_name_may_be_given_by_keyword():
    """@handler(name=...) registers under that name, as @handler("...") does."""

    def local() -> None: ...

    named = outbox.handler(name="tests.by_keyword", max_attempts=2)(local)
    try:
        assert handlers.registered()["tests.by_keyword"] is named
        assert named.max_attempts == 2
    finally:
        handlers.unregister("tests.by_keyword")


def test_max_attempts_must_be_positive():
    """max_attempts below 1 is refused."""
    with pytest.raises(ValueError, match="at least 1"):
        outbox.handler(max_attempts=0)


def test_non_callable_is_refused():
    """Registering something that cannot be called raises TypeError."""
    with pytest.raises(TypeError, match="needs a function"):
        outbox.handler("tests.x")(42)  # type: ignore[arg-type]
