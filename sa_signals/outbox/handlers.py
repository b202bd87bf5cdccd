"""The handler registry: functions that outbox rows name, and how each is retried."""

from __future__ import annotations

import collections.abc as c
import dataclasses
import inspect
import typing as t

from .exceptions import HandlerNameError
from .exceptions import UnknownHandlerError
from .retry import Backoff

P = t.ParamSpec("P")
R = t.TypeVar("R")

DEFAULT_MAX_ATTEMPTS = 10
"""Runs of a failing row before it is dead."""

RetryPolicy: t.TypeAlias = "Backoff | c.Callable[[int], float]"
"""A :class:`Backoff`, or a function of the failed attempt's number returning seconds to wait."""


@dataclasses.dataclass(frozen=True, eq=False)
class Handler(t.Generic[P, R]):
    """A function registered under a stable name; calling it calls the function."""

    name: str
    """The name rows store: keep it stable across deployments."""
    func: c.Callable[P, R]
    max_attempts: int
    """Runs before the row is dead."""
    retry: RetryPolicy
    inline: bool
    """Whether the committing process runs the row right after COMMIT (the fast path)."""

    @property
    def is_coroutine(self) -> bool:
        """Whether the function is a coroutine function (awaited; needs an async session)."""
        return inspect.iscoroutinefunction(self.func)

    def delay(self, attempt: int) -> float:
        """Return the seconds to wait after the failed ``attempt``."""
        policy = self.retry
        return policy.delay(attempt) if isinstance(policy, Backoff) else policy(attempt)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<outbox handler {self.name}>"


_registry: dict[str, Handler[t.Any, t.Any]] = {}


@t.overload
def handler(name: c.Callable[P, R], /) -> Handler[P, R]: ...


@t.overload
def handler(
    name: str | None = None,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    retry: RetryPolicy | None = None,
    inline: bool = True,
) -> c.Callable[[c.Callable[P, R]], Handler[P, R]]: ...


def handler(
    name: str | c.Callable[P, R] | None = None,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    retry: RetryPolicy | None = None,
    inline: bool = True,
) -> Handler[P, R] | c.Callable[[c.Callable[P, R]], Handler[P, R]]:
    """Register a function as an outbox handler, under ``name`` or its module and qualified name.

    Used bare (``@handler``) or called (``@handler("emails.welcome", max_attempts=5)``, or
    ``@handler(name="emails.welcome")``). A row whose handler raises runs again after ``retry``
    (default :class:`Backoff`); after ``max_attempts`` runs it is dead. With ``inline=False`` the
    committing process does not run its rows itself: a worker does (woken at once on PostgreSQL).
    """
    if callable(name):
        return _register(name, None, max_attempts, retry, inline)
    if max_attempts < 1:
        msg = f"max_attempts must be at least 1, got {max_attempts}"
        raise ValueError(msg)

    def decorate(func: c.Callable[P, R]) -> Handler[P, R]:
        return _register(func, name, max_attempts, retry, inline)

    return decorate


def _register(
    func: c.Callable[P, R],
    name: str | None,
    max_attempts: int,
    retry: RetryPolicy | None,
    inline: bool,
) -> Handler[P, R]:
    if not callable(func):
        msg = f"@handler needs a function, got {func!r}"
        raise TypeError(msg)
    if name is None:
        name = ".".join(_origin(func))
        if "<" in name:
            msg = (
                f"the handler {name} has no stable name: define it at module level, or pass"
                " one with @handler('a.stable.name')."
            )
            raise HandlerNameError(msg)
    new = Handler(name, func, max_attempts, retry or Backoff(), inline)
    old = _registry.get(name)
    if old is not None and _origin(old.func) != _origin(func):
        msg = (
            f"the handler name {name!r} is taken by {old.func!r}: give one of them another"
            " name with @handler('...')."
        )
        raise HandlerNameError(msg)
    _registry[name] = new
    return new


def _origin(func: c.Callable[..., object]) -> tuple[str, str]:
    # A module imported twice (or reloaded) registers a new function object from the same place.
    return (getattr(func, "__module__", "?"), getattr(func, "__qualname__", repr(func)))


def get(name: str) -> Handler[t.Any, t.Any]:
    """Return the handler registered as ``name``."""
    try:
        return _registry[name]
    except KeyError:
        msg = (
            f"no outbox handler is registered as {name!r}: import the module that defines it"
            " (for the worker: --import MODULE)."
        )
        raise UnknownHandlerError(msg) from None


def registered() -> c.Mapping[str, Handler[t.Any, t.Any]]:
    """Return the registered handlers by name (a read-only view)."""
    return _registry.copy()


def unregister(name: str) -> None:
    """Forget the handler registered as ``name`` (for tests); no error if there is none."""
    _registry.pop(name, None)
