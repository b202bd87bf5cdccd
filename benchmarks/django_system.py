"""Django's ORM on the same workloads: ``transaction.on_commit`` and ``post_save`` receivers.

Django is configured in-process (``settings.configure``) with two SQLite databases: ``memory``
(``:memory:``) and ``file`` (a file in a temporary directory, WAL mode as for SQLAlchemy).
"""

from __future__ import annotations

import atexit
import collections.abc as c
import shutil
import tempfile
import typing as t

from benchmarks.systems import make_receiver
from benchmarks.systems import noop
from benchmarks.systems import read_changes
from benchmarks.systems import ROWS

try:
    import django
except ImportError:  # pragma: no cover - the bench extra is not installed
    django = None

AVAILABLE = django is not None
"""Whether Django is installed (``pip install -e ".[bench]"``)."""

_models: dict[str, t.Any] = {}


def _configure() -> dict[str, t.Any]:
    """Configure Django once per process and define the model; return the model namespace."""
    if _models:
        return _models
    from django.conf import settings

    directory = tempfile.mkdtemp(prefix="sa_signals_bench_django_")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            USE_TZ=True,
            INSTALLED_APPS=[],
            DATABASES={
                "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
                "memory": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
                "file": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": f"{directory}/django.db",
                },
            },
        )
    django.setup()
    from django.db import models
    from django.db.backends.signals import connection_created
    from django.dispatch import Signal

    def pragmas(sender: object, connection: t.Any, **kwargs: object) -> None:
        if connection.alias == "file":
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")

    connection_created.connect(pragmas, weak=False)

    class Item(models.Model):
        name = models.CharField(max_length=50)
        value = models.IntegerField(default=0)

        class Meta:
            app_label = "sa_signals_bench"
            db_table = "bench_django_items"

        @classmethod
        def from_db(cls, db: str, field_names: t.Any, values: t.Any) -> Item:
            # The usual field tracker: remember the loaded values to diff them in post_save.
            instance = super().from_db(db, field_names, values)
            instance._loaded = dict(zip(field_names, values, strict=True))
            return instance

    _models.update(Item=Item, models_committed=Signal())
    return _models


class DjangoSystem:
    """Django's ORM: ``save()`` per row inside ``atomic()``, as Django users write it."""

    label = "Django ORM"

    def __init__(self, alias: str, amplification: int) -> None:
        from django.db import connections

        namespace = _configure()
        self.Item = namespace["Item"]
        self.models_committed = namespace["models_committed"]
        self.alias = alias
        self.amplification = amplification
        self.connection = connections[alias]
        with self.connection.schema_editor() as editor:
            if self.Item._meta.db_table in self.connection.introspection.table_names():
                editor.delete_model(self.Item)
            editor.create_model(self.Item)
        self.receivers: list[c.Callable[..., None]] = []
        self.ids: list[int] = []
        self.pending_changes: list[t.Any] = []

    def enter(self) -> None:
        pass

    def exit(self) -> None:
        pass

    def setup(self, workload: str) -> bool:
        from django.db.models.signals import post_save

        self.Item.objects.using(self.alias).all().delete()
        if workload == "W3":
            self.connect_receivers(ROWS)
        if workload == "W6":
            self.ids = [
                self.Item.objects.using(self.alias).create(name=f"r{i}", value=0).pk
                for i in range(ROWS)
            ]
            post_save.connect(self._collect_diff, sender=self.Item, weak=False)
            self.models_committed.connect(read_changes, weak=False)
        return True

    def connect_receivers(self, count: int) -> None:
        from django.db.models.signals import post_save

        self.receivers = [make_receiver() for _ in range(count)]
        for receiver in self.receivers:
            post_save.connect(receiver, sender=self.Item, weak=False)

    def disconnect_receivers(self) -> None:
        from django.db.models.signals import post_save

        for receiver in self.receivers:
            post_save.disconnect(receiver, sender=self.Item)
        self.receivers = []

    def before_batch(self, workload: str) -> None:
        """Connect the receivers of an A-recv batch (its W1 batches run without them)."""
        if workload == "A-recv":
            self.connect_receivers(self.amplification // ROWS)

    def after_batch(self, workload: str) -> None:
        if workload == "A-recv":
            self.disconnect_receivers()

    def teardown(self, workload: str) -> None:
        from django.db.models.signals import post_save

        self.disconnect_receivers()
        if workload == "W6":
            post_save.disconnect(self._collect_diff, sender=self.Item)
            self.models_committed.disconnect(read_changes)

    def close(self) -> None:
        with self.connection.schema_editor() as editor:
            editor.delete_model(self.Item)

    def _collect_diff(self, sender: t.Any, instance: t.Any, **kwargs: object) -> None:
        from django.db import transaction

        loaded = getattr(instance, "_loaded", {})
        diff = {}
        for key, old in loaded.items():
            new = getattr(instance, key)
            if new != old:
                diff[key] = (old, new)
        if not self.pending_changes:
            transaction.on_commit(self._send_changes, using=self.alias)
        self.pending_changes.append((instance, diff))

    def _send_changes(self) -> None:
        changes, self.pending_changes = self.pending_changes, []
        self.models_committed.send(self.connection, changes=changes)

    def transaction(self, workload: str) -> c.Callable[[], None]:
        """Return a function that runs one transaction of ``workload``."""
        from django.db import transaction

        Item, alias = self.Item, self.alias
        on_commit, atomic = transaction.on_commit, transaction.atomic
        if workload == "W6":
            ids = self.ids

            def update() -> None:
                with atomic(using=alias):
                    for item in Item.objects.using(alias).filter(pk__in=ids):
                        item.value += 1
                        item.save(using=alias)

            return update
        callbacks, callback = 0, noop
        if workload in ("W2", "W4"):
            callbacks = ROWS
        elif workload == "A-cb":
            callbacks = self.amplification
        elif workload in ("A-query", "A-qc"):  # autocommit: nothing to commit after a read
            callbacks = self.amplification // 10
            query = Item.objects.using(alias)

            def callback() -> None:
                query.filter(pk=1).exists()

        savepoints = workload == "W5"
        rollback = workload == "W4"

        def run() -> None:
            with atomic(using=alias):
                for i in range(ROWS):
                    Item(name="row", value=i).save(using=alias)
                for _ in range(callbacks):
                    on_commit(callback, using=alias)
                if savepoints:
                    with atomic(using=alias):
                        Item(name="released", value=0).save(using=alias)
                    with atomic(using=alias):
                        Item(name="rolled back", value=0).save(using=alias)
                        transaction.set_rollback(True, using=alias)
                if rollback:
                    transaction.set_rollback(True, using=alias)

        return run
