"""The signals sa_signals sends. Connect receivers as with any blinker signal.

Every receiver is called as ``receiver(sender, **kwargs)``; accept ``**kwargs`` so that keywords
added later do not break it. Receivers of one signal run in the order they were connected, and
a receiver connected to a mapped class also receives the events of its mapped subclasses.

A receiver that raises is logged on the ``sa_signals`` logger and reported on
:data:`receiver_failed`; the others still run (see ``install(robust=...)``).
"""

from __future__ import annotations

from ._dispatch import Signal

before_flush = Signal("before_flush")
"""Sent before the session flushes, for every flush. Sender: the ``Session``. No keywords."""

after_flush = Signal("after_flush")
"""Sent after the flush's SQL, still inside the transaction. Sender: the ``Session``."""

before_commit = Signal("before_commit")
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

on_commit_failed = Signal("on_commit_failed")
"""Sent when an ``on_commit`` callback raised, or left a transaction open on the committed session.
Sender: the ``Session`` that committed. Keywords: ``callback``, ``exception``."""

receiver_failed = Signal("receiver_failed")
"""Sent when a receiver of any other sa_signals signal raised. Sender: the ``Session``.
Keywords: ``signal``, ``receiver``, ``exception``. A receiver of this signal that raises is only
logged."""

pre_save = Signal("pre_save")
"""Sent before the INSERT or UPDATE of each object during a flush; the receiver may still change
the object's column attributes. Sender: the mapped class. Keywords: ``instance``, ``session``,
``created`` (True for an INSERT)."""

post_save = Signal("post_save")
"""Sent once per row a flush inserted or updated, after its SQL; an object whose attributes were
set to equal values sends nothing. Sender: the mapped class. Keywords: ``instance``,
``session``, ``created`` (True for an INSERT)."""

pre_delete = Signal("pre_delete")
"""Sent before the DELETE of each object during a flush. Sender: the mapped class. Keywords:
``instance``, ``session``."""

post_delete = Signal("post_delete")
"""Sent once per row a flush deleted, after its SQL. Sender: the mapped class. Keywords:
``instance``, ``session``."""

before_models_committed = Signal("before_models_committed")
"""Sent inside the transaction just before the outermost COMMIT, after ``before_commit``, with
the net changes so far (the session is flushed first); never before a SAVEPOINT release nor for
a session joined into an outer transaction, and not when nothing changed. Receivers may still
write through the sender: the writes are committed and reported at commit. Sender: the
``Session``. Keywords: ``changes``, a list of :class:`~sa_signals.Change`."""

models_committed = Signal("models_committed")
"""Sent after a real COMMIT of the outermost transaction with its net changes, under the rules of
``after_commit``, after its receivers; not when nothing changed. Sender: the ``Session``.
Keywords: ``changes``, a list of :class:`~sa_signals.Change` ordered by the flush in which each
row first appeared."""

committed = Signal("committed")
"""Sent after ``models_committed``, once per :class:`~sa_signals.Change`, under the same rules.
Sender: the mapped class of the change. Keywords: ``change``."""

bulk_insert = Signal("bulk_insert")
"""Sent when an ORM bulk INSERT (``session.execute(insert(Model), rows)``) has executed. Sender:
the mapped class. Keywords: ``statement``, ``rowcount``, ``identities`` (primary keys as tuples,
or None where the database cannot return them), ``session``."""

bulk_update = Signal("bulk_update")
"""Sent when an ORM bulk UPDATE (``session.execute(update(Model)...)``, ``Query.update()``) has
executed. Sender: the mapped class. Keywords as for :data:`bulk_insert`."""

bulk_delete = Signal("bulk_delete")
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
