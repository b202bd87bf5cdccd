"""The blinker ``Signal`` subclass behind every sa_signals signal."""

from __future__ import annotations

import collections.abc as c
import inspect
import threading
import types
import typing as t
import weakref

import blinker
from blinker._utilities import make_id as _make_id

Receiver = c.Callable[..., t.Any]

_ANY_ID = blinker.base.ANY_ID


class Signal(blinker.NamedSignal):
    """A blinker signal that calls receivers in connection order and matches classes by MRO.

    ``send()`` keeps blinker's behaviour. The layer sends through :meth:`receivers_in_order`,
    cached per sender and rebuilt only after a connect or disconnect.
    """

    def __init__(self, name: str, doc: str | None = None) -> None:
        super().__init__(name, doc)
        self._cache: dict[type | None, tuple[tuple[t.Any, bool], ...]] = {}
        self._lock = threading.RLock()
        self._version = 0

    def connect(self, receiver: t.Any, sender: t.Any = blinker.ANY, weak: bool = True) -> t.Any:
        """Connect ``receiver`` as blinker does; see :meth:`blinker.Signal.connect`."""
        with self._lock:
            self._invalidate()
            result = super().connect(receiver, sender, weak)
            self._invalidate()
        return result

    def disconnect(  # type: ignore[override]
        self, receiver: c.Callable[..., t.Any], sender: t.Any = blinker.ANY
    ) -> bool:
        """Disconnect ``receiver`` from ``sender`` (from every sender by default).

        Return whether it was connected to it. A receiver disconnected from the last sender it
        was connected to is no longer connected at all: :attr:`receivers` forgets it.
        """
        receiver_id = _make_id(receiver)
        with self._lock:
            if sender is blinker.ANY:
                connected = receiver_id in self.receivers
            else:
                connected = _make_id(sender) in self._by_receiver.get(receiver_id, ())
            super().disconnect(receiver, sender)
        return connected

    def _disconnect(self, receiver_id: c.Hashable, sender_id: c.Hashable) -> None:
        # Also reached from blinker's weakref cleanup when a weak receiver is collected.
        super()._disconnect(receiver_id, sender_id)
        if sender_id != _ANY_ID and not self._by_receiver.get(receiver_id):
            # blinker keeps a receiver disconnected from its only sender in `receivers`.
            super()._disconnect(receiver_id, _ANY_ID)
        self._invalidate()

    def _make_cleanup_sender(
        self, sender_id: c.Hashable
    ) -> c.Callable[[weakref.ref[t.Any]], None]:
        cleanup = super()._make_cleanup_sender(sender_id)

        def invalidating_cleanup(ref: weakref.ref[t.Any]) -> None:
            cleanup(ref)
            self._invalidate()

        return invalidating_cleanup

    def _clear_state(self) -> None:
        super()._clear_state()
        self._invalidate()

    def _invalidate(self) -> None:
        self._version += 1
        self._cache = {}
        self.__dict__.pop("_instance_flag", None)

    def receivers_in_order(self, sender: t.Any) -> list[tuple[Receiver, bool]]:
        """Return ``(receiver, is_coroutine_function)`` for ``sender`` in connection order.

        A class sender also matches receivers connected to any class in its MRO; every receiver
        is listed once, however many of its senders match.
        """
        if isinstance(sender, type):
            entries = self._cache.get(sender)
            if entries is None:
                entries = self._build(sender, sender.__mro__)
        elif self._instance_senders:
            entries = self._build(None, (sender,))
        else:
            entries = self._cache.get(None)
            if entries is None:
                entries = self._build(None, ())
        # A list, not a generator: a comprehension costs less than resuming a generator once per
        # receiver, on every row of every flush.
        return [
            (receiver, is_coro)
            for ref, is_coro in entries
            if (receiver := ref() if isinstance(ref, weakref.ref) else ref) is not None
        ]

    @property
    def _instance_senders(self) -> bool:
        """Whether a receiver is connected to a sender that is not a class."""
        flag = self.__dict__.get("_instance_flag")
        if flag is None:
            flag = any(
                ref() is not None and not isinstance(ref(), type)
                for ref in self._weak_senders.values()
            ) or any(
                sender_id != _ANY_ID and sender_id not in self._weak_senders and bucket
                for sender_id, bucket in self._by_sender.items()
            )
            self.__dict__["_instance_flag"] = flag
        return flag

    def _build(
        self, key: type | None, senders: tuple[t.Any, ...]
    ) -> tuple[tuple[t.Any, bool], ...]:
        version = self._version
        by_sender = self._by_sender
        wanted: set[t.Any] = set(by_sender.get(_ANY_ID, ()))
        for sender in senders:
            wanted.update(by_sender.get(_make_id(sender), ()))
        entries = []
        for receiver_id, ref in list(self.receivers.items()):
            if receiver_id in wanted:
                target = ref() if isinstance(ref, weakref.ref) else ref
                if target is not None:
                    entries.append((ref, is_coroutine_function(target)))
        result = tuple(entries)
        if key is not None or not senders:
            with self._lock:
                # A connect that raced this build bumped the version: do not cache a stale list.
                if version == self._version:
                    self._cache[key] = result
        return result


def is_coroutine_function(receiver: t.Any) -> bool:
    """Whether calling ``receiver`` makes a coroutine: a coroutine function, or an object whose
    ``__call__`` is one."""
    # Fast path, on every on_commit(): for a plain function without attributes (so without a
    # markcoroutinefunction() marker), inspect.iscoroutinefunction() reads only the code flags.
    if type(receiver) is types.FunctionType and not receiver.__dict__:
        return bool(receiver.__code__.co_flags & inspect.CO_COROUTINE)
    func = getattr(receiver, "__func__", receiver)
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - a callable object's async __call__
    )
