"""``enqueue_on_commit()``: send a Celery task once the session's transaction truly committed.

With ``durable=True`` the send is an outbox row (:mod:`sa_signals.outbox`) written in the same
transaction and relayed to the broker by :func:`relay`: after the commit by the committing
process, or by an outbox worker if that process died or the broker refused the message.
"""

from __future__ import annotations

import importlib
import typing as t
import uuid

import sqlalchemy.orm as sa_orm

from .. import outbox
from ..exceptions import SaSignalsError
from ..on_commit import on_commit

if t.TYPE_CHECKING:
    import collections.abc as c

    from ..typing import SessionTarget


class TaskNotSentError(SaSignalsError, RuntimeError):
    """The task of an :class:`Enqueued` handle has not been sent (yet, or ever)."""


class Sendable(t.Protocol):
    """What :func:`enqueue_on_commit` sends: a Celery ``Task`` or a ``Signature``."""

    def apply_async(
        self,
        args: tuple[t.Any, ...] | None = ...,
        kwargs: dict[str, t.Any] | None = ...,
        /,
        **options: t.Any,
    ) -> t.Any: ...


class Enqueued:
    """The handle :func:`enqueue_on_commit` returns for one task.

    Its :attr:`task_id` is reserved at once, so it can be stored in the same transaction; the
    task is sent under that id after the commit, and never if the transaction (or the savepoint
    it was enqueued in) rolls back.
    """

    __slots__ = ("_result", "durable", "error", "options", "task", "task_id")

    def __init__(
        self, task: Sendable, task_id: str, options: dict[str, t.Any], durable: bool = False
    ) -> None:
        self.task = task
        self.task_id = task_id
        """The id the task is sent with."""
        self.options = options
        self.durable = durable
        """Whether an outbox row relays the task (see :func:`relay`)."""
        self.error: Exception | None = None
        """The exception ``apply_async()`` raised after the commit, if it failed."""
        self._result: t.Any = None

    @property
    def sent(self) -> bool:
        """Whether the task was handed to the broker."""
        return self._result is not None

    @property
    def result(self) -> t.Any:
        """Return the ``AsyncResult`` of the sent task.

        Raises :class:`TaskNotSentError` before the commit, after a rollback or a failed send.
        A durable handle returns the ``AsyncResult`` of its id at once: the outbox sends the
        task at least once if the transaction committed.
        """
        if self._result is None and self.durable:
            celery_result: t.Any = importlib.import_module("celery.result")
            return celery_result.AsyncResult(self.task_id)
        if self._result is None:
            state = "failed to send" if self.error is not None else "has not been sent"
            msg = (
                f"the task {self.task_id} {state}: its transaction has not committed, rolled"
                " back, or the broker refused it; check handle.sent before reading the result."
            )
            raise TaskNotSentError(msg)
        return self._result

    def _send(self, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]) -> None:
        try:
            self._result = self.task.apply_async(
                args, kwargs, task_id=self.task_id, **self.options
            )
        except Exception as exc:
            self.error = exc
            raise

    def __repr__(self) -> str:
        state = "sent" if self.sent else "failed" if self.error is not None else "pending"
        return f"<Enqueued {self.task_id} {state}>"


def enqueue_on_commit(
    task: Sendable,
    /,
    *args: t.Any,
    session: SessionTarget,
    options: c.Mapping[str, t.Any] | None = None,
    robust: bool = True,
    durable: bool = False,
    **kwargs: t.Any,
) -> Enqueued:
    """Send ``task`` after the outermost transaction of ``session`` truly commits.

    The task is called with ``args`` and ``kwargs``; the returned :class:`Enqueued` handle gives
    its id at once and its ``AsyncResult`` once sent. ``options`` are passed to
    ``apply_async()`` (``queue``, ``countdown``, ...; ``task_id`` chooses the reserved id).

    The send is an ``on_commit`` callback: dropped on rollback, run at once outside a
    transaction, and a failing send is logged and reported on
    :data:`~sa_signals.signals.on_commit_failed` (or raised with ``robust=False``).

    With ``durable=True`` the send is an outbox row in the same transaction instead (see
    ``docs/outbox.md``): if the process dies after the COMMIT or the broker refuses the message,
    an outbox worker sends it later, so the task is sent at least once, always under the same
    task id. Its arguments and options must be JSON-serialisable. Needs a synchronous session
    (with an ``AsyncSession``, ``await sa_signals.outbox.enqueue(session, relay, ...)``).
    """
    send = getattr(task, "apply_async", None)
    if not callable(send):
        msg = f"enqueue_on_commit() needs a Celery task or signature, got {task!r}"
        raise TypeError(msg)
    opts = dict(options or {})
    task_id = str(opts.pop("task_id", None) or uuid.uuid4())
    handle = Enqueued(task, task_id, opts, durable)
    if durable:
        name, all_args, all_kwargs, all_options = _message(task, args, kwargs, opts)
        if not isinstance(session, (sa_orm.Session, sa_orm.scoped_session)):
            msg = (
                "enqueue_on_commit(durable=True) needs a Session or scoped_session; with an"
                " AsyncSession use `await sa_signals.outbox.enqueue(session,"
                " sa_signals.contrib.celery.relay, name, args, kwargs, options, task_id)`."
            )
            raise TypeError(msg)
        outbox.enqueue(session, relay, name, all_args, all_kwargs, all_options, task_id)
        return handle
    on_commit(_Send(handle, args, kwargs), session, robust=robust)
    return handle


def _message(
    task: Sendable, args: tuple[t.Any, ...], kwargs: dict[str, t.Any], options: dict[str, t.Any]
) -> tuple[str, list[t.Any], dict[str, t.Any], dict[str, t.Any]]:
    """Return the task's name, arguments and options, a signature's partial ones merged in."""
    if not isinstance(task, dict):  # a Task (a Signature is a dict)
        return str(getattr(task, "name", task)), list(args), kwargs, options
    signature = t.cast("t.Any", task)  # completed as by its apply_async()
    return (
        str(signature.task),
        [*args, *signature.args],
        {**signature.kwargs, **kwargs},
        {**signature.options, **options},
    )


@outbox.handler("sa_signals.contrib.celery.relay", max_attempts=20)
def relay(
    name: str,
    args: list[t.Any],
    kwargs: dict[str, t.Any],
    options: dict[str, t.Any],
    task_id: str,
) -> None:
    """Send the Celery task ``name`` under ``task_id`` with the current Celery app.

    The outbox handler behind ``enqueue_on_commit(durable=True)``; an outbox worker relaying
    these rows must import the module that creates the Celery app (``--import``).
    """
    celery: t.Any = importlib.import_module("celery")
    celery.current_app.send_task(name, args=args, kwargs=kwargs, task_id=task_id, **options)


class _Send:
    """The on_commit callback of one handle; its repr names the task in failure logs."""

    __slots__ = ("args", "handle", "kwargs")

    def __init__(
        self, handle: Enqueued, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]
    ) -> None:
        self.handle = handle
        self.args = args
        self.kwargs = kwargs

    def __call__(self) -> None:
        self.handle._send(self.args, self.kwargs)

    def __repr__(self) -> str:
        task = self.handle.task
        name = getattr(task, "name", None) or repr(task)
        return f"<send {name} as {self.handle.task_id}>"
