"""The signals sa_signals sends. Connect receivers as with any blinker signal.

Every receiver is called as ``receiver(sender, **kwargs)``; accept ``**kwargs`` so that keywords
added later do not break it. Receivers of one signal run in the order they were connected, and
a receiver connected to a mapped class also receives the events of its mapped subclasses; the
signals whose sender is a mapped class also take its name as a string
(``post_save.connect(receiver, sender="Book")``).

A receiver that raises is handled by its signal's family unless it was connected with its own
``robust=``: the signals sent inside the transaction (or the code that caused them) let the
exception propagate, which aborts the flush or commit (a veto); the commit- and rollback-time
ones log it and report it on :data:`receiver_failed`, the others still running (strict under
``install(robust=False)``). A failure is reported once: raised, or logged and sent.
"""

from __future__ import annotations

from ._dispatch import ModelSignal
from ._dispatch import Signal

before_flush = Signal("before_flush", family="veto")
"""Sent before the session flushes, for every flush. Sender: the ``Session``. No keywords."""

after_flush = Signal("after_flush", family="veto")
"""Sent after the flush's SQL, still inside the transaction. Sender: the ``Session``."""

before_commit = Signal("before_commit", family="veto")
"""Sent inside the transaction just before the outermost COMMIT, never before a SAVEPOINT
release. Receivers may still write through the sender. Sender: the ``Session``."""

after_commit = Signal("after_commit")
"""Sent after a real COMMIT of the outermost transaction, never for a SAVEPOINT release nor for a
session joined into an outer transaction. Each receiver runs like an ``on_commit`` callback: in a
distinct session, robustly, before the callbacks. Sender: the ``Session``, no longer in a
transaction."""

after_rollback = Signal("after_rollback")
"""Sent when the outermost transaction ends without committing: ``rollback()``, a failed
``commit()`` followed by ``rollback()``, or ``close()`` / ``reset()`` with the transaction open.
Never for a savepoint rollback. Sender: the ``Session``."""

on_commit_failed = Signal("on_commit_failed", family="failure")
"""Sent when an ``on_commit`` callback raised, or left a transaction open on the committed session,
unless its exception was raised out of ``commit()``. Sender: the ``Session`` that committed.
Keywords: ``callback``, ``exception``."""

receiver_failed = Signal("receiver_failed", family="failure")
"""Sent when a receiver of any other sa_signals signal raised, unless its exception was raised.
Sender: the ``Session`` (None for ``pre_init`` and ``post_init`` on a construction). Keywords:
``signal``, ``receiver``, ``exception``. A receiver of this signal that raises is only logged."""

pre_init = ModelSignal("pre_init", family="veto")
"""Sent when a mapped object is constructed, before its ``__init__`` runs. Sender: the mapped
class. Keywords: ``instance`` (not initialised yet), ``args`` (a tuple) and ``kwargs`` (the
constructor's keyword arguments: a dict the receiver may change in place). Sent for every mapped
class while sa_signals is installed on a factory; a receiver must be a plain function."""

post_init = ModelSignal("post_init", family="veto")
"""Sent when a mapped object was constructed (after its ``__init__`` returned) or loaded from
the database. Sender: the mapped class. Keywords: ``instance``, ``session`` (the session that
loaded it; None for a construction). Loads are sent for sessions of installed factories only."""

pre_save = ModelSignal("pre_save", family="veto")
"""Sent before the INSERT or UPDATE of each object during a flush; the receiver may still change
the object's column attributes. Sender: the mapped class. Keywords: ``instance``, ``session``,
``created`` (True for an INSERT)."""

post_save = ModelSignal("post_save", family="veto")
"""Sent once per row a flush inserted or updated, after its SQL; an object whose attributes were
set to equal values sends nothing. Sender: the mapped class. Keywords: ``instance``,
``session``, ``created`` (True for an INSERT)."""

pre_delete = ModelSignal("pre_delete", family="veto")
"""Sent before the DELETE of each object during a flush. Sender: the mapped class. Keywords:
``instance``, ``session``, ``origin`` (the object whose ``session.delete()`` this delete came
from: the instance itself, or the object whose delete cascaded to it)."""

post_delete = ModelSignal("post_delete", family="veto")
"""Sent once per row a flush deleted, after its SQL. Sender: the mapped class. Keywords:
``instance``, ``session``, ``origin`` (as for :data:`pre_delete`)."""

before_models_committed = Signal("before_models_committed", family="veto", changes=True)
"""Sent inside the transaction just before the outermost COMMIT, after ``before_commit``, with
the net changes so far (the session is flushed first); never before a SAVEPOINT release nor for
a session joined into an outer transaction, and not when nothing changed. Receivers may still
write through the sender: the writes are committed and reported at commit. Sender: the
``Session``. Keywords: ``changes``, a list of :class:`~sa_signals.Change`."""

models_committed = Signal("models_committed", changes=True)
"""Sent after a real COMMIT of the outermost transaction with its net changes, under the rules of
``after_commit``, after its receivers; not when nothing changed. Sender: the ``Session``.
Keywords: ``changes``, a list of :class:`~sa_signals.Change` ordered by the flush in which each
row first appeared."""

committed = ModelSignal("committed", changes=True)
"""Sent after ``models_committed``, once per :class:`~sa_signals.Change`, under the same rules.
Sender: the mapped class of the change. Keywords: ``change``."""

models_rolled_back = Signal("models_rolled_back", changes=True)
"""Sent when the outermost transaction or a savepoint rolled back, with the net changes it had
flushed (those of savepoints released into it included); not when it had flushed nothing, and
not for the distinct sessions the layer runs commit-time work in. Sent inside ``rollback()``
(the savepoint's, for a savepoint), after SQLAlchemy's rollback. Sender: the ``Session``.
Keywords: ``changes``, a list of :class:`~sa_signals.Change`; ``savepoint``, True for the rows of
a savepoint (``rollback()`` of the outer transaction rolls back the savepoints still open
first, innermost first, each sent on its own)."""

rolled_back = ModelSignal("rolled_back", changes=True)
"""Sent after ``models_rolled_back``, once per :class:`~sa_signals.Change`, under the same rules.
Sender: the mapped class of the change. Keywords: ``change``, ``savepoint``."""

bulk_insert = ModelSignal("bulk_insert", family="veto")
"""Sent when an ORM bulk INSERT (``session.execute(insert(Model), rows)``) has executed. Sender:
the mapped class. Keywords: ``statement``, ``rowcount``, ``identities`` (primary keys as tuples,
or None where the database cannot return them), ``session``."""

bulk_update = ModelSignal("bulk_update", family="veto")
"""Sent when an ORM bulk UPDATE (``session.execute(update(Model)...)``, ``Query.update()``) has
executed. Sender: the mapped class. Keywords as for :data:`bulk_insert`."""

bulk_delete = ModelSignal("bulk_delete", family="veto")
"""Sent when an ORM bulk DELETE (``session.execute(delete(Model)...)``, ``Query.delete()``) has
executed. Sender: the mapped class. Keywords as for :data:`bulk_insert`."""

remote_committed = Signal("remote_committed")
"""Sent by a fan-out listener (``sa_signals.fanout.listen()``) once per model of each transaction
another process committed and published. Sender: the mapped class, or the model's stable name (a
``str``) when no mapped class of this process has it. Keywords: ``changes``, a list of
:class:`~sa_signals.fanout.RemoteChange`; ``message``, the :class:`~sa_signals.fanout.Message`."""

remote_gap = Signal("remote_gap")
"""Sent by a fan-out listener when remote changes may have been missed (its first subscription, a
reconnect, a lost or unreadable message, a publisher's failure or silence): flush every cache
fed by ``remote_committed``. Sender: the listener. Keywords: ``reason``."""

outbox_failed = Signal("outbox_failed")
"""Sent when an outbox handler raised, once its writes were rolled back and the failure recorded
on the row (see ``docs/outbox.md``). Sender: the handler's name. Keywords: ``row_id``,
``exception``, ``attempts`` (runs so far), ``dead`` (True if the row will not run again)."""
