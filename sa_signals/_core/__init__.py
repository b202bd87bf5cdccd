"""The core: SQLAlchemy's session events turned into signals and commit-time work.

Its modules form layers, each importing only those below it (checked by import-linter, see
``pyproject.toml``), from the bottom up:

- ``records``, ``aio``: plain data (what a transaction wrote) and the asyncio bridge;
- ``state``: what ``install()`` recorded and what one session's transaction holds;
- ``failures``, ``work``, ``slot``, ``runner``: running commit-time calls, each in a distinct
  session, sync and async through one loop;
- ``queue``, ``changes``, ``bulk``, ``external``, ``capture``, ``savepoints``: the features
  (the on_commit queue, change sets, bulk statements, work held for a caller's Connection,
  test captures, and what a savepoint's end does to each);
- ``send``, ``commit``: sending signals inside the transaction, and the end of the outermost one;
- ``bridge``, ``install``: SQLAlchemy's listeners, and ``install()`` / ``uninstall()``.

See ``docs/architecture.md``.
"""
