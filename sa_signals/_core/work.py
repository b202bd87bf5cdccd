"""What the runner calls after a commit: a callback as registered, or a :class:`Work`."""

from __future__ import annotations

import collections.abc as c
import typing as t

from .failures import coroutine_error

if t.TYPE_CHECKING:
    from .._dispatch import Signal
    from .state import Item


@t.final
class Work:
    """One call to make after a commit: a strict on_commit callback or a commit-time receiver."""

    __slots__ = ("args", "func", "kwargs", "robust", "signal", "unawaitable")

    def __init__(
        self,
        func: c.Callable[..., object],
        robust: bool,
        args: tuple[t.Any, ...] = (),
        signal: Signal | None = None,
        unawaitable: bool = False,
        kwargs: c.Mapping[str, t.Any] | None = None,
    ) -> None:
        self.func = func
        self.robust = robust
        """A callback's ``robust``; for a receiver, that of the installation that sent it."""
        self.args = args
        self.signal = signal
        """The signal whose receiver ``func`` is; None for an on_commit callback."""
        self.unawaitable = unawaitable
        """Set for a coroutine function met by a synchronous install: it fails when called."""
        self.kwargs = kwargs

    def __call__(self) -> object:
        """Make the call; a coroutine function returns its coroutine for the runner to await."""
        if self.unawaitable:
            raise coroutine_error(self.func)
        kwargs = self.kwargs
        return self.func(*self.args, **kwargs) if kwargs else self.func(*self.args)


def func_of(item: Item) -> c.Callable[..., object]:
    """Return the callback or receiver ``item`` calls."""
    return item.func if type(item) is Work else item


def robust_of(item: Item) -> bool:
    """Whether a failure of ``item`` is only reported (not raised out of ``commit()``).

    A receiver's own ``robust=`` decides over its installation's (see
    :meth:`~sa_signals._dispatch.Signal.robust_for`); asked only once it failed.
    """
    if type(item) is not Work:
        return True
    signal = item.signal
    return item.robust if signal is None else signal.robust_for(item.func, item.robust)
