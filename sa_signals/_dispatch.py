"""The blinker ``Signal`` subclasses behind every sa_signals signal."""

from __future__ import annotations

import collections.abc as c
import inspect
import sys
import threading
import types
import typing as t
import warnings
import weakref

import blinker
import sqlalchemy.orm as sa_orm
from blinker._utilities import make_id as _make_id

from .exceptions import SenderNameError
from .exceptions import WeakReceiverWarning
from .typing import OPERATIONS

if t.TYPE_CHECKING:
    from .typing import Operation

Receiver = c.Callable[..., t.Any]

Family: t.TypeAlias = t.Literal["veto", "isolated", "failure"]
"""What a failing receiver of a signal does unless connected with its own ``robust=``:
``"veto"`` (sent inside the transaction or the code that caused it: the exception propagates),
``"isolated"`` (commit- or rollback-time: logged and sent on ``receiver_failed``, the others
still run; strict under ``install(robust=False)``), ``"failure"`` (a failure signal: only ever
logged)."""

F = t.TypeVar("F", bound=c.Callable[..., t.Any])


class _HasOperation(t.Protocol):
    """A :class:`~sa_signals.Change`, as far as ``on=`` filters it."""

    @property
    def operation(self) -> str: ...


D = t.TypeVar("D", bound=_HasOperation)

_ANY_ID = blinker.base.ANY_ID


class Signal(blinker.NamedSignal):
    """A blinker signal that calls receivers in connection order and matches classes by MRO.

    ``send()`` keeps blinker's behaviour. The layer sends through :meth:`receivers_in_order`,
    cached per sender and rebuilt only after a connect or disconnect. ``connect()`` also takes
    ``robust=`` (how this receiver's failures are handled, see :data:`Family`) and, for change
    signals, ``on=`` (the operations it receives).
    """

    def __init__(
        self,
        name: str,
        doc: str | None = None,
        *,
        family: Family = "isolated",
        changes: bool = False,
    ) -> None:
        super().__init__(name, doc)
        self.family: Family = family
        """How a failing receiver is handled unless it was connected with ``robust=``."""
        self.changes = changes
        """Whether receivers get :class:`~sa_signals.Change` records, which ``on=`` filters."""
        self._cache: dict[type | None, tuple[tuple[t.Any, bool], ...]] = {}
        self._lock = threading.RLock()
        self._version = 0
        self._robust: dict[c.Hashable, bool] = {}
        self._on: dict[c.Hashable, frozenset[str]] = {}

    def connect(
        self,
        receiver: F,
        sender: t.Any = blinker.ANY,
        weak: bool = True,
        *,
        robust: bool | None = None,
        on: Operation | c.Iterable[Operation] | None = None,
    ) -> F:
        """Connect ``receiver`` as blinker does; see :meth:`blinker.Signal.connect`.

        ``robust=True`` isolates the receiver's failures (logged and sent on
        ``receiver_failed``), ``robust=False`` lets them propagate; None follows the signal's
        family and ``install(robust=...)``. ``on`` limits a receiver of a change signal to some
        operations: ``"insert"``, ``"update"``, ``"delete"``.

        .. warning:: Connected weakly (the default), a lambda, nested function, ``partial`` or
           callable object that nothing else references is collected at once and never called:
           connecting one warns with :class:`~sa_signals.exceptions.WeakReceiverWarning`.
        """
        if weak and _may_die(receiver):
            refs = sys.getrefcount(receiver)  # first, as _Probe.connect() counts
            if _held_by_the_call_only(receiver, refs, sys._getframe(1)):
                _warn_collected(self, receiver)
        operations = self._check_options(robust, on)
        receiver_id = _make_id(receiver)
        with self._lock:
            # Set before the connect, so that no send meets the receiver without them.
            if robust is not None:
                self._robust[receiver_id] = robust
            if operations is not None:
                self._on[receiver_id] = operations
            try:
                self._connect(receiver, sender, weak)
            except BaseException:
                if receiver_id not in self.receivers:
                    self._robust.pop(receiver_id, None)
                    self._on.pop(receiver_id, None)
                raise
        return receiver

    def connect_via(
        self,
        sender: t.Any,
        weak: bool = False,
        *,
        robust: bool | None = None,
        on: Operation | c.Iterable[Operation] | None = None,
    ) -> c.Callable[[F], F]:
        """Connect the decorated function to ``sender``, strongly by default, as blinker does;
        ``robust`` and ``on`` as for :meth:`connect`."""

        def decorator(fn: F) -> F:
            self.connect(fn, sender, weak, robust=robust, on=on)
            return fn

        return decorator

    def _connect(self, receiver: t.Any, sender: t.Any, weak: bool) -> None:
        with self._lock:
            self._invalidate()
            super().connect(receiver, sender, weak)
            self._invalidate()

    def _check_options(
        self, robust: object, on: Operation | c.Iterable[Operation] | None
    ) -> frozenset[str] | None:
        if robust is not None:
            if not isinstance(robust, bool):
                msg = f"{self.name}.connect() takes robust=True, False or None, got {robust!r}"
                raise TypeError(msg)
            if self.family == "failure":
                msg = (
                    f"{self.name} receivers are always isolated (a failure there is only"
                    " logged): connect without robust=."
                )
                raise TypeError(msg)
        if on is None:
            return None
        if not self.changes:
            msg = (
                f"on= filters the receivers of change signals (committed, rolled_back and the"
                f" lists of changes), not of {self.name}: connect without on=."
            )
            raise TypeError(msg)
        operations = frozenset((on,) if isinstance(on, str) else on)
        unknown = sorted(operations - set(OPERATIONS))
        if unknown or not operations:
            msg = (
                f"{self.name}.connect(on=...) takes operations among {', '.join(OPERATIONS)},"
                f" got {on!r}"
            )
            raise ValueError(msg)
        return operations

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
        if receiver_id not in self.receivers:
            self._robust.pop(receiver_id, None)
            self._on.pop(receiver_id, None)
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
        self._robust.clear()
        self._on.clear()
        self._invalidate()

    def _invalidate(self) -> None:
        self._version += 1
        self._cache = {}
        self.__dict__.pop("_instance_flag", None)

    def robust_for(self, receiver: object, install_robust: bool) -> bool:
        """Whether a failure of ``receiver`` is only reported rather than raised.

        Its own ``robust=`` decides; else the signal's family, and for an isolated one the
        ``robust`` of the installation whose session sent it. Asked only once it failed.
        """
        if self._robust:
            own = self._robust.get(_make_id(receiver))
            if own is not None:
                return own
        return self.family != "veto" and install_robust

    def wants(self, receiver: object, operation: str) -> bool:
        """Whether ``receiver`` receives changes of ``operation`` (see ``connect(on=...)``)."""
        if not self._on:
            return True
        operations = self._on.get(_make_id(receiver))
        return operations is None or operation in operations

    def changes_for(self, receiver: object, changes: c.Sequence[D]) -> list[D]:
        """Return a list of its own for ``receiver``: the ``changes`` of the operations it was
        connected ``on``."""
        operations = self._on.get(_make_id(receiver)) if self._on else None
        if operations is None:
            return list(changes)
        return [change for change in changes if change.operation in operations]

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


class ModelSignal(Signal):
    """A signal whose sender is a mapped class, which receivers may also name as a string.

    ``connect(receiver, sender="Book")`` (or ``"myapp.models.Book"``) connects to the mapped
    class of that name, found in SQLAlchemy's declarative registries: at once if it is mapped,
    else once it is (a name still pending when a flush begins raises
    :class:`~sa_signals.exceptions.SenderNameError` there).
    """

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._names: dict[str, _Name] = {}
        """The names not resolved yet, each with the placeholder its receivers are connected to."""

    def _connect(self, receiver: t.Any, sender: t.Any, weak: bool) -> None:
        if not isinstance(sender, str):
            super()._connect(receiver, sender, weak)
            return
        _check_name(self, sender)
        with self._lock:
            found = _classes_named(sender)
            if len(found) > 1:
                raise _ambiguous(self, sender, found)
            if found:
                super()._connect(receiver, found[0], weak)
                return
            placeholder = self._names.get(sender)
            if placeholder is None:
                placeholder = self._names[sender] = _Name(sender)
                _waiting.add(self)
            super()._connect(receiver, placeholder, weak)

    def disconnect(  # type: ignore[override]
        self, receiver: c.Callable[..., t.Any], sender: t.Any = blinker.ANY
    ) -> bool:
        """Disconnect ``receiver`` as :meth:`Signal.disconnect` does; a string ``sender``
        disconnects it from the class of that name, and from the name if still pending."""
        if not isinstance(sender, str):
            with self._lock:
                removed = super().disconnect(receiver, sender)
                for name in list(self._names):
                    self._forget_if_unused(name)
            return removed
        with self._lock:
            removed = False
            placeholder = self._names.get(sender)
            if placeholder is not None:
                removed = super().disconnect(receiver, placeholder)
                self._forget_if_unused(sender)
            for cls in _classes_named(sender):
                removed = super().disconnect(receiver, cls) or removed
        return removed

    def _build(
        self, key: type | None, senders: tuple[t.Any, ...]
    ) -> tuple[tuple[t.Any, bool], ...]:
        if self._names:
            self.resolve(strict=False)  # a class mapped after the connect is sent for now
        return super()._build(key, senders)

    def resolve(self, *, strict: bool) -> None:
        """Connect the receivers of pending names to the classes now mapped under them.

        With ``strict``, a name that matches no mapped class, or several, raises
        :class:`~sa_signals.exceptions.SenderNameError`; otherwise it stays pending.
        """
        with self._lock:
            for name, placeholder in list(self._names.items()):
                if self._forget_if_unused(name):
                    continue  # its receivers were disconnected, or collected
                found = _classes_named(name)
                if len(found) != 1:
                    if strict:
                        raise _ambiguous(self, name, found) if found else _unknown(self, name)
                    continue
                for receiver_id in list(self._by_sender.get(_make_id(placeholder), ())):
                    ref = self.receivers.get(receiver_id)
                    weak = isinstance(ref, weakref.ref)
                    receiver = ref() if weak else ref  # type: ignore[misc]
                    if receiver is not None:
                        super()._connect(receiver, found[0], weak)
                        super().disconnect(receiver, placeholder)
                self._names.pop(name, None)
            if not self._names:
                _waiting.discard(self)

    def _forget_if_unused(self, name: str) -> bool:
        """Forget the pending ``name`` if no receiver waits on it any more; return whether."""
        placeholder = self._names[name]
        if self._by_sender.get(_make_id(placeholder)):
            return False
        del self._names[name]
        if not self._names:
            _waiting.discard(self)
        return True


class _Name:
    """What the receivers of a string sender are connected to until the name resolves."""

    __slots__ = ("__weakref__", "name")

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<mapped class named {self.name!r}, not mapped yet>"


_waiting: weakref.WeakSet[ModelSignal] = weakref.WeakSet()
"""The model signals with names not resolved yet."""


def names_pending() -> bool:
    """Whether a receiver was connected to a string sender that is not resolved yet."""
    return bool(_waiting)


def resolve_names() -> None:
    """Resolve every pending string sender; raise for one that names no mapped class, or
    several (see :meth:`ModelSignal.resolve`)."""
    for signal in list(_waiting):
        signal.resolve(strict=True)


def _check_name(signal: Signal, name: str) -> None:
    if not name or not all(part.isidentifier() for part in name.split(".")):
        msg = (
            f"{signal.name}.connect(sender={name!r}): a string sender names a mapped class, as"
            " 'Book' or 'myapp.models.Book'."
        )
        raise ValueError(msg)


def _classes_named(name: str) -> list[type]:
    """Return the mapped classes called ``name``, or whose dotted path ends with it."""
    suffix = f".{name}"
    found = set()
    for registry in sa_orm.mapperlib._all_registries():
        for mapper in registry.mappers:
            cls = mapper.class_
            path = f"{cls.__module__}.{cls.__qualname__}"
            if path == name or path.endswith(suffix):
                found.add(cls)
    return sorted(found, key=_path)


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _ambiguous(signal: Signal, name: str, found: list[type]) -> SenderNameError:
    paths = ", ".join(repr(_path(cls)) for cls in found)
    msg = (
        f"{signal.name}.connect(sender={name!r}): {name!r} names several mapped classes"
        f" ({paths}); give the module path of one of them."
    )
    return SenderNameError(msg)


def _unknown(signal: Signal, name: str) -> SenderNameError:
    msg = (
        f"{signal.name}.connect(sender={name!r}): no mapped class is named {name!r}; fix the"
        " name, or import the module that maps it before the first flush."
    )
    return SenderNameError(msg)


def _may_die(receiver: object) -> bool:
    """Whether ``receiver`` may be referenced by nothing but the call connecting it: not a bound
    method (blinker holds its object weakly) nor a class, nor a function defined at module level
    (a decorated one is stored under its name only once the decorator returns)."""
    if inspect.ismethod(receiver) or isinstance(receiver, type):
        return False
    if type(receiver) is types.FunctionType:
        return receiver.__name__ == "<lambda>" or "<locals>" in receiver.__qualname__
    return True


def _held_by_the_call_only(receiver: object, refs: int, caller: types.FrameType) -> bool:
    """Whether ``receiver``, seen by :meth:`Signal.connect` with ``refs`` references, is held by
    nothing but that call from ``caller``: no variable of the caller names it, and it has no
    more references than the call itself makes (measured by :func:`_refs_of_the_call`)."""
    as_argument, as_decorated = _refs_of_the_call()
    # A decorated function starts on the line of its first decorator, the line being run.
    code = getattr(receiver, "__code__", None)
    decorated = code is not None and code.co_firstlineno == caller.f_lineno
    if refs > (as_decorated if decorated else as_argument):
        return False
    return not any(value is receiver for value in caller.f_locals.values())


_CALL_REFS: tuple[int, int] | None = None


def _refs_of_the_call() -> tuple[int, int]:
    """Return the references :meth:`Signal.connect` sees for an object passed to it, and for a
    function it decorates, that nothing else references; measured once, as they depend on the
    interpreter."""
    global _CALL_REFS  # measured once; a race measures the same figures twice
    if _CALL_REFS is None:
        probe = _Probe()
        probe.connect(lambda sender: None)

        @probe.connect
        def decorated(sender: object) -> None: ...

        _CALL_REFS = (probe.counts[0], probe.counts[1])
    return _CALL_REFS


class _Probe:
    """Counts what :meth:`Signal.connect` counts, through a method of the same shape."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def connect(self, receiver: F, sender: object = None, weak: bool = True) -> F:
        refs = sys.getrefcount(receiver)
        self.counts.append(refs)
        return receiver


def _warn_collected(signal: Signal, receiver: object) -> None:
    msg = (
        f"{signal.name}.connect({receiver!r}) connects it weakly, and nothing else references"
        " it: it will be collected at once and never called. Connect it with weak=False, or"
        " keep a reference to it."
    )
    warnings.warn(msg, WeakReceiverWarning, stacklevel=3)


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
