"""Integrations with web frameworks and task queues, each imported by its own path.

Each module needs its optional extra, e.g. ``pip install "sa-signals[flask]"`` for
``sa_signals.contrib.flask``; ``sa_signals.contrib.scopes`` and ``sa_signals.contrib.wsgi`` need
nothing more than sa_signals.
"""
