"""The core: SQLAlchemy's session events turned into signals and commit-time work.

Its modules form layers, each importing only those below it (checked by import-linter, see
``pyproject.toml``), from the bottom up:

- ``records``, ``aio``, ``join``: plain data (what a transaction wrote), the asyncio bridge, and
  work waiting on several parties;
- ``state``: what ``install()`` recorded and what one session's transaction holds;
- ``failures``, ``work``, ``slot``, ``runner``: running commit-time calls, each in a distinct
  session, sync and async through one loop;
- ``changes``, ``queue``, ``send``, ``deletes``: change sets, the on_commit queue, sending
  signals inside the transaction, and where a flush's deletes started;
- ``external``, ``bulk``, ``rollbacks``, ``instances``: work held for a caller's Connection,
  bulk statements, what a rollback undid, and the ``init`` / ``load`` listeners;
- ``savepoints``, ``capture``: the end of a savepoint, and test captures;
- ``commit``: the end of the outermost transaction;
- ``bridge``, ``install``: SQLAlchemy's listeners, and ``install()`` / ``uninstall()``.

See ``docs/architecture.md``.
"""
