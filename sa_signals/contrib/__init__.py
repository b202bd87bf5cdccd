"""Integrations with web frameworks and task queues, each imported by its own path.

Each module needs its optional extra, e.g. ``pip install "sa-signals[flask]"`` for
``sa_signals.contrib.flask``; ``sa_signals.contrib.scopes`` and ``sa_signals.contrib.wsgi`` need
nothing more than sa_signals, ``sa_signals.contrib.asgi`` needs the ``asgi`` extra (greenlet) and
``sa_signals.contrib.starlette`` the ``starlette`` or ``fastapi`` one.
"""
